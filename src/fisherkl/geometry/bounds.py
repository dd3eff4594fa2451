"""The Cramér–Rao bound: Cov(θ̂) ⪰ I(θ)⁻¹/n for any unbiased estimator from n observations
(attained asymptotically by maximum likelihood: √n(θ̂ − θ) → N(0, I(θ)⁻¹))."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from .. import arguments
from ..errors import FisherKLError, NumericalError
from ..fisher import fisher
from ..model import Model, require_model


def _direction(model: Model, vec: Tensor) -> str:
    vec = vec / vec.abs().max()
    terms = [f"{float(c):+.3g}·{name}" for c, name in zip(vec, model.names) if abs(float(c)) > 1e-3]
    return " ".join(terms).lstrip("+")


def cramer_rao(model: Model, theta: Any, n: int = 1, *, rcond: float | None = None) -> Tensor:
    """I(θ)⁻¹/n ``[..., d, d]``: the smallest covariance an unbiased estimator from n observations can have.

    Raises :class:`FisherKLError` when I(θ) is singular (relative eigenvalue ≤ ``rcond``, default
    d·machine-epsilon·100), naming the unidentifiable direction: the eigenvector of the smallest
    eigenvalue, in the model's parameter names.
    """
    n = arguments.integer(n, "n (the number of observations)", 1)
    rcond = arguments.optional_real(rcond, "rcond", low=0.0, high=1.0, high_open=True)
    theta = require_model(model, "cramer_rao").validate(theta)
    info = fisher(model, theta)
    d = info.shape[-1]
    if rcond is None:
        rcond = 100 * d * torch.finfo(info.dtype).eps
    eig, vecs = torch.linalg.eigh(0.5 * (info + info.transpose(-1, -2)))
    top = eig[..., -1].abs()
    bad = eig[..., 0] <= rcond * top
    if bool(bad.any()):
        where = bad.nonzero()[0].tolist() if bad.ndim else []
        idx = tuple(where)
        direction = _direction(model, vecs[idx][..., :, 0])
        at = f" at theta index {idx}" if where else ""
        raise FisherKLError(
            f"{model.name}: the Fisher information is singular{at} (eigenvalues {eig[idx].tolist()}), so the "
            f"Cramér–Rao bound is infinite: the direction {direction} is not identifiable from the data"
        )
    chol, failed = torch.linalg.cholesky_ex(info)
    if bool((failed != 0).any()):
        raise NumericalError(
            f"{model.name}: the Fisher information at theta is too ill-conditioned in {info.dtype} to invert "
            "(its Cholesky factorisation failed), so the Cramér–Rao bound cannot be computed there; use float64 "
            "or parameters of a more moderate size"
        )
    inverse = torch.cholesky_inverse(chol)
    if n <= 2**1000:
        return inverse / n
    # n beyond float64 (10**400): each entry divided exactly as a rational, then rounded once
    values = [float(Fraction(v) / n) for v in inverse.reshape(-1).tolist()]
    return torch.tensor(values, dtype=inverse.dtype, device=inverse.device).reshape(inverse.shape)
