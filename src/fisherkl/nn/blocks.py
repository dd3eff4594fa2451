"""A Fisher matrix seen as independent diagonal blocks: the structure pruning (OBS) and merging solve in.

Every structured representation is block-diagonal over the parameters: ``Dense`` is one block,
``BlockDiagonal`` one per group, ``KFAC`` / ``EKFAC`` one Kronecker block per linear map plus an exact
diagonal for the rest, ``Diagonal`` only a diagonal. :func:`block_structure` returns the blocks (flat
indices, products, a dense form when wanted, the diagonal of the damped inverse) and the diagonal part, so
that a constrained quadratic problem min ½δᵀ(F + λI)δ splits into one small problem per block.

A Kronecker block's indices follow Ŵ = [W | b] ``[d_out, width]`` row-major, so that its matrix is
G ⊗ A (KFAC) or (Q_G ⊗ Q_A) diag(vec S) (Q_G ⊗ Q_A)ᵀ (EKFAC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import FisherKLError, ParameterError
from ..matrix import EKFAC, KFAC, BlockDiagonal, Dense, DenseTooLargeError, Diagonal, FisherMatrix, ScaledMatrix
from ..matrix.kfac import KronBlock


@dataclass
class Block:
    """One diagonal block B of F over the flat parameter indices ``index`` ``[k]``."""

    index: Tensor
    mv: Callable[[Tensor], Tensor]  # B X for X [k, m]
    dense: Callable[[], Tensor]  # B [k, k]
    inv_mv: Callable[[Tensor, float], Tensor]  # (B + λI)⁻¹ X
    inv_diag: Callable[[float], Tensor]  # diag (B + λI)⁻¹ [k]
    key: str

    @property
    def size(self) -> int:
        return int(self.index.numel())


@dataclass
class Structure:
    """The blocks of F and its diagonal part (indices ``diag_index`` with values ``diag_values``)."""

    blocks: list[Block]
    diag_index: Tensor
    diag_values: Tensor


def _dense_block(index: Tensor, m: Tensor, key: str) -> Block:
    cache: dict[float, Tensor] = {}

    def inverse(lam: float) -> Tensor:
        if lam not in cache:
            a = m + lam * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
            chol, info = torch.linalg.cholesky_ex(a)
            if int(info) != 0:
                raise FisherKLError(f"block {key}: F + {lam:g}·I is not positive definite; pass a larger damping")
            cache.clear()
            cache[lam] = torch.cholesky_inverse(chol)
        return cache[lam]

    return Block(
        index,
        lambda x: m @ x,
        lambda: m,
        lambda x, lam: inverse(lam) @ x,
        lambda lam: inverse(lam).diagonal().clone(),
        key,
    )


def _kron_block(
    b: KronBlock, index: Tensor, qg: Tensor, qa: Tensor | None, s: Tensor, direct: KronBlock | None
) -> Block:
    """A Kronecker block in its eigenbasis (``direct``: the KFAC factors, for cheaper products)."""
    d_out, width = s.shape

    def grid(x: Tensor) -> Tensor:  # [k, m] -> [m, d_out, width]
        return x.T.reshape(x.shape[1], d_out, width)

    def flat(y: Tensor) -> Tensor:
        return y.reshape(y.shape[0], -1).T

    def rotate(x: Tensor) -> Tensor:
        y = qg.T @ grid(x)
        return y if qa is None else y @ qa

    def back(y: Tensor) -> Tensor:
        y = qg @ y
        return flat(y if qa is None else y @ qa.T)

    def mv(x: Tensor) -> Tensor:
        if direct is not None:
            a, g = direct.tensors["A"], direct.tensors["G"]
            gx = g @ grid(x)
            return flat(gx * a if a.ndim == 1 else gx @ a)
        return back(s * rotate(x))

    def dense() -> Tensor:
        if direct is not None:
            a, g = direct.tensors["A"], direct.tensors["G"]
            return torch.kron(g.contiguous(), (torch.diag(a) if a.ndim == 1 else a).contiguous())
        # products with the identity: k·(d_out² + width)·k flops, not the k³ of (Q_G ⊗ Q_A) diag(S) (Q_G ⊗ Q_A)ᵀ
        m = mv(torch.eye(d_out * width, dtype=qg.dtype, device=qg.device))
        return 0.5 * (m + m.T)

    def check(lam: float) -> None:
        if float(s.min()) + lam <= 0:
            raise FisherKLError(f"block {b.key}: F + {lam:g}·I is singular; pass damping > 0")

    def inv_mv(x: Tensor, lam: float) -> Tensor:
        check(lam)
        return back(rotate(x) / (s + lam))

    def inv_diag(lam: float) -> Tensor:
        check(lam)
        inv = 1.0 / (s + lam)
        d = (qg * qg) @ inv if qa is None else (qg * qg) @ inv @ (qa * qa).T
        return d.reshape(-1)

    return Block(index, mv, dense, inv_mv, inv_diag, b.key)


def block_index(b: KronBlock, f: FisherMatrix) -> Tensor:
    """Flat indices of a Kronecker block's entries, in Ŵ row-major order ``[d_out·width]``."""
    ar = torch.arange(f.p, device=f.device).unsqueeze(-1)
    return b.gather(ar, f.layout)[0].reshape(-1)


