"""Any other module with parameters: per-example gradients by ``torch.func`` on the module alone.

Exact whenever the module treats examples independently (norms of any kind, recurrent layers, your
own modules, BatchNorm in eval mode, …): for each example, the gradient of ⟨module(xₙ), gₙ⟩ with
respect to the module's parameters, vmapped over examples and cotangent rows. Inputs and outputs may
carry the batch in any dimension (``[T, n, H]`` for a sequence-first GRU, ``[layers, n, H]`` for its
final state) or none at all; the engine tells which (``Call.arg_bdims``, ``Call.out_bdims``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.func import functional_call, grad, vmap

from ..params import preserved_parameters
from .base import Call, Rule, flat_tensors


class GenericRule(Rule):
    """Per-example gradients by torch.func on one module (see the module doc)."""

    def supports(self, call: Call) -> bool:
        return True

    def local_params(self) -> dict[str, Tensor]:
        """The rule's parameters by their name relative to its module (``out_proj.weight`` for a child)."""
        prefix = {id(m): k for k, m in self.module.named_modules()}
        out = {}
        for m, attr, _ in self.params:
            rel = prefix[id(m)]
            out[f"{rel}.{attr}" if rel else attr] = getattr(m, attr).detach()
        return out

    def outputs_of(self, ret: Any) -> list[Tensor]:
        """The tensors of the module's return value whose gradients were recorded."""
        return flat_tensors(ret)

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        params = self.local_params()
        layout = dict(zip(params, self.names))
        total: dict[str, Tensor] = {}
        for c in calls:
            pe = self._one_call(c, sl, params)
            for k, v in pe.items():
                name = layout[k]
                total[name] = total[name] + v if name in total else v
        return total

    def _one_call(self, c: Call, sl: slice, params: dict[str, Tensor]) -> dict[str, Tensor]:
        module, outputs_of, out_dims = self.module, self.outputs_of, list(c.out_bdims)

        def loss(pr: dict[str, Tensor], a1: tuple[Any, ...], k1: dict[str, Any], gs: list[Tensor]) -> Tensor:
            outs = outputs_of(functional_call(module, pr, a1, k1))
            terms = [((o.select(d, 0) if d is not None else o) * g).sum() for o, g, d in zip(outs, gs, out_dims)]
            return sum(terms[1:], terms[0])

        with preserved_parameters(module):
            return vmapped_grads(loss, params, c, sl, c.grads)


def vmapped_grads(
    loss: Callable[[dict[str, Tensor], tuple[Any, ...], dict[str, Any], list[Tensor]], Tensor],
    params: dict[str, Tensor],
    c: Call,
    sl: slice,
    grads: list[Tensor],
) -> dict[str, Tensor]:
    """Per-example gradients ``{name: [R, m, *shape]}`` of ``loss(params, args₁, kwargs₁, gradsₙᵣ)`` — the call's
    inputs for one example with a batch dimension of size 1 where they have one — for examples ``sl``,
    vmapped over examples and over the R rows of ``grads`` (``[R, n, ...]`` each)."""
    start = sl.start or 0
    stop = min(c.n, sl.stop if sl.stop is not None else c.n)
    args = tuple(_narrow(a, d, start, stop) for a, d in zip(c.args, c.arg_bdims))
    kwargs = {k: _narrow(v, c.kw_bdims.get(k), start, stop) for k, v in c.kwargs.items()}
    arg_dims = tuple(d if isinstance(a, Tensor) else None for a, d in zip(c.args, c.arg_bdims))
    kw_dims = {k: (c.kw_bdims.get(k) if isinstance(v, Tensor) else None) for k, v in c.kwargs.items()}
    gs = [g[:, start:stop] for g in grads]

    def one(args_i: tuple[Any, ...], kwargs_i: dict[str, Any], gs_i: list[Tensor]) -> dict[str, Tensor]:
        a1 = tuple(a.unsqueeze(d) if d is not None else a for a, d in zip(args_i, arg_dims))
        k1 = {k: (v.unsqueeze(kw_dims[k]) if kw_dims[k] is not None else v) for k, v in kwargs_i.items()}
        return grad(lambda pr: loss(pr, a1, k1, gs_i))(params)

    inner: Callable[..., dict[str, Tensor]] = vmap(one, in_dims=(arg_dims, kw_dims, 0))
    return vmap(inner, in_dims=(None, None, 0))(args, kwargs, gs)


def _narrow(a: Any, d: int | None, start: int, stop: int) -> Any:
    if not isinstance(a, Tensor) or d is None:
        return a
    return a.narrow(d, start, stop - start)


__all__ = ["GenericRule", "vmapped_grads"]
