"""Matrix-free Fisher-vector products for a network: jvp → head Fisher → vjp, over all the data.

For each batch and each column v: one forward pass carrying both the primal outputs f ``[n, *P, C]`` and
their directional derivative u = J v (forward-mode AD), then w = I_head(fₜ) uₜ at every unmasked position
(or Σᵣ eᵣ ⟨eᵣ, u⟩ for the Monte Carlo / empirical kinds, with the same sampled labels on every call),
then one backward pass Jᵀ w. Cost ≈ one gradient plus one tangent per product; memory of one batch.
Attention runs on torch's math kernel here (the fused kernels have no forward-mode derivative).
"""

from __future__ import annotations

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

    def mm(v: Tensor) -> tuple[Tensor, int]:
        leaves = {n: named[n].detach().requires_grad_(True) for n in layout.names}
        net_dtype = next(iter(leaves.values())).dtype
        out = torch.zeros_like(v)
        total = 0
        with fisher_passes(math_attention=True):
            for index, raw in enumerate(iter_raw(data, batch_size)):
                batch = adapter.batch(raw).to(next(iter(leaves.values())))
                e: Tensor | None = None
                mask: Tensor | None = None
                f: Tensor | None = None
                for j in range(v.shape[1]):
                    tangents = layout.unflatten(v[:, j].to(net_dtype), "list")
                    with torch.enable_grad(), preserved_parameters(net):
                        with fwAD.dual_level():
                            duals = {n: fwAD.make_dual(p, t) for (n, p), t in zip(leaves.items(), tangents)}
                            ret = functional_call(net, duals, batch.args, batch.kwargs)
                            f, u = fwAD.unpack_dual(adapter.outputs(ret))
                            u = torch.zeros_like(f) if u is None else u.detach()
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
                        grads = vjp(f, list(leaves.values()), w.to(f.dtype), allow_unused=True, materialize_grads=True)
                    out[:, j] += torch.cat([g.reshape(-1) for g in grads]).to(v.dtype)
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
