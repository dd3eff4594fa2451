"""HuggingFace ``transformers.pytorch_utils.Conv1D`` (GPT-2's projections): a linear map whose weight is
stored transposed, ``[d_in, d_out]``. Registered by name of its module so that fisherkl never imports
``transformers``; the rule applies once the user's code has imported it."""

from __future__ import annotations

from torch import nn

from .base import register
from .linear import LinearPart, PartsRule, positions_views


class HFConv1DRule(PartsRule):
    """y = x W + b with W ``[d_in, d_out]`` on inputs ``[n, *, d_in]``."""

    def __init__(self, module: nn.Module, module_name: str, params: list[tuple[nn.Module, str, str]]) -> None:
        super().__init__(module, module_name, params)
        w = module.weight
        d_in, d_out = int(w.shape[0]), int(w.shape[1])
        self.parts = [
            LinearPart(
                self.name_of(module, "weight"),
                self.name_of(module, "bias"),
                tuple(w.shape),
                d_out,
                d_in,
                *positions_views(d_in, d_out),
                transposed=True,
            )
        ]


register(("transformers.pytorch_utils", "Conv1D"))(HFConv1DRule)

__all__ = ["HFConv1DRule"]
