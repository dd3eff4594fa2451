"""Matrix-free Fisher matrices: products F·V computed on demand, never the matrix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..errors import FisherKLError, ParameterError
from .base import FisherMatrix, check_k, conjugate_gradient, lanczos_topk
from .layout import ParamLayout


class Implicit(FisherMatrix):
    """F given by a function computing F @ V for columns V ``[p, k]``.

    For a network (:func:`fisherkl.nn.fisher` with ``representation="implicit"``) each product is a
    pass over all the data: jvp → head Fisher → vjp. ``diag_fn`` (optional) computes the exact
    diagonal by another route; without it the diagonal takes p products. ``solve`` uses conjugate
    gradients and ``topk`` Lanczos, so neither forms the matrix. Cannot be saved as a state_dict:
    convert it (``Dense(F.to_dense(), F.layout)``, ``lowrank_of(F, k)``) first.
    """

    def __init__(
        self,
        mm: Callable[[Tensor], Tensor],
        layout: ParamLayout,
        dtype: object,
        device: object = "cpu",
        diag_fn: Callable[[], Tensor] | None = None,
        scale: float = 1.0,
    ) -> None:
        super().__init__(layout, dtype, device)  # type: ignore[arg-type]
        self._fn, self._diag_fn, self.scale = mm, diag_fn, float(scale)
        self.n_products = 0

    def _mm(self, v: Tensor) -> Tensor:
        self.n_products += v.shape[1]
        out = self._fn(v)
        return out if self.scale == 1.0 else self.scale * out

    def _diag(self) -> Tensor:
        if self._diag_fn is not None:
            d = self._diag_fn()
            return d if self.scale == 1.0 else self.scale * d
        return self.to_dense().diagonal().clone()

    def _solve(
        self, b: Tensor, damping: float, rtol: float | None, max_iter: int | None, precond: Any = None
    ) -> Tensor:
        if damping <= 0:
            raise FisherKLError("solve: pass damping > 0 for an implicit Fisher (conjugate gradients on F + damping·I)")
        return conjugate_gradient(self._mm, b, damping, rtol, max_iter, precond)

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        k = check_k(k, self.p - 1, "topk (an implicit Fisher: Lanczos, k < p)")
        return lanczos_topk(self, k)

    def relabel(self, layout: ParamLayout) -> FisherMatrix:
        if layout.shapes != self.layout.shapes:
            raise FisherKLError("relabel: the layouts' parameter shapes differ")
        return Implicit(self._fn, layout, self.dtype, self.device, self._diag_fn, self.scale)

    def _scaled(self, c: float) -> FisherMatrix:
        return Implicit(self._fn, self.layout, self.dtype, self.device, self._diag_fn, self.scale * c)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> FisherMatrix:
        """The same products in another dtype / on another device (vectors are converted on the way in and out)."""
        dtype = self.dtype if dtype is None else dtype
        device = self.device if device is None else torch.device(device)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ParameterError(f"Implicit.to: dtype must be a floating torch.dtype, got {dtype!r}")
        if dtype == self.dtype and device == self.device:
            return self
        src_dtype, src_device, fn, diag_fn = self.dtype, self.device, self._fn, self._diag_fn

        def mm(v: Tensor) -> Tensor:
            return fn(v.to(dtype=src_dtype, device=src_device)).to(dtype=dtype, device=device)

        def diag() -> Tensor:
            assert diag_fn is not None
            return diag_fn().to(dtype=dtype, device=device)

        return Implicit(mm, self.layout, dtype, device, diag if diag_fn is not None else None, self.scale)
