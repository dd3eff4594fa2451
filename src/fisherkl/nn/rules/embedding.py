"""``nn.Embedding``: a linear map of one-hot inputs, so its Kronecker input factor is diagonal.

The weight E ``[V, d]`` maps token v to row v: the per-example gradient is Σₜ e_{vₜ} gₜᵀ (rows of the
tokens seen, never a dense one-hot product), and KFAC's input factor A = Σ e_v e_vᵀ is the diagonal of
token counts — stored as ``[V]``, never ``[V, V]``. Positions with ``padding_idx`` get no gradient, as
in torch. Embeddings with ``max_norm`` (which renormalises the weight in place during the forward) or
``scale_grad_by_freq`` (a gradient that depends on the whole batch) use the generic rule.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Call, register
from .linear import LinearPart, PartsRule


class EmbeddingRule(PartsRule):
    """One :class:`LinearPart` with index inputs, the weight stored transposed ([d_in = V, d_out = d])."""

    def __init__(self, module: nn.Module, module_name: str, params: list[tuple[nn.Module, str, str]]) -> None:
        super().__init__(module, module_name, params)
        w = module.weight
        v, d = int(w.shape[0]), int(w.shape[1])
        pad = module.padding_idx

        def a_of(call: Call, sl: slice = slice(None)) -> Tensor:
            if "idx" not in call.cache:
                x = call.arg(0)
                call.cache["idx"] = x.reshape(x.shape[0], -1).long()
            return call.cache["idx"][sl]

        def g_of(call: Call, g: Tensor) -> Tensor:  # [R, n, *, d] → [R, n, d, T]
            gt = g.reshape(g.shape[0], g.shape[1], -1, d).transpose(-1, -2)
            if pad is not None:
                gt = gt * (a_of(call) != pad).to(gt.dtype)[None, :, None, :]
            return gt

        self.parts = [
            LinearPart(
                self.name_of(module, "weight"), None, (v, d), d, v, a_of, g_of, transposed=True, index_input=True
            )
        ]


register(nn.Embedding, when=lambda m: m.max_norm is None and not m.scale_grad_by_freq)(EmbeddingRule)

__all__ = ["EmbeddingRule"]
