"""Block-diagonal Fisher matrices: one dense block per group of parameters (e.g. per layer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import FisherKLError, ParameterError
from .base import FisherMatrix, _check_damping, check_k, dense_solve, register
from .layout import ParamLayout


@register
class BlockDiagonal(FisherMatrix):
    """F ≈ blockdiag(F₁, …, F_m): ``groups[i]`` names the parameters of block i (flat order within
    the block follows the names), ``blocks[i]`` is that block ``[pᵢ, pᵢ]``. Every parameter is in
    exactly one group."""

    structured_solve = True

    def __init__(self, groups: Sequence[Sequence[str]], blocks: Sequence[Tensor], layout: ParamLayout) -> None:
        seen = [n for g in groups for n in g]
        if sorted(seen) != sorted(layout.names) or len(groups) != len(blocks):
            raise ParameterError("BlockDiagonal: the groups must cover every parameter exactly once, one block each")
        super().__init__(layout, blocks[0].dtype, blocks[0].device)
        self.groups = [list(g) for g in groups]
        self.blocks = list(blocks)
        self._index = [layout.indices(g, self.device) for g in self.groups]
        for g, idx, b in zip(self.groups, self._index, self.blocks):
            if tuple(b.shape) != (len(idx), len(idx)):
                raise ParameterError(
                    f"BlockDiagonal: block for {g} must be [{len(idx)}, {len(idx)}], got {tuple(b.shape)}"
                )

    def _mm(self, v: Tensor) -> Tensor:
        out = torch.empty_like(v)
        for idx, b in zip(self._index, self.blocks):
            out[idx] = b @ v[idx]
        return out

    def _diag(self) -> Tensor:
        out = torch.empty(self.p, dtype=self.dtype, device=self.device)
        for idx, b in zip(self._index, self.blocks):
            out[idx] = b.diagonal()
        return out

    def _solve(
        self, b: Tensor, damping: float, rtol: float | None, max_iter: int | None, precond: Any = None
    ) -> Tensor:
        out = torch.empty_like(b)
        for idx, blk in zip(self._index, self.blocks):
            out[idx] = dense_solve(blk, b[idx], damping)
        return out

    def eig(self) -> tuple[Tensor, Tensor]:
        vals, vecs = [], torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        at = 0
        for idx, blk in zip(self._index, self.blocks):
            w, q = torch.linalg.eigh(blk)
            vals.append(w)
            vecs[idx, at : at + len(idx)] = q
            at += len(idx)
        w = torch.cat(vals)
        w, order = torch.sort(w)
        return w, vecs[:, order]

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        k = check_k(k, self.p)
        pairs = [(torch.linalg.eigh(blk), idx) for idx, blk in zip(self._index, self.blocks)]
        vals = torch.cat([w for (w, _), _ in pairs])
        top = torch.topk(vals, k).indices
        vecs = torch.zeros(self.p, k, dtype=self.dtype, device=self.device)
        starts, at = [], 0
        for (w, _), _ in pairs:
            starts.append(at)
            at += len(w)
        for col, i in enumerate(top.tolist()):
            j = max(b for b, s in enumerate(starts) if s <= i)
            (_, q), idx = pairs[j]
            vecs[idx, col] = q[:, i - starts[j]]
        return vals[top], vecs

    def _scaled(self, c: float) -> FisherMatrix:
        return BlockDiagonal(self.groups, [c * b for b in self.blocks], self.layout)

    def _add_same(self, other: FisherMatrix) -> FisherMatrix | None:
        assert isinstance(other, BlockDiagonal)
        if other.groups != self.groups:
            return None
        return BlockDiagonal(self.groups, [a + b for a, b in zip(self.blocks, other.blocks)], self.layout)

    def _state(self) -> dict[str, Any]:
        return {"groups": self.groups, "blocks": self.blocks}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        return cls(state["groups"], state["blocks"], ParamLayout.from_state(state["layout"]))

    # block by block: log det = Σ log det(Fᵢ + λI), F^{1/2} = blockdiag(Fᵢ^{1/2}), draws by each block's Cholesky
    def _choleskys(self, damping: float, what: str) -> list[Tensor]:
        damping = _check_damping(damping, what)
        out = []
        for g, blk in zip(self.groups, self.blocks):
            eye = torch.eye(blk.shape[0], dtype=self.dtype, device=self.device)
            chol, info = torch.linalg.cholesky_ex(blk + damping * eye)
            if int(info) != 0:
                raise FisherKLError(
                    f"BlockDiagonal.{what}: the block of {', '.join(g)} plus {damping:g}·I is singular; "
                    "pass damping > 0"
                )
            out.append(chol)
        return out

    def logdet(self, damping: float = 0.0) -> Tensor:
        return sum((2 * c.diagonal().log().sum() for c in self._choleskys(damping, "logdet")), torch.zeros(()))

    def sqrt(self) -> FisherMatrix:
        roots = []
        for blk in self.blocks:
            w, q = torch.linalg.eigh(blk)
            roots.append((q * w.clamp_min(0).sqrt()) @ q.T)
        return BlockDiagonal(self.groups, roots, self.layout)

    def _inv_sqrt_mm(self, z: Tensor, damping: float) -> Tensor:
        out = torch.empty_like(z)
        for idx, chol in zip(self._index, self._choleskys(damping, "sample")):
            out[idx] = torch.linalg.solve_triangular(chol.T, z[idx], upper=True)
        return out
