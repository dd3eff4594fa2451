"""HuggingFace ``transformers.pytorch_utils.Conv1D`` (GPT-2's projections): a linear map whose weight is
stored transposed, ``[d_in, d_out]``. Registered by name of its module so that fisherkl never imports
``transformers``; the rule applies once the user's code has imported it."""

from __future__ import annotations

from .base import register
from .linear import LinearRule


class HFConv1DRule(LinearRule):
    """y = x W + b with W ``[d_in, d_out]`` on inputs ``[n, *, d_in]``."""

    transposed = True


register(("transformers.pytorch_utils", "Conv1D"))(HFConv1DRule)

__all__ = ["HFConv1DRule"]