def kron_basis(b: KronBlock, kfac: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """(Q_G, Q_A or None, S ``[d_out, width]``) of a KFAC (``kfac=True``) or EKFAC block."""
    if not kfac:
        return b.tensors["QG"], b.tensors.get("QA"), b.tensors["S"]
    wg, qg = torch.linalg.eigh(b.tensors["G"])
    a = b.tensors["A"]
    wa, qa = (a, None) if a.ndim == 1 else torch.linalg.eigh(a)
    return qg, qa, torch.outer(wg.clamp_min(0), wa.clamp_min(0))


def block_structure(f: FisherMatrix, dense_fallback: bool = True) -> Structure:
    """F as diagonal blocks plus a diagonal part (see the module doc). Other representations (a sum, a low
    rank, an implicit Fisher) become one dense block when p × p fits (``dense_fallback``), else are refused."""
    dev = f.device
    none = torch.zeros(0, dtype=torch.long, device=dev)
    empty = torch.zeros(0, dtype=f.dtype, device=dev)
    if isinstance(f, ScaledMatrix):
        inner = block_structure(f.base, dense_fallback)
        return Structure([_scaled(b, f.c) for b in inner.blocks], inner.diag_index, f.c * inner.diag_values)
    if isinstance(f, Diagonal):
        return Structure([], torch.arange(f.p, device=dev), f.diagonal)
    if isinstance(f, Dense):
        return Structure([_dense_block(torch.arange(f.p, device=dev), f.matrix, "all")], none, empty)
    if isinstance(f, BlockDiagonal):
        blocks = [_dense_block(f.layout.indices(g, dev), m, ",".join(g)) for g, m in zip(f.groups, f.blocks)]
        return Structure(blocks, none, empty)
    if isinstance(f, (KFAC, EKFAC)):
        is_kfac = isinstance(f, KFAC)
        blocks = []
        for b in f.blocks:
            qg, qa, s = kron_basis(b, is_kfac)
            blocks.append(_kron_block(b, block_index(b, f), qg, qa, s, b if is_kfac else None))
        return Structure(blocks, f.layout.indices(f.rest, dev), f.rest_diag)
    if not dense_fallback:
        raise ParameterError(
            f"{type(f).__name__}: this needs a block-structured Fisher (dense, diag, block, kfac, ekfac)"
        )
    try:
        m = f.to_dense()
    except DenseTooLargeError as exc:
        raise ParameterError(
            f"{type(f).__name__}: p × p does not fit in memory; pass a block-structured Fisher "
            "(diag, block, kfac, ekfac)"
        ) from exc
    return Structure([_dense_block(torch.arange(f.p, device=dev), m, "all")], none, empty)


def _scaled(b: Block, c: float) -> Block:
    if c <= 0:
        raise FisherKLError(f"a Fisher matrix scaled by {c:g} has no structured inverse")
    return Block(
        b.index,
        lambda x: c * b.mv(x),
        lambda: c * b.dense(),
        lambda x, lam: b.inv_mv(x, lam / c) / c,
        lambda lam: b.inv_diag(lam / c) / c,
        b.key,
    )


def inverse_diagonal(f: FisherMatrix, damping: float) -> Tensor:
    """diag (F + λI)⁻¹ ``[p]`` in F's structure (per block; never a p × p inverse unless F is dense)."""
    st = block_structure(f)
    out = torch.empty(f.p, dtype=f.dtype, device=f.device)
    for b in st.blocks:
        out[b.index] = b.inv_diag(damping)
    d = st.diag_values + damping
    if bool((d <= 0).any()):
        raise FisherKLError("the diagonal part of F + λI has zero entries; pass damping > 0")
    out[st.diag_index] = 1.0 / d
    return out


__all__ = ["Block", "Structure", "block_index", "block_structure", "inverse_diagonal", "kron_basis"]
