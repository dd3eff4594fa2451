"""Structural and mathematical checks of a Fisher matrix rebuilt from a state dict (a loaded file).

A file can pass its checksum and still be wrong (written by other code, edited, or from a bug): a
KFAC factor of the wrong size, a NaN, an asymmetric or negative-definite "Fisher", a scaled matrix
with c < 0, a negative example count. :func:`check_matrix` refuses each of these with
:class:`~fisherkl.errors.ParameterError` naming the part and the problem, so a bad file fails when it
is loaded, not later inside a solve.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import ParameterError
from .base import FisherMatrix, ScaledMatrix, SumMatrix
from .block import BlockDiagonal
from .dense import Dense, Diagonal
from .kfac import EKFAC, KFAC, KronBlock
from .lowrank import LowRank

_FLOATS = (torch.float32, torch.float64)


def _tensor(t: Any, what: str, shape: tuple[int, ...] | None = None) -> Tensor:
    if not isinstance(t, Tensor):
        raise ParameterError(f"{what} must be a tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise ParameterError(f"{what} must be float32 or float64, got {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ParameterError(f"{what} must have shape {list(shape)}, got {list(t.shape)}")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ParameterError(f"{what} has non-finite entries (NaN or inf)")
    return t


def _tol(t: Tensor) -> float:
    n = t.shape[-1] if t.ndim else 1
    return 64 * max(1.0, math.sqrt(n)) * torch.finfo(t.dtype).eps


def nonnegative(t: Tensor, what: str) -> None:
    """Entries ≥ 0 up to rounding of the largest."""
    if t.numel() and bool((t < -_tol(t) * t.abs().max()).any()):
        raise ParameterError(f"{what} has negative entries (smallest {float(t.min()):.3g}); a Fisher's are >= 0")


def psd(m: Tensor, what: str) -> None:
    """A symmetric positive semi-definite matrix, up to rounding of its largest entry."""
    if m.numel() == 0:
        return
    top = float(m.abs().max())
    tol = _tol(m) * top
    if bool(((m - m.T).abs() > tol).any()):
        raise ParameterError(f"{what} is not symmetric (largest |M − Mᵀ| {float((m - m.T).abs().max()):.3g})")
    shifted = 0.5 * (m + m.T) + (m.shape[0] * tol + torch.finfo(m.dtype).tiny) * torch.eye(
        m.shape[0], dtype=m.dtype, device=m.device
    )
    _, info = torch.linalg.cholesky_ex(shifted)
    if int(info) != 0:
        smallest = float(torch.linalg.eigvalsh(0.5 * (m + m.T))[0])
        raise ParameterError(
            f"{what} is not positive semi-definite (smallest eigenvalue {smallest:.3g}); a Fisher matrix is"
        )


def orthonormal_columns(q: Tensor, what: str) -> None:
    eye = torch.eye(q.shape[1], dtype=q.dtype, device=q.device)
    if q.numel() and float((q.T @ q - eye).abs().max()) > 1e3 * _tol(q):
        raise ParameterError(f"{what} must have orthonormal columns")


def _counts(f: FisherMatrix, where: str) -> None:
    n = f.n_examples
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ParameterError(f"{where}: n_examples must be an integer >= 0, got {n!r}")
    for k, v in (f.row_counts or {}).items():
        if not isinstance(v, int) or v < 0:
            raise ParameterError(f"{where}: row_counts[{k!r}] must be an integer >= 0, got {v!r}")


def _check_block(f: FisherMatrix, b: KronBlock, where: str) -> None:
    """A Kronecker block's place in the layout (its rows of the weight, its bias) and its factors."""
    layout = f.layout
    name = f"{where}: {type(f).__name__} block {b.key!r}"
    size = int(torch.Size(layout.shapes[layout.index(b.weight)]).numel())
    if b.d_in < 1 or b.d_out < 1 or size % b.d_in:
        raise ParameterError(f"{name}: d_in = {b.d_in} does not divide the weight's {size} entries")
    total = size // b.d_in
    r0, r1 = b.rows if b.rows is not None else (0, total)
    if not 0 <= r0 < r1 <= total or r1 - r0 != b.d_out:
        raise ParameterError(f"{name}: d_out = {b.d_out} (rows {r0}:{r1}) does not fit the weight's {total} rows")
    if b.bias is not None:
        blen = int(torch.Size(layout.shapes[layout.index(b.bias)]).numel())
        br0, br1 = b.bias_rows if b.bias_rows is not None else (r0, r1)
        if not 0 <= br0 < br1 <= blen or br1 - br0 != b.d_out:
            raise ParameterError(f"{name}: its bias {b.bias!r} of {blen} entries has no rows {br0}:{br1}")
    if isinstance(f, KFAC):
        a = _tensor(b.tensors.get("A"), f"{name} A")
        if a.ndim == 1 and a.shape[0] == b.width:
            nonnegative(a, f"{name} A (diagonal)")
        else:
            psd(_tensor(a, f"{name} A", (b.width, b.width)), f"{name} A")
        psd(_tensor(b.tensors.get("G"), f"{name} G", (b.d_out, b.d_out)), f"{name} G")
    else:
        if "QA" in b.tensors:
            orthonormal_columns(_tensor(b.tensors["QA"], f"{name} QA", (b.width, b.width)), f"{name} QA")
        orthonormal_columns(_tensor(b.tensors.get("QG"), f"{name} QG", (b.d_out, b.d_out)), f"{name} QG")
        nonnegative(_tensor(b.tensors.get("S"), f"{name} S", (b.d_out, b.width)), f"{name} S")


def check_matrix(f: FisherMatrix, where: str = "state_dict") -> FisherMatrix:
    """``f`` if its parts are consistent and it is a finite, symmetric positive semi-definite matrix
    (see the module doc); else :class:`ParameterError` naming the part."""
    _counts(f, where)
    layout = f.layout
    if isinstance(f, Dense):
        psd(_tensor(f.matrix, f"{where}: Dense matrix", (f.p, f.p)), f"{where}: Dense matrix")
    elif isinstance(f, Diagonal):
        nonnegative(_tensor(f.diagonal, f"{where}: Diagonal", (f.p,)), f"{where}: Diagonal")
    elif isinstance(f, BlockDiagonal):
        for g, b in zip(f.groups, f.blocks):
            psd(_tensor(b, f"{where}: block {g}"), f"{where}: block {g}")
    elif isinstance(f, (KFAC, EKFAC)):
        for b in f.blocks:
            _check_block(f, b, where)
        nonnegative(_tensor(f.rest_diag, f"{where}: rest_diag"), f"{where}: rest_diag")
    elif isinstance(f, LowRank):
        nonnegative(_tensor(f.values, f"{where}: LowRank values"), f"{where}: LowRank values")
        orthonormal_columns(_tensor(f.vectors, f"{where}: LowRank vectors"), f"{where}: LowRank vectors")
    elif isinstance(f, ScaledMatrix):
        if not math.isfinite(f.c) or f.c < 0:
            raise ParameterError(f"{where}: the scale c of a scaled Fisher must be finite and >= 0, got {f.c}")
        check_matrix(f.base, f"{where} (scaled)")
    elif isinstance(f, SumMatrix):
        for i, t in enumerate(f.terms):
            if t.layout != layout:
                raise ParameterError(f"{where}: term {i} of the sum has another parameter layout")
            check_matrix(t, f"{where} (term {i})")
    return f
