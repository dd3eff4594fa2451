"""Low-rank Fisher matrices: the top-k eigenpairs, F ≈ U diag(λ) Uᵀ."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import FisherKLError, ParameterError
from .base import FisherMatrix, _check_damping, _logdet_of, check_k, register
from .layout import ParamLayout


@register
class LowRank(FisherMatrix):
    """F ≈ U diag(λ) Uᵀ with orthonormal columns U ``[p, k]`` and eigenvalues λ ``[k]`` (descending)."""

    structured_solve = True

    def __init__(self, values: Tensor, vectors: Tensor, layout: ParamLayout) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != layout.numel or values.shape != (vectors.shape[1],):
            raise ParameterError(
                f"LowRank: need values [k] and vectors [{layout.numel}, k], "
                f"got {tuple(values.shape)} and {tuple(vectors.shape)}"
            )
        super().__init__(layout, vectors.dtype, vectors.device)
        self.values, self.vectors = values, vectors

    @property
    def rank(self) -> int:
        return int(self.values.numel())

    def _mm(self, v: Tensor) -> Tensor:
        return self.vectors @ (self.values.unsqueeze(-1) * (self.vectors.T @ v))

    def _diag(self) -> Tensor:
        return (self.vectors * self.vectors) @ self.values

    def _solve(
        self, b: Tensor, damping: float, rtol: float | None, max_iter: int | None, precond: Any = None
    ) -> Tensor:
        if damping <= 0:
            raise FisherKLError("solve: a low-rank Fisher is singular off its k eigenvectors; pass damping > 0")
        # U diag(1/(λ + d)) Uᵀb + (b − UUᵀb)/d: the same as b/d + U[1/(λ + d) − 1/d]Uᵀb without the
        # cancellation of two huge terms when d is tiny (damping = 1e-300 gave NaN)
        proj = self.vectors.T @ b
        inside = self.vectors @ (proj / (self.values + damping).unsqueeze(-1))
        return inside + (b - self.vectors @ proj) / damping

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        k = check_k(k, self.rank, "topk (at most the stored rank)")
        return self.values[:k].clone(), self.vectors[:, :k].clone()

    def _scaled(self, c: float) -> FisherMatrix:
        return LowRank(c * self.values, self.vectors, self.layout)

    def _state(self) -> dict[str, Any]:
        return {"values": self.values, "vectors": self.vectors}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        return cls(state["values"], state["vectors"], ParamLayout.from_state(state["layout"]))

    # F + λI = U diag(λᵢ + λ) Uᵀ + λ(I − UUᵀ): eigenvalues λᵢ + λ on span U, λ on the p − k others
    def _spectrum(self, damping: float) -> Tensor:
        rest = torch.full((self.p - self.rank,), damping, dtype=self.dtype, device=self.device)
        return torch.cat([self.values + damping, rest])

    def logdet(self, damping: float = 0.0) -> Tensor:
        damping = _check_damping(damping, "logdet")
        return _logdet_of(self._spectrum(damping), "LowRank", damping)

    def sqrt(self) -> FisherMatrix:
        return LowRank(self.values.clamp_min(0).sqrt(), self.vectors, self.layout)

    def _inv_sqrt_mm(self, z: Tensor, damping: float) -> Tensor:
        _logdet_of(self._spectrum(damping), "LowRank", damping)
        if self.rank == self.p:
            return self.vectors @ ((self.values + damping).rsqrt().unsqueeze(-1) * (self.vectors.T @ z))
        coef = (self.values + damping).rsqrt() - 1 / math.sqrt(damping)
        return z / math.sqrt(damping) + self.vectors @ (coef.unsqueeze(-1) * (self.vectors.T @ z))


def lowrank_of(f: FisherMatrix, k: int) -> LowRank:
    """The best rank-k approximation of ``f`` (its top-k eigenpairs)."""
    vals, vecs = f.topk(k)
    return LowRank(vals.clamp_min(0), vecs, f.layout)
