"""The Cramér–Rao bound: Cov(θ̂) ⪰ I(θ)⁻¹/n for any unbiased estimator from n observations
(attained asymptotically by maximum likelihood: √n(θ̂ − θ) → N(0, I(θ)⁻¹))."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import arguments
from ..errors import FisherKLError
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
    # 1/n as Python's exact int division: n = 10**400 gives 0.0 (the bound underflows), not OverflowError
    return torch.cholesky_inverse(torch.linalg.cholesky(info)) * (1 / n)
