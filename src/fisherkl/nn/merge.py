"""Fisher merging (Matena & Raffel 2022): the parameters closest to every model in its own Fisher metric.

    θ* = argmin_θ Σᵢ wᵢ ½(θ − θᵢ)ᵀFᵢ(θ − θᵢ) + ½λ|θ − θ̄|²  =  (Σᵢ wᵢFᵢ + λI)⁻¹ (Σᵢ wᵢFᵢθᵢ + λθ̄),

θ̄ = Σᵢ wᵢθᵢ the plain average (weights normalised to Σwᵢ = 1), so that directions no Fisher sees stay at the
average; ½(θ* − θᵢ)ᵀFᵢ(θ* − θᵢ) is the predicted KL from model i to the merge on model i's data. Diagonal
Fishers merge elementwise; block, KFAC and EKFAC Fishers with the same blocks merge **exactly per block**
(Σᵢ wᵢ Gᵢ ⊗ Aᵢ is not a Kronecker product: the block's dense matrix is formed and solved by Cholesky, or by
conjugate gradients on Kronecker products beyond ``direct_max`` weights); anything else is solved as one
system (dense Cholesky when p × p fits, else conjugate gradients).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError, ParameterError
from ..matrix import FisherMatrix
from ..matrix.base import conjugate_gradient
from .batch import Adapter
from .blocks import Structure, block_structure
from .heads import Head
from .kl import kl as nn_kl
from .params import align, layout_of, parameters_vector


@dataclass
class MergeResult:
    """The merged network and its cost to each source: ``predicted[i]`` = ½(θ* − θᵢ)ᵀFᵢ(θ* − θᵢ) (None for
    plain averaging), ``exact[i]`` = mean KL[p_θᵢ ‖ p_θ*] on ``data[i]`` (None without data)."""

    net: nn.Module
    method: str
    weights: list[float]
    damping: float
    predicted: list[float] | None
    exact: list[float] | None

    def records(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "weights": self.weights,
            "damping": self.damping,
            "predicted": self.predicted,
            "exact": self.exact,
        }


def _same_blocks(structs: Sequence[Structure]) -> bool:
    first = structs[0]
    for s in structs[1:]:
        if len(s.blocks) != len(first.blocks) or not torch.equal(s.diag_index, first.diag_index):
            return False
        if any(not torch.equal(a.index, b.index) for a, b in zip(s.blocks, first.blocks)):
            return False
    return True


def fisher_merge_vector(
    thetas: Sequence[Tensor],
    fishers: Sequence[FisherMatrix],
    weights: Sequence[float],
    damping: float,
    *,
    direct_max: int = 8192,
) -> Tensor:
    """θ* of the module doc from flat parameters θᵢ ``[p]`` and Fishers Fᵢ over the same layout."""
    dtype, dev = fishers[0].dtype, fishers[0].device
    th = [t.to(dtype=dtype, device=dev) for t in thetas]
    avg = sum(w * t for w, t in zip(weights, th))
    assert isinstance(avg, Tensor)
    try:
        structs = [block_structure(f, dense_fallback=False) for f in fishers]
    except ParameterError:
        structs = []
    out = torch.empty_like(avg)
    if structs and _same_blocks(structs):
        for j, blk in enumerate(structs[0].blocks):
            idx = blk.index
            parts = [s.blocks[j] for s in structs]
            rhs = sum(w * b.mv(t[idx].unsqueeze(-1))[:, 0] for w, b, t in zip(weights, parts, th)) + damping * avg[idx]
            assert isinstance(rhs, Tensor)
            if blk.size <= direct_max:
                # float64 Cholesky: a float32 Fisher block is often singular to working precision
                m = sum(w * b.dense().double() for w, b in zip(weights, parts))
                assert isinstance(m, Tensor)
                a = m + damping * torch.eye(blk.size, dtype=m.dtype, device=dev)
                chol, info = torch.linalg.cholesky_ex(a)
                if int(info) != 0:
                    raise FisherKLError(
                        f"merge, block {blk.key}: Σ wᵢFᵢ + {damping:g}·I is not positive definite; pass damping > 0"
                    )
                out[idx] = torch.cholesky_solve(rhs.double().unsqueeze(-1), chol)[:, 0].to(dtype)
            else:

                def mm(v: Tensor, parts: list[Any] = parts) -> Tensor:
                    return sum(w * b.mv(v) for w, b in zip(weights, parts))  # type: ignore[return-value]

                if damping <= 0:
                    raise FisherKLError(f"merge, block {blk.key}: conjugate gradients need damping > 0")
                out[idx] = conjugate_gradient(mm, rhs.unsqueeze(-1), damping)[:, 0]
        di = structs[0].diag_index
        num = sum(w * s.diag_values * t[di] for w, s, t in zip(weights, structs, th)) + damping * avg[di]
        den = sum(w * s.diag_values for w, s in zip(weights, structs)) + damping
        assert isinstance(den, Tensor)
        if bool((den <= 0).any()):
            raise FisherKLError("merge: some parameters have zero Fisher in every model; pass damping > 0")
        out[di] = num / den
        return out
    total = sum(w * f for w, f in zip(weights, fishers))
    assert isinstance(total, FisherMatrix)
    rhs = sum(w * f.mv(t) for w, f, t in zip(weights, fishers, th)) + damping * avg
    x = total.solve(rhs, damping)
    assert isinstance(x, Tensor)
    return x


def merge(
    nets: Sequence[nn.Module],
    fishers: Sequence[FisherMatrix] | None = None,
    weights: Sequence[float] | None = None,
    *,
    damping: float | None = None,
    data: list[Any] | None = None,
    head: str | Head | Any = "categorical",
    batch_size: int = 256,
    adapter: Adapter | None = None,
    positions: str = "sum",
    direct_max: int = 8192,
) -> MergeResult:
    """Merge networks of one architecture by Fisher-weighted averaging (or plain averaging without ``fishers``).

    Parameters
    ----------
    nets:
        Two or more networks with the same parameters (names and shapes); the merge is a copy of ``nets[0]``
        (its buffers and frozen parameters) with the merged parameters.
    fishers:
        One Fisher matrix per network, each over that network's parameters (e.g. ``fisherkl.nn.fisher(netᵢ,
        dataᵢ, representation="diag" | "kfac" | "block")``); None: plain (weighted) averaging.
    weights:
        Non-negative weights (default equal), normalised to sum 1.
    damping:
        λ of the module doc (default 1e-2 · tr(Σ wᵢFᵢ)/p): directions with curvature well below the mean
        (unseen by every model, or noise) stay at the plain average.
    data:
        A **list** with one data set per network: the exact KL from each network to the merge on its own
        data (:func:`fisherkl.nn.kl` with ``head``, ``adapter``, ``positions``).
    """
    nets = list(nets)
    if len(nets) < 2:
        raise ParameterError(f"merge: give two or more networks, got {len(nets)}")
    for i, n in enumerate(nets):
        if not isinstance(n, nn.Module):
            raise ParameterError(f"nets[{i}] must be a torch.nn.Module, got {type(n).__name__}")
    layout = layout_of(nets[0])
    for i, n in enumerate(nets[1:], 1):
        if layout_of(n).shapes != layout.shapes:
            raise ParameterError(f"nets[{i}]: its parameters (names/shapes) differ from nets[0]'s")
    w = [1.0] * len(nets) if weights is None else [float(x) for x in weights]
    if len(w) != len(nets) or any(not (x >= 0) for x in w) or sum(w) <= 0:
        raise ParameterError(f"weights: need {len(nets)} non-negative numbers with a positive sum, got {weights!r}")
    w = [x / sum(w) for x in w]
    if data is not None and (not isinstance(data, list) or len(data) != len(nets)):
        raise ParameterError(
            f"data: give a list with one data set per network ({len(nets)}), got {type(data).__name__}"
        )
    thetas = [parameters_vector(n) for n in nets]
    fs: list[FisherMatrix] | None = None
    lam = 0.0
    if fishers is None:
        merged = sum(x * t for x, t in zip(w, thetas))
        assert isinstance(merged, Tensor)
        method = "average"
    else:
        if len(fishers) != len(nets):
            raise ParameterError(f"fishers: need one per network ({len(nets)}), got {len(fishers)}")
        fs = []
        for i, (f, n) in enumerate(zip(fishers, nets)):
            if not isinstance(f, FisherMatrix):
                raise ParameterError(f"fishers[{i}] must be a FisherMatrix, got {type(f).__name__}")
            fs.append(align(f, n, f"fishers[{i}]").relabel(layout))
        dt = fs[0].dtype
        fs = [f if f.dtype == dt else _cast(f, dt) for f in fs]
        if damping is None:
            lam = 1e-2 * sum(x * float(f.trace()) for x, f in zip(w, fs)) / layout.numel
        else:
            lam = float(damping)
            if not lam >= 0:
                raise ParameterError(f"damping must be >= 0, got {damping}")
        merged = fisher_merge_vector(thetas, fs, w, lam, direct_max=direct_max)
        method = "fisher"
    out = copy.deepcopy(nets[0])
    parts = layout.unflatten(merged, "dict")
    assert isinstance(parts, dict)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if name in parts:
                p.copy_(parts[name].to(dtype=p.dtype, device=p.device))
    predicted = None
    if fs is not None:
        predicted = []
        for f, t in zip(fs, thetas):
            d = (merged.to(f.dtype) - t.to(f.dtype)).to(f.device)
            predicted.append(0.5 * float(f.quad(d)))
    exact = None
    if data is not None:
        kw = {"batch_size": batch_size, "adapter": adapter, "positions": positions}
        exact = [float(nn_kl(n, out, d, head, **kw)) for n, d in zip(nets, data)]
    return MergeResult(out, method, w, lam, predicted, exact)


def _cast(f: FisherMatrix, dtype: torch.dtype) -> FisherMatrix:
    from .approx import cast_fisher

    return cast_fisher(f, dtype)


__all__ = ["MergeResult", "fisher_merge_vector", "merge"]
