"""Matrix-free Fisher-vector products for a network: jvp → head Fisher → vjp, over all the data.

For each batch and each column v: one forward pass carrying both the primal outputs f and their
directional derivative u = J v (forward-mode AD), then w = I_head(f) u (or Σᵣ eᵣ (eᵣ·u) for the
Monte Carlo / empirical kinds, with the same sampled labels on every call), then one backward pass
Jᵀ w. Cost ≈ one gradient plus one tangent per product; memory of one batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call

from ..matrix.layout import ParamLayout
from .data import as_input, iter_batches
from .engine import cotangents
from .heads import Head
from .params import preserved_parameters


def fisher_mm(
    net: nn.Module,
    layout: ParamLayout,
    data: Any,
    head: Head,
    kind: str,
    mc_samples: int,
    batch_size: int,
    gen_for: Callable[[int], torch.Generator | None],
) -> Callable[[Tensor], Tensor]:
    """A function V ``[p, k]`` ↦ F V ``[p, k]`` (F the mean over the data)."""
    named = dict(net.named_parameters())

    def mm(v: Tensor) -> Tensor:
        leaves = {n: named[n].detach().requires_grad_(True) for n in layout.names}
        out = torch.zeros_like(v)
        total = 0
        for index, (x, y) in enumerate(iter_batches(data, batch_size)):
            x = as_input(x, v)
            e = None
            for j in range(v.shape[1]):
                tangents = layout.unflatten(v[:, j], "list")
                with torch.enable_grad(), preserved_parameters(net):
                    with fwAD.dual_level():
                        duals = {n: fwAD.make_dual(p, t) for (n, p), t in zip(leaves.items(), tangents)}
                        f, u = fwAD.unpack_dual(functional_call(net, duals, (x,)))
                        u = torch.zeros_like(f) if u is None else u.detach()
                    # backward after the dual level is closed: inside it, every backward op would also
                    # push tangents forward through the saved (dual) tensors, about doubling its cost
                    head.check(f)
                    if kind == "exact":
                        w = head.fisher_mv(f.detach(), u)
                    else:
                        if e is None:
                            e = cotangents(head, f, y, kind, mc_samples, gen_for(index)).to(f.dtype)
                        w = (e * (e @ u.unsqueeze(-1))).sum(1)
                    grads = torch.autograd.grad(f, list(leaves.values()), w, allow_unused=True, materialize_grads=True)
                out[:, j] += torch.cat([g.reshape(-1) for g in grads])
            total += int(x.shape[0])
        return out / total

    return mm
