"""Kronecker-factored Fisher matrices: KFAC and EKFAC.

For a layer with weight W ``[d_out, d_in]`` (a Conv2d weight ``[d_out, c, kh, kw]`` is read as
``[d_out, c·kh·kw]``) and optional bias b ``[d_out]``, write Ŵ = [W | b] ``[d_out, d_in(+1)]``. Its
per-example gradient is Σₜ gₜ âₜᵀ (âₜ = [aₜ; 1] the layer input, gₜ the gradient of the layer
output, t over positions sharing the weight), and the Fisher block in the row-major order of Ŵ is
approximated by

    F_Ŵ ≈ G ⊗ A,   i.e.   F_Ŵ · vec(V) = vec(G V A)   for V ``[d_out, d_in(+1)]``,

with A ``[d_in(+1), d_in(+1)]`` and G ``[d_out, d_out]`` (mean over examples; see
:func:`fisherkl.nn.fisher` for the expand/reduce conventions). EKFAC keeps the eigenbases
Q_G, Q_A of G and A but replaces the eigenvalues λ_G ⊗ λ_A by refitted scales S ``[d_out, d_in(+1)]``
(the mean squared per-example gradient in that basis; George et al. 2018):
F_Ŵ · vec(V) = vec(Q_G (S ⊙ Q_Gᵀ V Q_A) Q_Aᵀ).

Parameters outside any Kronecker block (no KFAC rule: norms, embeddings, …) keep their exact
diagonal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ..errors import FisherKLError, ParameterError
from .base import FisherMatrix, _check_damping, _logdet_of, check_k, register
from .layout import ParamLayout


@dataclass
class KronBlock:
    """Where a Kronecker block sits: the weight's name and the map's shape ``[d_out, d_in]``, the bias's name
    (or None), and the block's tensors.

    The stored weight is read as a matrix ``[rows, d_in]`` (a convolution's ``[c_out, c·Πk]``), or
    ``[d_in, rows]`` when ``transposed`` (an embedding ``[V, d]``: d_in = V; HuggingFace's Conv1D); the block
    covers its rows ``rows`` (a range along d_out; None for all), and entries ``bias_rows`` of a bias of
    length ``bias_len`` (default: the same rows). A factor ``"A"`` of shape ``[width]`` is a diagonal
    (one-hot inputs: token counts).
    """

    weight: str
    bias: str | None
    d_out: int
    d_in: int
    tensors: dict[str, Tensor] = field(default_factory=dict)
    rows: tuple[int, int] | None = None
    transposed: bool = False
    bias_rows: tuple[int, int] | None = None
    bias_len: int | None = None

    @property
    def width(self) -> int:
        """d_in + 1 with a bias, else d_in: the size of A."""
        return self.d_in + (self.bias is not None)

    @property
    def key(self) -> str:
        """A name for the block: the weight's, with its rows when it covers only some."""
        return self.weight if self.rows is None else f"{self.weight}[{self.rows[0]}:{self.rows[1]}]"

    def _wrows(self, v: Tensor, layout: ParamLayout) -> tuple[Tensor, int]:
        """The weight's columns of v as ``[k, total_rows, d_in]`` (a view when not transposed)."""
        k = v.shape[1]
        w = v[layout.slice(self.weight)].T
        if self.transposed:
            return w.reshape(k, self.d_in, -1).transpose(1, 2), k
        return w.reshape(k, -1, self.d_in), k

    def gather(self, v: Tensor, layout: ParamLayout) -> Tensor:
        """Columns v ``[p, k]`` → Ŵ-shaped ``[k, d_out, width]``."""
        w, _ = self._wrows(v, layout)
        if self.rows is not None:
            w = w[:, self.rows[0] : self.rows[1]]
        if self.bias is None:
            return w
        b = v[layout.slice(self.bias)].T
        br = self.bias_rows if self.bias_rows is not None else self.rows
        if br is not None:
            b = b[:, br[0] : br[1]]
        return torch.cat([w, b.unsqueeze(-1)], -1)

    def scatter(self, out: Tensor, m: Tensor, layout: ParamLayout) -> None:
        """Write Ŵ-shaped ``[k, d_out, width]`` into columns ``out [p, k]`` (only this block's entries)."""
        k = m.shape[0]
        sl = layout.slice(self.weight)
        wm = m[..., : self.d_in]
        if not self.transposed:
            r0 = 0 if self.rows is None else self.rows[0]
            out[sl.start + r0 * self.d_in : sl.start + (r0 + self.d_out) * self.d_in] = wm.reshape(k, -1).T
        else:  # stored [d_in, total rows]: the block's rows are columns of it
            cur = out[sl].T.reshape(k, self.d_in, -1).clone()
            r0, r1 = self.rows if self.rows is not None else (0, cur.shape[2])
            cur[:, :, r0:r1] = wm.transpose(1, 2)
            out[sl] = cur.reshape(k, -1).T
        if self.bias is not None:
            bs = layout.slice(self.bias)
            br = self.bias_rows if self.bias_rows is not None else self.rows
            r0 = 0 if br is None else br[0]
            out[bs.start + r0 : bs.start + r0 + self.d_out] = m[..., self.d_in].T

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weight": self.weight, "bias": self.bias, "d_out": self.d_out, "d_in": self.d_in}
        if self.rows is not None:
            out["rows"] = list(self.rows)
        if self.transposed:
            out["transposed"] = True
        if self.bias_rows is not None:
            out["bias_rows"] = list(self.bias_rows)
            out["bias_len"] = self.bias_len
        return {**out, **self.tensors}

    @classmethod
    def from_state(cls, s: Mapping[str, Any], keys: Sequence[str]) -> KronBlock:
        rows = s.get("rows")
        brows = s.get("bias_rows")
        return cls(
            s["weight"],
            s["bias"],
            int(s["d_out"]),
            int(s["d_in"]),
            {k: s[k] for k in keys if k in s},
            rows=None if rows is None else (int(rows[0]), int(rows[1])),
            transposed=bool(s.get("transposed", False)),
            bias_rows=None if brows is None else (int(brows[0]), int(brows[1])),
            bias_len=None if s.get("bias_len") is None else int(s["bias_len"]),
        )


def eigh_in(m: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """eigh of a symmetric matrix computed in ``dtype`` (default: its own; float64 for the factors of a
    bf16 / fp16 network, whose eigenvalues spread over more orders of magnitude than their statistics'
    float32 resolves), returned in the matrix's dtype."""
    if dtype is None or dtype == m.dtype:
        return torch.linalg.eigh(m)
    w, q = torch.linalg.eigh(m.to(dtype))
    return w.to(m.dtype), q.to(m.dtype)


class _Kronecker(FisherMatrix):
    """Shared machinery: Kronecker blocks in an eigenbasis, plus an exact diagonal for the rest."""

    structured_solve = True
    keys: tuple[str, ...] = ()

    def __init__(
        self, blocks: Sequence[KronBlock], rest: Sequence[str], rest_diag: Tensor, layout: ParamLayout
    ) -> None:
        in_blocks = {n for b in blocks for n in (b.weight, b.bias) if n is not None}
        if in_blocks & set(rest) or in_blocks | set(rest) != set(layout.names) or len(set(rest)) != len(rest):
            raise ParameterError(f"{type(self).__name__}: blocks and rest must cover every parameter exactly once")
        super().__init__(layout, rest_diag.dtype, rest_diag.device)
        self.blocks = list(blocks)
        self.rest = list(rest)
        self.rest_diag = rest_diag
        self._rest_index = layout.indices(self.rest, self.device)
        if rest_diag.shape != self._rest_index.shape:
            raise ParameterError(f"{type(self).__name__}: rest_diag must be [{len(self._rest_index)}]")

    # per block: eigenbases and eigenvalue grid
    def _basis(self, b: KronBlock) -> tuple[Tensor, Tensor | None, Tensor]:
        """(Q_G, Q_A, S) with F_block = (Q_G ⊗ Q_A) diag(vec S) (Q_G ⊗ Q_A)ᵀ; Q_A None is the identity."""
        raise NotImplementedError

    def _apply(self, v: Tensor, fn: Any) -> Tensor:
        out = torch.empty_like(v)
        for b in self.blocks:
            qg, qa, s = self._basis(b)
            m = b.gather(v, self.layout)
            inner = qg.T @ m if qa is None else qg.T @ m @ qa
            inner = fn(s) * inner
            b.scatter(out, qg @ inner if qa is None else qg @ inner @ qa.T, self.layout)
        out[self._rest_index] = fn(self.rest_diag).unsqueeze(-1) * v[self._rest_index]
        return out

    def _mm(self, v: Tensor) -> Tensor:
        return self._apply(v, lambda s: s)

    def _solve(
        self, b: Tensor, damping: float, rtol: float | None, max_iter: int | None, precond: Any = None
    ) -> Tensor:
        self._refuse_singular(damping)
        return self._apply(b, lambda s: 1.0 / (s + damping))

    def _refuse_singular(self, damping: float) -> None:
        """FisherKLError naming the blocks where F + damping·I is numerically singular.

        As for a dense matrix: an eigenvalue s + damping ≤ n·ε·(largest + damping) is a null direction
        (n the block's size; the Kronecker eigenvalues λ_G·λ_A carry rounding of that order).
        """
        eps = torch.finfo(self.dtype).eps
        null = []
        for blk in self.blocks:
            s = self._basis(blk)[2]
            top = float(s.max()) + damping
            count = int((s + damping <= s.numel() * eps * max(top, 0.0)).sum()) if top > 0 else s.numel()
            if count:
                what = blk.weight + (f" + {blk.bias}" if blk.bias else "")
                null.append(f"{what} ({count} of {s.numel()} directions)")
        if self.rest:
            top = float(self.rest_diag.max()) + damping
            zero = self.rest_diag + damping <= eps * max(top, 0.0) if top > 0 else torch.ones_like(self.rest_diag) > 0
            if bool(zero.any()):
                owners = [n for n in self.rest for _ in range(self.layout.slice(n).stop - self.layout.slice(n).start)]
                hit = sorted({owners[j] for j in zero.nonzero()[:, 0].tolist()})
                null.append(f"{', '.join(hit)} (diagonal)")
        if null:
            raise FisherKLError(
                f"solve: {type(self).__name__} + {damping:g}·I is singular: null directions in {'; '.join(null)}; "
                "these parameters do not change the model's outputs on the data (or too few examples "
                "reached them) — pass damping > 0"
            )

    def _diag(self) -> Tensor:
        out = torch.empty(self.p, 1, dtype=self.dtype, device=self.device)
        for b in self.blocks:
            qg, qa, s = self._basis(b)
            d = (qg * qg) @ s if qa is None else (qg * qg) @ s @ (qa * qa).T
            b.scatter(out, d.unsqueeze(0), self.layout)
        out[self._rest_index, 0] = self.rest_diag
        return out[:, 0]

    def _eigen_sources(self) -> tuple[Tensor, list[tuple[int, int]]]:
        vals, where = [], []
        for i, b in enumerate(self.blocks):
            s = self._basis(b)[2].reshape(-1)
            vals.append(s)
            where += [(i, j) for j in range(s.numel())]
        vals.append(self.rest_diag)
        where += [(-1, j) for j in range(self.rest_diag.numel())]
        return torch.cat(vals), where

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        """Largest k eigenpairs, exactly, from the per-block eigenbases (never a p × p matrix)."""
        k = check_k(k, self.p)
        vals, where = self._eigen_sources()
        top = torch.topk(vals, k).indices.tolist()
        vecs = torch.zeros(self.p, k, dtype=self.dtype, device=self.device)
        for col, i in enumerate(top):
            blk, j = where[i]
            if blk < 0:
                vecs[self._rest_index[j], col] = 1
                continue
            b = self.blocks[blk]
            qg, qa, _ = self._basis(b)
            right = (
                qa[:, j % b.width]
                if qa is not None
                else torch.eye(b.width, dtype=self.dtype, device=self.device)[j % b.width]
            )
            m = torch.outer(qg[:, j // b.width], right).unsqueeze(0)
            tmp = torch.zeros(self.p, 1, dtype=self.dtype, device=self.device)
            b.scatter(tmp, m, self.layout)
            vecs[:, col] = tmp[:, 0]
        return vals[top], vecs

    def eig(self) -> tuple[Tensor, Tensor]:
        vals, vecs = self.topk(self.p)
        return vals.flip(0), vecs.flip(1)

    def _state(self) -> dict[str, Any]:
        return {"blocks": [b.state() for b in self.blocks], "rest": self.rest, "rest_diag": self.rest_diag}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        blocks = [KronBlock.from_state(s, cls.keys) for s in state["blocks"]]
        return cls(blocks, state["rest"], state["rest_diag"], ParamLayout.from_state(state["layout"]))

    # --- log det, square root, draws (issue 16): all from each block's eigenbasis (Q_G ⊗ Q_A, S) ----------
    # F + λI = ⊕ (Q_G ⊗ Q_A) diag(S + λ) (Q_G ⊗ Q_A)ᵀ ⊕ diag(rest + λ), so every function of F acts on S.
    def _all_scales(self) -> Tensor:
        return torch.cat([*(self._basis(b)[2].reshape(-1) for b in self.blocks), self.rest_diag])

    def logdet(self, damping: float = 0.0) -> Tensor:
        """log det(F + damping·I) = Σ log(S + damping) over every block's scales and the rest."""
        damping = _check_damping(damping, "logdet")
        return _logdet_of(self._all_scales() + damping, type(self).__name__, damping)

    def sqrt(self) -> FisherMatrix:
        """F^{1/2} in eigen form: an EKFAC with the same bases and scales √S (for KFAC: G^{1/2} ⊗ A^{1/2})."""
        blocks = []
        for b in self.blocks:
            qg, qa, s = self._basis(b)
            blocks.append(dataclasses.replace(b, tensors={"QA": qa, "QG": qg, "S": s.clamp_min(0).sqrt()}))
        return EKFAC(blocks, self.rest, self.rest_diag.clamp_min(0).sqrt(), self.layout)

    def _inv_sqrt_mm(self, z: Tensor, damping: float) -> Tensor:
        _logdet_of(self._all_scales() + damping, type(self).__name__, damping)
        return self._apply(z, lambda s: (s + damping).rsqrt())


@register
class KFAC(_Kronecker):
    """F ≈ blockdiag(G₁ ⊗ A₁, …) ⊕ diag(rest); each block's ``tensors`` holds ``"A"`` and ``"G"``."""

    keys = ("A", "G")
    #: the dtype its factors' eigendecompositions run in (None: their own; float64 for bf16 / fp16 networks)
    eigh_dtype: torch.dtype | None = None

    def __init__(
        self, blocks: Sequence[KronBlock], rest: Sequence[str], rest_diag: Tensor, layout: ParamLayout
    ) -> None:
        super().__init__(blocks, rest, rest_diag, layout)
        self._eig: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def _basis(self, b: KronBlock) -> tuple[Tensor, Tensor | None, Tensor]:
        key = id(b)
        if key not in self._eig:
            wg, qg = eigh_in(b.tensors["G"], self.eigh_dtype)
            a = b.tensors["A"]
            wa, qa = (a, None) if a.ndim == 1 else eigh_in(a, self.eigh_dtype)
            self._eig[key] = (qg, qa, torch.outer(wg.clamp_min(0), wa.clamp_min(0)))
        return self._eig[key]

    def _mm(self, v: Tensor) -> Tensor:
        out = torch.empty_like(v)
        for b in self.blocks:
            m = b.gather(v, self.layout)
            a = b.tensors["A"]
            gm = b.tensors["G"] @ m
            b.scatter(out, gm * a if a.ndim == 1 else gm @ a, self.layout)
        out[self._rest_index] = self.rest_diag.unsqueeze(-1) * v[self._rest_index]
        return out

    def _diag(self) -> Tensor:
        out = torch.empty(self.p, 1, dtype=self.dtype, device=self.device)
        for b in self.blocks:
            a = b.tensors["A"]
            d = torch.outer(b.tensors["G"].diagonal(), a if a.ndim == 1 else a.diagonal())
            b.scatter(out, d.unsqueeze(0), self.layout)
        out[self._rest_index, 0] = self.rest_diag
        return out[:, 0]

    def _scaled(self, c: float) -> FisherMatrix:
        blocks = [replace(b, tensors={"A": b.tensors["A"], "G": c * b.tensors["G"]}) for b in self.blocks]
        return KFAC(blocks, self.rest, c * self.rest_diag, self.layout)


@register
class EKFAC(_Kronecker):
    """KFAC's eigenbasis with refitted eigenvalues; each block's ``tensors``: ``"QA"``, ``"QG"``, ``"S"``."""

    keys = ("QA", "QG", "S")

    def _basis(self, b: KronBlock) -> tuple[Tensor, Tensor | None, Tensor]:
        return b.tensors["QG"], b.tensors.get("QA"), b.tensors["S"]

    def _scaled(self, c: float) -> FisherMatrix:
        blocks = [replace(b, tensors={**b.tensors, "S": c * b.tensors["S"]}) for b in self.blocks]
        return EKFAC(blocks, self.rest, c * self.rest_diag, self.layout)
