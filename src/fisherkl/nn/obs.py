"""The Optimal Brain Surgeon step: remove a set of weights and move the others to compensate.

For a set Q of weights to zero (Hassibi & Stork 1993; several at once as in WoodFisher, Singh & Alistarh 2020):

    δ* = argmin ½ δᵀ(F + λI)δ   subject to   δ_Q = −w_Q
       = −(F + λI)⁻¹ E_Q (E_Qᵀ (F + λI)⁻¹ E_Q)⁻¹ w_Q,        R = the other weights:  δ*_R = −(F + λI)_RR⁻¹ F_RQ δ_Q,

and for one weight q the saliency (the minimal ½δᵀ(F + λI)δ) is w_q² / (2 [(F + λI)⁻¹]_qq). F is
block-diagonal in every structured representation, so the problem splits into one per block (in chunks):
a block of at most ``direct_max`` weights is solved by Cholesky on its remaining rows, a larger one by
conjugate gradients preconditioned with the block's own (F + λI)⁻¹ (Kronecker blocks invert in their
eigenbasis), so memory stays O(block) and time O(products). The diagonal part needs no compensation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConvergenceError, FisherKLError, ParameterError
from ..matrix import FisherMatrix
from .blocks import Block, Structure, block_structure


def obs_step(
    f: FisherMatrix | Structure,
    w: Tensor,
    removed: Tensor,
    damping: float,
    *,
    direct_max: int = 4096,
    rtol: float | None = None,
    max_iter: int = 2000,
) -> Tensor:
    """δ* ``[p]`` of the module doc: ``w`` the flat weights ``[p]``, ``removed`` a bool mask ``[p]`` (Q)."""
    st = f if isinstance(f, Structure) else block_structure(f)
    if damping < 0:
        raise ParameterError(f"damping must be >= 0, got {damping}")
    if removed.dtype != torch.bool or removed.shape != w.shape:
        raise ParameterError(f"removed must be a bool mask of shape {tuple(w.shape)}")
    delta = torch.zeros_like(w)
    delta[removed] = -w[removed]
    tol = (1e-10 if w.dtype == torch.float64 else 1e-5) if rtol is None else rtol
    for b in st.blocks:
        q = removed[b.index]
        if not bool(q.any()) or bool(q.all()):
            continue
        fixed = -w[b.index][q]
        r = ~q
        if b.size <= direct_max:
            m = b.dense().double()  # float64 Cholesky: float32 Fisher blocks are often singular to working precision
            a = m[r][:, r] + damping * torch.eye(int(r.sum()), dtype=m.dtype, device=m.device)
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) != 0:
                raise FisherKLError(
                    f"OBS, block {b.key}: F_RR + {damping:g}·I is not positive definite; pass damping > 0"
                )
            rhs = -(m[r][:, q] @ fixed.double())
            delta[b.index[r]] = torch.cholesky_solve(rhs.unsqueeze(-1), chol)[:, 0].to(w.dtype)
        else:
            delta[b.index[r]] = _pcg(b, q, fixed, damping, tol, max_iter)
    return delta


def _pcg(b: Block, q: Tensor, fixed: Tensor, lam: float, rtol: float, max_iter: int) -> Tensor:
    """Conjugate gradients for (B + λI)_RR x = −B_RQ fixed, preconditioned by [(B + λI)⁻¹]_RR."""
    k = b.size
    r_mask = ~q

    def embed(x: Tensor, mask: Tensor) -> Tensor:
        full = torch.zeros(k, 1, dtype=x.dtype, device=x.device)
        full[mask, 0] = x
        return full

    def op(x: Tensor) -> Tensor:
        return b.mv(embed(x, r_mask))[r_mask, 0] + lam * x

    def precond(x: Tensor) -> Tensor:
        return b.inv_mv(embed(x, r_mask), lam)[r_mask, 0]

    rhs = -b.mv(embed(fixed, q))[r_mask, 0]
    x = torch.zeros_like(rhs)
    res = rhs.clone()
    target = rtol * float(rhs.norm())
    if float(res.norm()) <= target:
        return x
    z = precond(res)
    d = z.clone()
    rz = float(res @ z)
    for _ in range(max_iter):
        ad = op(d)
        alpha = rz / max(float(d @ ad), torch.finfo(rhs.dtype).tiny)
        x = x + alpha * d
        res = res - alpha * ad
        if float(res.norm()) <= target:
            return x
        z = precond(res)
        rz_new = float(res @ z)
        d = z + (rz_new / rz) * d
        rz = rz_new
    raise ConvergenceError(
        f"OBS, block {b.key}: conjugate gradients did not reach relative residual {rtol:g} in {max_iter} "
        "iterations; increase damping or max_iter"
    )


def obs_saliency(w: Tensor, inv_diag: Tensor) -> Tensor:
    """w_q² / (2 [(F + λI)⁻¹]_qq) for every q: the least ½δᵀ(F + λI)δ that removes weight q alone."""
    return w * w / (2 * inv_diag)


__all__ = ["obs_saliency", "obs_step"]
