"""Dense and diagonal Fisher matrices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import FisherKLError
from .base import FisherMatrix, _check_damping, _logdet_of, check_dense_fits, check_k, dense_solve, register
from .layout import ParamLayout


@register
class Dense(FisherMatrix):
    """F stored as a full ``[p, p]`` matrix."""

    structured_solve = True

    def __init__(self, matrix: Tensor, layout: ParamLayout) -> None:
        check_dense_fits(layout.numel, matrix.dtype, "Dense")
        if tuple(matrix.shape) != (layout.numel, layout.numel):
            raise ValueError(f"Dense: matrix must be [{layout.numel}, {layout.numel}], got {tuple(matrix.shape)}")
        super().__init__(layout, matrix.dtype, matrix.device)
        self.matrix = matrix

    def _mm(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def _diag(self) -> Tensor:
        return self.matrix.diagonal().clone()

    def to_dense(self, max_bytes: int | None = None) -> Tensor:
        check_dense_fits(self.p, self.dtype, "Dense.to_dense", max_bytes)
        return self.matrix.clone()

    def _solve(
        self, b: Tensor, damping: float, rtol: float | None, max_iter: int | None, precond: Any = None
    ) -> Tensor:
        return dense_solve(self.matrix, b, damping)

    def eig(self) -> tuple[Tensor, Tensor]:
        return torch.linalg.eigh(self.matrix)

    def _scaled(self, c: float) -> FisherMatrix:
        return Dense(c * self.matrix, self.layout)

    def _add_same(self, other: FisherMatrix) -> FisherMatrix:
        assert isinstance(other, Dense)
        return Dense(self.matrix + other.matrix, self.layout)

    def _state(self) -> dict[str, Any]:
        return {"matrix": self.matrix}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        return cls(state["matrix"], ParamLayout.from_state(state["layout"]))

    # log det, square root, draws from N(0, (F + λI)⁻¹): by Cholesky / eigendecomposition of the matrix
    def _cholesky(self, damping: float, what: str) -> Tensor:
        damping = _check_damping(damping, what)
        eye = torch.eye(self.p, dtype=self.dtype, device=self.device)
        chol, info = torch.linalg.cholesky_ex(self.matrix + damping * eye)
        if int(info) != 0:
            raise FisherKLError(
                f"Dense.{what}: F + {damping:g}·I is singular or not positive definite; pass damping > 0"
            )
        return chol

    def logdet(self, damping: float = 0.0) -> Tensor:
        return 2 * self._cholesky(damping, "logdet").diagonal().log().sum()

    def sqrt(self) -> FisherMatrix:
        w, q = torch.linalg.eigh(self.matrix)
        return Dense((q * w.clamp_min(0).sqrt()) @ q.T, self.layout)

    def _inv_sqrt_mm(self, z: Tensor, damping: float) -> Tensor:
        # x = L⁻ᵀz has covariance (LLᵀ)⁻¹ = (F + λI)⁻¹
        return torch.linalg.solve_triangular(self._cholesky(damping, "sample").T, z, upper=True)


@register
class Diagonal(FisherMatrix):
    """F ≈ diag(d): the exact diagonal of the Fisher, nothing off it."""

    structured_solve = True

    def __init__(self, diagonal: Tensor, layout: ParamLayout) -> None:
        if tuple(diagonal.shape) != (layout.numel,):
            raise ValueError(f"Diagonal: diagonal must be [{layout.numel}], got {tuple(diagonal.shape)}")
        super().__init__(layout, diagonal.dtype, diagonal.device)
        self.diagonal = diagonal

    def _mm(self, v: Tensor) -> Tensor:
        return self.diagonal.unsqueeze(-1) * v

    def _diag(self) -> Tensor:
        return self.diagonal.clone()

    def _solve(
        self, b: Tensor, damping: float, rtol: float | None, max_iter: int | None, precond: Any = None
    ) -> Tensor:
        d = self.diagonal + damping
        if bool((d <= 0).any()):
            from ..errors import FisherKLError

            raise FisherKLError("solve: the diagonal Fisher has zero entries; pass damping > 0")
        return b / d.unsqueeze(-1)

    def eig(self) -> tuple[Tensor, Tensor]:
        vals, order = torch.sort(self.diagonal)
        return vals, torch.eye(self.p, dtype=self.dtype, device=self.device)[:, order]

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        k = check_k(k, self.p)
        vals, idx = torch.topk(self.diagonal, k)
        vecs = torch.zeros(self.p, k, dtype=self.dtype, device=self.device)
        vecs[idx, torch.arange(k)] = 1
        return vals, vecs

    def _scaled(self, c: float) -> FisherMatrix:
        return Diagonal(c * self.diagonal, self.layout)

    def _add_same(self, other: FisherMatrix) -> FisherMatrix:
        assert isinstance(other, Diagonal)
        return Diagonal(self.diagonal + other.diagonal, self.layout)

    def _state(self) -> dict[str, Any]:
        return {"diagonal": self.diagonal}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        return cls(state["diagonal"], ParamLayout.from_state(state["layout"]))

    def logdet(self, damping: float = 0.0) -> Tensor:
        return _logdet_of(self.diagonal + _check_damping(damping, "logdet"), "Diagonal", float(damping))

    def sqrt(self) -> FisherMatrix:
        return Diagonal(self.diagonal.clamp_min(0).sqrt(), self.layout)

    def _inv_sqrt_mm(self, z: Tensor, damping: float) -> Tensor:
        d = self.diagonal + damping
        _logdet_of(d, "Diagonal", damping)
        return z * d.rsqrt().unsqueeze(-1)
