"""The exact mean KL along a straight path w + tδ, its Taylor terms at t = 0, and a validity radius along δ.

    k(t) = mean over x of KL[p(y | x, w) ‖ p(y | x, w + tδ)] = c₂ t² + c₃ t³ + O(t⁴),
    c₂ = ½ k''(0) = ½ δᵀ F δ   (F the exact Fisher on the same data),   c₃ = k'''(0) / 6.

The derivatives are taken by autodiff through the network in the scalar t (nested reverse mode, one
graph per batch): c₂ is the exact Fisher's prediction without forming any Fisher, and c₃ the one extra
directional derivative that says how soon the quadratic form stops holding, |k(1) − c₂|/k(1) ≈ |c₃|/c₂.
KL per example and positions as :func:`fisherkl.nn.kl` (sum over unmasked positions, mean over examples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ParameterError
from .batch import Adapter, get_adapter
from .data import iter_raw
from .heads import Head, get_head
from .kl import kl as nn_kl
from .params import layout_of, perturbed, preserved_parameters
from .passes import fisher_passes, unwrap


@dataclass(frozen=True)
class PathTerms:
    """k(t) ≈ c2·t² + c3·t³ along δ (see the module doc); ``count`` examples (or positions) behind the mean."""

    c2: float
    c3: float
    count: int

    @property
    def cubic_error(self) -> float:
        """|c₃|/c₂: the predicted relative error of the quadratic term at t = 1 (inf when c₂ = 0 ≠ c₃)."""
        if self.c2 > 0:
            return abs(self.c3) / self.c2
        return 0.0 if self.c3 == 0 else math.inf

    def radius(self, rtol: float) -> float:
        """The t at which the cubic term reaches ``rtol`` of the quadratic one: rtol·c₂/|c₃| (inf if c₃ = 0)."""
        return math.inf if self.c3 == 0 else rtol * self.c2 / abs(self.c3)


def path_terms(
    net: nn.Module,
    delta: Tensor,
    data: Any,
    head: str | Head | Any = "categorical",
    *,
    batch_size: int = 256,
    adapter: Adapter | None = None,
    positions: str = "sum",
) -> PathTerms:
    """c₂ = ½k''(0) and c₃ = k'''(0)/6 of the exact mean KL along ``net``'s parameters + tδ (δ flat ``[p]``
    over the parameters that require grad). Cost per batch: one forward pass and three backward passes
    through growing graphs (about 6–10 forward passes)."""
    if positions not in ("sum", "mean"):
        raise ParameterError(f"positions must be 'sum' or 'mean', got {positions!r}")
    h = get_head(head)
    ad = get_adapter(adapter)
    net = unwrap(net)
    layout = layout_of(net)
    flat, _ = layout.flatten(delta, "delta")
    if flat.ndim != 1:
        raise ParameterError(f"delta must be one vector [{layout.numel}], got {tuple(flat.shape)}")
    named = dict(net.named_parameters())
    base = {n: named[n].detach() for n in layout.names}
    like = next(iter(base.values()))
    parts = layout.unflatten(flat.detach().to(like), "dict")
    assert isinstance(parts, dict)
    d2 = d3 = None
    count = 0
    with fisher_passes(math_attention=True), preserved_parameters(net):  # fused kernels: no 3rd derivative
        for raw in iter_raw(data, batch_size):
            batch = ad.batch(raw).to(like)
            with torch.no_grad():
                fp = h.check(ad.outputs(functional_call(net, base, batch.args, batch.kwargs)))
            t = torch.zeros((), dtype=like.dtype, device=like.device, requires_grad=True)
            moved = {n: base[n] + t * parts[n] for n in layout.names}
            with torch.enable_grad():
                fq = ad.outputs(functional_call(net, moved, batch.args, batch.kwargs))
                k = h.kl(fp, fq)
                _, mask = ad.targets(batch, fp)
                if mask is not None:
                    k = torch.where(mask, k, torch.zeros_like(k))
                s = k.sum()
                (g1,) = torch.autograd.grad(s, t, create_graph=True)
                (g2,) = torch.autograd.grad(g1, t, create_graph=True)
                (g3,) = torch.autograd.grad(g2, t, allow_unused=True)
            g3 = torch.zeros_like(g2) if g3 is None else g3
            d2 = g2.detach() if d2 is None else d2 + g2.detach()
            d3 = g3.detach() if d3 is None else d3 + g3.detach()
            if positions == "sum":
                count += batch.n
            else:
                count += int(mask.sum()) if mask is not None else math.prod(fp.shape[:-1])
    if d2 is None or d3 is None:
        raise ParameterError("data: no examples")
    n = max(count, 1)
    return PathTerms(float(d2) / (2 * n), float(d3) / (6 * n), count)


def exact_radius(
    net: nn.Module,
    delta: Tensor,
    data: Any,
    head: str | Head | Any,
    c2: float,
    rtol: float,
    *,
    t_max: float = 1e3,
    iterations: int = 30,
    kl_kwargs: dict[str, Any] | None = None,
) -> float:
    """The largest t ≤ ``t_max`` with |k(s) − c₂s²| ≤ rtol·k(s) for the s tried (doubling from 1/64, then
    bisection; about 10–35 exact KL passes), in units of δ. ``c2`` is ½δᵀFδ under the exact Fisher."""
    if not 0 < rtol < 1:
        raise ParameterError(f"rtol must be in (0, 1), got {rtol}")
    kw = dict(kl_kwargs or {})

    def ok(t: float) -> bool:
        exact = float(nn_kl(net, perturbed(net, t * delta), data, head, **kw))
        if not (exact > 0 and math.isfinite(exact)):
            return False
        return abs(exact - c2 * t * t) <= rtol * exact

    lo, t = 0.0, 1.0 / 64
    while t <= t_max and ok(t):
        lo, t = t, 2 * t
    if t > t_max:
        return lo
    hi = t
    if lo == 0.0:  # not even the first step: search below it
        lo_try = t / 2**20
        if not ok(lo_try):
            return 0.0
        lo = lo_try
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.01:
            break
    return lo


__all__ = ["PathTerms", "exact_radius", "path_terms"]
