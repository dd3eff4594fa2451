"""Matrix-free Fisher-vector products for a network: jvp → head Fisher → vjp, over all the data.

For each batch and each column v: the outputs f ``[n, *P, C]`` and their directional derivative u = J v
(forward-mode AD), then w = I_head(fₜ) uₜ at every unmasked position (or Σᵣ eᵣ ⟨eᵣ, u⟩ for the Monte Carlo /
empirical kinds, with the same sampled labels on every call), then one backward pass Jᵀ w.

Two schedules, chosen per batch by the activations autograd would save (measured on two examples): small
ones run **fused**, one forward carrying primals and tangents with the graph kept; large ones run **split**,
the tangent forward without a graph (its activations freed layer by layer) and then an ordinary forward and
backward, whose graph serves every column. Fused saves a forward; split keeps the memory of a training step
(a fused forward keeps every saved activation's tangent too: 3.3× a training step's peak on a 3.5M-parameter
GPT). The tangent forward runs attention on torch's math kernel (the fused kernels have no forward-mode
derivative); the split schedule's gradient pass uses torch's usual kernels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call

from ..matrix.layout import ParamLayout
from .batch import Adapter
from .data import iter_raw
from .heads import Head
from .params import preserved_parameters
from .passes import fisher_passes, vjp
from .rows import Rows

SPLIT_BYTES = 64 * 1024**2  # saved activations of a batch above which products run split (see the module doc)


def saved_bytes_per_example(net: nn.Module, params: dict[str, Tensor], batch: Any) -> float:
    """Bytes of the activations autograd saves for the backward pass, per example (a forward on two examples;
    saved parameters, which do not grow with the batch, are not counted)."""
    sub = batch.take(torch.arange(min(2, batch.n)))
    own = {p.untyped_storage().data_ptr() for p in params.values()}
    total = [0]

    def pack(t: Tensor) -> Tensor:
        if t.untyped_storage().data_ptr() not in own:
            total[0] += t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        functional_call(net, params, sub.args, sub.kwargs)
    return total[0] / max(1, sub.n)


def fisher_mm_sums(
    net: nn.Module,
    layout: ParamLayout,
    data: Any,
    head: Head,
    kind: str,
    mc_samples: int,
    batch_size: int,
    gen_for: Callable[[int], torch.Generator | None],
    adapter: Adapter,
    positions: str = "sum",
) -> Callable[[Tensor], tuple[Tensor, int]]:
    """A function V ``[p, k]`` ↦ (Σ over the data of Jᵀ I_head J V, the count it is a sum over)."""
    named = dict(net.named_parameters())
    measured: list[float] = []  # saved activation bytes per example, measured on the first batch of the first call

    def mm(v: Tensor) -> tuple[Tensor, int]:
        leaves = {n: named[n].detach().requires_grad_(True) for n in layout.names}
        net_dtype = next(iter(leaves.values())).dtype
        out = torch.zeros_like(v)
        total = 0
        graph: Tensor | None = None
        with fisher_passes():
            for index, raw in enumerate(iter_raw(data, batch_size)):
                batch = adapter.batch(raw).to(next(iter(leaves.values())))
                if not measured:
                    with preserved_parameters(net):
                        measured.append(saved_bytes_per_example(net, leaves, batch))
                split = measured[0] * batch.n > SPLIT_BYTES
                e: Tensor | None = None
                mask: Tensor | None = None
                f: Tensor | None = None
                for j in range(v.shape[1]):
                    tangents = layout.unflatten(v[:, j].to(net_dtype), "list")
                    with torch.enable_grad(), preserved_parameters(net):
                        tangent_pass = torch.no_grad() if split else contextlib.nullcontext()
                        # torch's fused attention kernels have no forward-mode derivative: the math kernel here
                        with tangent_pass, fisher_passes(math_attention=True), fwAD.dual_level():
                            duals = {n: fwAD.make_dual(p, t) for (n, p), t in zip(leaves.items(), tangents)}
                            ret = functional_call(net, duals, batch.args, batch.kwargs)
                            f, u = fwAD.unpack_dual(adapter.outputs(ret))
                            u = torch.zeros_like(f) if u is None else u.detach()
                            del ret, duals
                        if split:
                            if graph is None:  # one graph for every column
                                graph = adapter.outputs(functional_call(net, leaves, batch.args, batch.kwargs))
                            f = graph
                        u = u.to(v.dtype)  # the head's statistics in the matrix's dtype (float32 for bf16 nets)
                        # backward after the dual level is closed: inside it, every backward op would also
                        # push tangents forward through the saved (dual) tensors, about doubling its cost
                        head.check(f)
                        if j == 0:
                            labels, mask = adapter.targets(batch, f)
                        fs = f.detach().to(v.dtype)
                        if kind == "exact":
                            w = head.fisher_mv(fs, u)
                            if mask is not None:
                                w = w * mask.unsqueeze(-1).to(w.dtype)
                        else:
                            if e is None:
                                e = Rows(head, fs, labels, mask, kind, mc_samples, gen_for(index)).e
                            dots = (e * u).reshape(e.shape[0], e.shape[1], -1).sum(-1)  # [S, n]
                            w = (e * dots.reshape(*dots.shape, *([1] * (e.ndim - 2)))).sum(0)
                        keep = split and j < v.shape[1] - 1
                        grads = vjp(
                            f,
                            list(leaves.values()),
                            w.to(f.dtype),
                            allow_unused=True,
                            materialize_grads=True,
                            retain_graph=keep,
                        )
                    out[:, j] += torch.cat([g.reshape(-1) for g in grads]).to(v.dtype)
                graph = None
                assert f is not None
                if positions == "sum":
                    total += batch.n
                else:
                    total += int(mask.sum()) if mask is not None else math.prod(f.shape[:-1])
        return out, total

    return mm


def fisher_mm(*args: Any, **kwargs: Any) -> Callable[[Tensor], Tensor]:
    """A function V ``[p, k]`` ↦ F V ``[p, k]`` (F the mean over the data; arguments as :func:`fisher_mm_sums`)."""
    sums = fisher_mm_sums(*args, **kwargs)

    def mm(v: Tensor) -> Tensor:
        s, n = sums(v)
        return s / max(n, 1)

    return mm
