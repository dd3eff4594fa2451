"""Per-layer rules: per-example gradients and Kronecker factors from a layer's inputs and output gradients.

During a batch, hooks record every call of a layer that owns parameters: its inputs, and (after
the backward passes) the gradients ``g`` ``[R, n, ...]`` of its outputs for R cotangent rows at
once. A rule turns these into

* per-example gradients ``[R, m, *param.shape]`` for a slice of m examples (dense, block, diagonal);
* sums of squared per-example gradients (the diagonal), without materialising them where possible;
* Kronecker factors (Linear, Conv2d): sums of â âᵀ and g gᵀ with their counts.

Linear layers read inputs ``[n, *, d_in]`` (positions * share the weight) and Conv2d layers are
unfolded (im2col) to ``[n, T, c·kh·kw]``; any other layer with parameters (norms, embeddings, your
own) gets exact per-example gradients by ``torch.func`` applied to that layer alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .params import preserved_parameters


@dataclass
class Call:
    """One forward call of a layer: inputs, output tensors, and their gradients ``[R, n, ...]``."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outs: list[Tensor]
    grads: list[Tensor] = field(default_factory=list)
    cache: dict[str, Tensor] = field(default_factory=dict)


class Rule:
    """A layer with parameters: ``names`` are the layout names of its own (direct) parameters."""

    kronecker = False

    def __init__(self, module: nn.Module, module_name: str, local: list[str], names: list[str]) -> None:
        self.module, self.module_name, self.local, self.names = module, module_name, local, names

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.module_name or '<root>'}: {type(self.module).__name__})"

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        """Per-example gradients ``{name: [R, m, *shape]}`` for examples ``sl``."""
        raise NotImplementedError

    def sq_sum(self, calls: list[Call], chunk: int) -> dict[str, Tensor]:
        """Σ over rows r and examples n of squared per-example gradients ``{name: shape}``."""
        n = calls[0].grads[0].shape[1]
        out: dict[str, Tensor] = {}
        for i in range(0, n, chunk):
            for k, v in self.per_example(calls, slice(i, i + chunk)).items():
                s = (v * v).sum((0, 1))
                out[k] = out[k] + s if k in out else s
        return out


class LinearRule(Rule):
    """nn.Linear: per-example gradient of Ŵ = [W | b] is Σₜ gₜ âₜᵀ over positions t."""

    kronecker = True

    def __init__(self, module: nn.Module, module_name: str, local: list[str], names: list[str]) -> None:
        super().__init__(module, module_name, local, names)
        w = module.weight
        self.d_out = int(w.shape[0])
        self.d_in = int(w[0].numel())
        self.has_bias = "bias" in local
        self.weight_name = names[local.index("weight")] if "weight" in local else None
        self.bias_name = names[local.index("bias")] if self.has_bias else None
        if self.weight_name is None:  # weight frozen: treat as a generic layer
            self.kronecker = False

    # inputs â [n, T, width] and output gradients g [R, n, T, d_out]
    def unfold(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1, self.d_in)

    def a_hat(self, call: Call) -> Tensor:
        if "a" not in call.cache:
            a = self.unfold(call.args[0])
            if self.has_bias:
                a = torch.cat([a, a.new_ones((*a.shape[:-1], 1))], -1)
            call.cache["a"] = a
        return call.cache["a"]

    def g(self, call: Call) -> Tensor:
        g = call.grads[0]
        return g.reshape(g.shape[0], g.shape[1], -1, self.d_out)

    def _split(self, m: Tensor) -> dict[str, Tensor]:
        """Ŵ-shaped ``[..., d_out, width]`` → {weight: [..., *w.shape], bias: [..., d_out]}."""
        out = {}
        lead = m.shape[:-2]
        if self.weight_name is not None:
            out[self.weight_name] = m[..., : self.d_in].reshape(*lead, *self.module.weight.shape)
        if self.bias_name is not None:
            out[self.bias_name] = m[..., self.d_in]
        return out

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        total = None
        for c in calls:
            pe = torch.einsum("rnto,nti->rnoi", self.g(c)[:, sl], self.a_hat(c)[sl])
            total = pe if total is None else total + pe
        assert total is not None
        return self._split(total)

    def sq_sum(self, calls: list[Call], chunk: int) -> dict[str, Tensor]:
        if len(calls) == 1 and self.a_hat(calls[0]).shape[1] == 1:
            a2 = self.a_hat(calls[0])[:, 0] ** 2  # [n, width]
            g2 = (self.g(calls[0])[:, :, 0] ** 2).sum(0)  # [n, d_out]
            return self._split(g2.T @ a2)
        return super().sq_sum(calls, chunk)

    def _joined(self, calls: list[Call]) -> tuple[Tensor, Tensor]:
        """â ``[n, T, width]`` and g ``[R, n, T, d_out]``, positions of all calls concatenated."""
        if len(calls) == 1:
            return self.a_hat(calls[0]), self.g(calls[0])
        return torch.cat([self.a_hat(c) for c in calls], 1), torch.cat([self.g(c) for c in calls], 2)

    def kfac_a(self, calls: list[Call], mode: str) -> tuple[Tensor, int]:
        """(Σ â âᵀ, number of rows summed): over examples and positions (expand) or of the
        position-mean â per example (reduce)."""
        a = torch.cat([self.a_hat(c) for c in calls], 1)
        if mode == "reduce":
            a = a.mean(1)
            return a.T @ a, a.shape[0]
        a = a.reshape(-1, a.shape[-1])
        return a.T @ a, a.shape[0]

    def kfac_g(self, calls: list[Call], mode: str) -> Tensor:
        """Σ g gᵀ over rows r, examples and positions (expand) or of the position-sum g (reduce)."""
        g = torch.cat([self.g(c) for c in calls], 2)
        g = g.sum(2) if mode == "reduce" else g
        g = g.reshape(-1, g.shape[-1])
        return g.T @ g

    def ekfac_s(self, calls: list[Call], qg: Tensor, qa: Tensor, chunk: int) -> Tensor:
        """Σ over rows and examples of (Q_Gᵀ Ĝₙ Q_A)² ``[d_out, width]`` (Ĝₙ the per-example gradient)."""
        a, g = self._joined(calls)
        a, g = a @ qa, g @ qg
        if a.shape[1] == 1:
            return ((g[:, :, 0] ** 2).sum(0)).T @ (a[:, 0] ** 2)
        out = torch.zeros(self.d_out, a.shape[-1], dtype=a.dtype, device=a.device)
        for i in range(0, a.shape[0], chunk):
            pe = torch.einsum("rnto,nti->rnoi", g[:, i : i + chunk], a[i : i + chunk])
            out += (pe * pe).sum((0, 1))
        return out


