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

import torch
from torch import Tensor
from torch.func import functional_call, vjp, vmap

from ..params import preserved_parameters
from ..passes import fisher_passes
from ..passes import vjp as autograd_vjp
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
        module, outputs_of = self.module, self.outputs_of

        def outputs(pr: dict[str, Tensor], a1: tuple[Any, ...], k1: dict[str, Any]) -> list[Tensor]:
            return outputs_of(functional_call(module, pr, a1, k1))

        with preserved_parameters(module), fisher_passes(math_attention=True):
            return example_grads(outputs, params, c, sl, c.grads, list(c.out_bdims))


def example_grads(
    outputs: Callable[[dict[str, Tensor], tuple[Any, ...], dict[str, Any]], list[Tensor]],
    params: dict[str, Tensor],
    c: Call,
    sl: slice,
    grads: list[Tensor],
    out_dims: list[int | None],
) -> dict[str, Tensor]:
    """Per-example gradients ``{name: [R, m, *shape]}`` of Σᵢ ⟨outputsᵢ(params, x₁), gᵢ⟩ for examples ``sl``:
    ``outputs`` runs one example (inputs with a batch dimension of size 1 where they have one; output i
    has its batch dimension at ``out_dims[i]``, or none), ``grads`` are the recorded gradients ``[R, n, ...]``
    of those outputs, batch first. Vmapped over examples (one vjp each) and rows; modules that vmap cannot
    run (recurrent layers' fused kernels, data-dependent control flow) are done example by example."""
    start = sl.start or 0
    stop = min(c.n, sl.stop if sl.stop is not None else c.n)
    args = tuple(_narrow(a, d, start, stop) for a, d in zip(c.args, c.arg_bdims))
    kwargs = {k: _narrow(v, c.kw_bdims.get(k), start, stop) for k, v in c.kwargs.items()}
    arg_dims = tuple(d if isinstance(a, Tensor) else None for a, d in zip(c.args, c.arg_bdims))
    kw_dims = {k: (c.kw_bdims.get(k) if isinstance(v, Tensor) else None) for k, v in c.kwargs.items()}
    gs = [g[:, start:stop] for g in grads]
    dtype = gs[0].dtype if gs else next(iter(params.values())).dtype

    def cot(g: Tensor, d: int | None, lead: int) -> Tensor:  # a gradient without its batch dim → the output's shape
        return g if d is None else g.unsqueeze(lead + d)

    def one(args_i: tuple[Any, ...], kwargs_i: dict[str, Any], gs_i: list[Tensor]) -> dict[str, Tensor]:
        a1 = tuple(a.unsqueeze(d) if d is not None else a for a, d in zip(args_i, arg_dims))
        k1 = {k: (v.unsqueeze(kw_dims[k]) if kw_dims[k] is not None else v) for k, v in kwargs_i.items()}
        outs, pull = vjp(lambda pr: tuple(outputs(pr, a1, k1)), params)
        return vmap(pull)(tuple(cot(g, d, 1).to(o.dtype) for g, d, o in zip(gs_i, out_dims, outs)))[0]

    try:
        with torch.no_grad():  # the results must not keep a graph to the network's other parameters
            pe = vmap(one, in_dims=(arg_dims, kw_dims, 1))(args, kwargs, gs)
        return {k: v.movedim(0, 1).detach().to(dtype) for k, v in pe.items()}
    except (RuntimeError, NotImplementedError, ValueError):
        pass
    rows = gs[0].shape[0] if gs else 0
    out: dict[str, list[list[Tensor]]] = {k: [[] for _ in range(rows)] for k in params}
    for i in range(stop - start):
        a1 = tuple(_narrow(a, d, i, i + 1) for a, d in zip(args, arg_dims))
        k1 = {k: _narrow(v, kw_dims[k], i, i + 1) for k, v in kwargs.items()}
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            outs = outputs(leaves, a1, k1)
        for r in range(rows):
            cots = [cot(g[r, i], d, 0).to(o.dtype) for g, d, o in zip(gs, out_dims, outs)]
            got = autograd_vjp(outs, list(leaves.values()), cots, retain_graph=r < rows - 1, allow_unused=True)
            for (k, leaf), gk in zip(leaves.items(), got):
                out[k][r].append(torch.zeros_like(leaf) if gk is None else gk)
    return {k: torch.stack([torch.stack(per) for per in v]).to(dtype) for k, v in out.items()}


def _narrow(a: Any, d: int | None, start: int, stop: int) -> Any:
    if not isinstance(a, Tensor) or d is None:
        return a
    return a.narrow(d, start, stop - start)


__all__ = ["GenericRule", "example_grads"]
