"""Normalisation layers with an elementwise affine map y = γ ⊙ x̂ + β: closed per-example gradients.

x̂ is the layer's own normalised input (computed by the same torch function without γ, β), so the
per-example gradients are Σ g ⊙ x̂ for γ and Σ g for β, summed over every dimension the parameter is
broadcast along (positions, spatial dimensions). Covers ``nn.LayerNorm``, ``nn.RMSNorm``,
``nn.GroupNorm`` and BatchNorm in eval mode (running statistics; in training mode examples interact
and the engine refuses). These parameters are small: KFAC keeps their exact diagonal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Call, Rule, register
from .linear import CHUNK_BYTES


class NormRule(Rule):
    """An affine map after a normalisation: subclasses give x̂ and the parameter's dimensions."""

    def normalised(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def param_dims(self, x: Tensor) -> tuple[int, ...]:
        """The dimensions of x ``[n, ...]`` that the parameters run along (the rest are summed)."""
        raise NotImplementedError

    def weight_grad(self, c: Call, g: Tensor, x: Tensor, sl: slice, summed: tuple[int, ...]) -> Tensor:
        """Σ g ⊙ x̂ over the dimensions ``summed`` (of g ``[R, m, ...]``), for the examples ``sl`` of call c."""
        key = "xhat"  # kept across rows only while small (recomputing it is one pass over x)
        if key in c.cache and c.cache[key][0] == (sl.start, sl.stop):
            xhat = c.cache[key][1]
        else:
            xhat = self.normalised(x)
            if xhat.numel() * xhat.element_size() <= CHUNK_BYTES:
                c.cache[key] = ((sl.start, sl.stop), xhat)
        return _sum(g * xhat, summed)

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        m = self.module
        w_name, b_name = self.name_of(m, "weight"), self.name_of(m, "bias")
        out: dict[str, Tensor] = {}
        for c in calls:
            g = c.grads[0][:, sl]  # [R, m, ...]
            x = c.arg(0)[sl]
            keep = self.param_dims(x)
            summed = tuple(d + 1 for d in range(1, x.ndim) if d not in keep)  # +1: the row dimension
            shape = (*g.shape[:2], *(x.shape[d] for d in keep))
            if w_name is not None:
                v = self.weight_grad(c, g, x, sl, summed).reshape(shape)
                out[w_name] = out[w_name] + v if w_name in out else v
            if b_name is not None:
                v = _sum(g, summed).reshape(shape)
                out[b_name] = out[b_name] + v if b_name in out else v
        return out

    def sq_sum(self, calls: list[Call], chunk: int) -> dict[str, Tensor]:
        """As :meth:`Rule.sq_sum`, in chunks of examples whose inputs stay under ``CHUNK_BYTES`` (x̂ and g ⊙ x̂ are as
        large as the input)."""
        x = calls[0].arg(0)
        per = max(1, x[:1].numel() * x.element_size() * max(1, calls[0].n_rows))
        return super().sq_sum(calls, max(1, min(chunk, CHUNK_BYTES // per)))


def _sum(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    return t.sum(dims) if dims else t  # (an empty dims tuple would sum everything)


class LayerNormRule(NormRule):
    def normalised(self, x: Tensor) -> Tensor:
        m: nn.LayerNorm = self.module  # type: ignore[assignment]
        return F.layer_norm(x, m.normalized_shape, None, None, m.eps)

    def param_dims(self, x: Tensor) -> tuple[int, ...]:
        k = len(self.module.normalized_shape)
        return tuple(range(x.ndim - k, x.ndim))


class RMSNormRule(NormRule):
    def normalised(self, x: Tensor) -> Tensor:
        m = self.module
        return F.rms_norm(x, m.normalized_shape, None, m.eps)

    def param_dims(self, x: Tensor) -> tuple[int, ...]:
        k = len(self.module.normalized_shape)
        return tuple(range(x.ndim - k, x.ndim))


class GroupNormRule(NormRule):
    def normalised(self, x: Tensor) -> Tensor:
        m: nn.GroupNorm = self.module  # type: ignore[assignment]
        return F.group_norm(x, m.num_groups, None, None, m.eps)

    def param_dims(self, x: Tensor) -> tuple[int, ...]:
        return (1,)


class BatchNormEvalRule(NormRule):
    """BatchNorm{1,2,3}d with running statistics (eval mode): x̂ = (x − μ_run)/√(σ²_run + ε) per channel."""

    def normalised(self, x: Tensor) -> Tensor:
        m: nn.modules.batchnorm._BatchNorm = self.module  # type: ignore[assignment]
        return F.batch_norm(x, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)

    def param_dims(self, x: Tensor) -> tuple[int, ...]:
        return (1,)

    def weight_grad(self, c: Call, g: Tensor, x: Tensor, sl: slice, summed: tuple[int, ...]) -> Tensor:
        """Σ g ⊙ x̂ = s ⊙ (Σ g ⊙ x − μ Σ g) per channel, with x̂ = (x − μ) s: dot products over the positions,
        without x̂ or g ⊙ x̂ in memory."""
        m: nn.modules.batchnorm._BatchNorm = self.module  # type: ignore[assignment]
        r, n, ch = g.shape[0], g.shape[1], g.shape[2]
        g3 = g.reshape(r, n, ch, -1)
        x3 = x.reshape(n, ch, -1).to(g.dtype)
        dot = torch.linalg.vecdot(g3, x3)  # [R, n, C] (faster than einsum here, which makes n·C tiny matmuls)
        mean = m.running_mean.to(g.dtype)  # type: ignore[union-attr]
        scale = (m.running_var.to(g.dtype) + m.eps).rsqrt()  # type: ignore[union-attr]
        return (dot - mean * g3.sum(-1)) * scale


register(nn.LayerNorm, when=lambda m: m.elementwise_affine)(LayerNormRule)
register(nn.GroupNorm, when=lambda m: m.affine)(GroupNormRule)
register(
    nn.modules.batchnorm._BatchNorm,
    when=lambda m: m.affine and not m.training and m.running_mean is not None,
)(BatchNormEvalRule)
if hasattr(nn, "RMSNorm"):
    register(nn.RMSNorm, when=lambda m: m.elementwise_affine)(RMSNormRule)

__all__ = ["BatchNormEvalRule", "GroupNormRule", "LayerNormRule", "NormRule", "RMSNormRule"]