class Conv2dRule(LinearRule):
    """nn.Conv2d (groups = 1, zero padding): inputs unfolded to ``[n, T, c·kh·kw]``, T = output positions."""

    def unfold(self, x: Tensor) -> Tensor:
        m = self.module
        cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        return cols.transpose(1, 2)

    def g(self, call: Call) -> Tensor:
        g = call.grads[0]
        return g.reshape(g.shape[0], g.shape[1], self.d_out, -1).transpose(-1, -2)


class GenericRule(Rule):
    """Any other layer with parameters: per-example gradients by torch.func on the layer alone.

    Exact as long as the layer treats examples independently (true for LayerNorm, GroupNorm,
    Embedding, BatchNorm in eval mode, …). Tensor arguments whose first dimension is the batch
    size are split per example; others are shared.
    """

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        total: dict[str, Tensor] = {}
        params = {k: getattr(self.module, k).detach() for k in self.local}
        for c in calls:
            n = c.grads[0].shape[1]
            args = tuple(a[sl] if _batched(a, n) else a for a in c.args)
            kwargs = {k: (v[sl] if _batched(v, n) else v) for k, v in c.kwargs.items()}
            arg_dims = tuple(0 if _batched(a, n) else None for a in c.args)
            kw_dims = {k: (0 if _batched(v, n) else None) for k, v in c.kwargs.items()}
            grads = [g[:, sl] for g in c.grads]

            def one(
                args_i: tuple[Any, ...],
                kwargs_i: dict[str, Any],
                gs: list[Tensor],
                arg_dims: tuple[int | None, ...] = arg_dims,
                kw_dims: dict[str, int | None] = kw_dims,
            ) -> dict[str, Tensor]:
                a1 = tuple(a.unsqueeze(0) if d == 0 else a for a, d in zip(args_i, arg_dims))
                k1 = {k: (v.unsqueeze(0) if kw_dims[k] == 0 else v) for k, v in kwargs_i.items()}

                def loss(pr: dict[str, Tensor]) -> Tensor:
                    outs = flat_tensors(functional_call(self.module, pr, a1, k1))
                    return sum((o.squeeze(0) * g).sum() for o, g in zip(outs, gs))  # type: ignore[return-value]

                return grad(loss)(params)

            inner = vmap(one, in_dims=(arg_dims, kw_dims, 0))
            with preserved_parameters(self.module):
                pe = vmap(inner, in_dims=(None, None, 0))(args, kwargs, grads)
            for k, v in pe.items():
                name = self.names[self.local.index(k)]
                total[name] = total[name] + v if name in total else v
        return total


def _batched(a: Any, n: int) -> bool:
    return isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == n


def flat_tensors(out: Any) -> list[Tensor]:
    """The tensors in a module's output (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat_tensors(o)]
    return []
