"""Divergences between two members of a model, and their quadratic approximations.

* ``kl(model, θp, θq)`` = KL[p ‖ q] = E_p[log p − log q]
* ``jeffreys(model, θp, θq)`` = KL[p ‖ q] + KL[q ‖ p]
* ``chi2(model, θp, θq)`` = Pearson χ²(q ‖ p) = ∫ (q − p)²/p = E_p[(q/p − 1)²], the intermediate
  form between KL and the Fisher: χ² = δᵀIδ + O(|δ|³) for q = p_{θ+δ}.
* ``kl_quadratic(model, θ, δ)`` = ½ δᵀ I(θ) δ  ≈ KL[p_θ ‖ p_{θ+δ}]
* ``jeffreys_quadratic(model, θ, δ)`` = δᵀ I(θ) δ ≈ Jeffreys(θ, θ+δ) ≈ χ²

``method``: ``"closed"`` (a closed form), ``"exact"`` (finite sum, truncated series or quadrature),
``"mc"`` (Monte Carlo over p with a standard error) or ``"auto"`` (the first of these that
exists). θp and θq broadcast against each other; results have their common batch shape.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .divergence_core import chi2_divergence, kl_divergence
from .errors import ParameterError
from .estimate import Estimate
from .fisher import Method, fisher
from .model import Model, as_parameter_tensor, require_model, validate_pair

DivMethod = Literal["auto", "closed", "exact", "mc"]


def kl(
    model: Model,
    theta_p: Any,
    theta_q: Any,
    *,
    method: DivMethod = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """KL[p_θp ‖ p_θq] = E_p[log p − log q] ≥ 0, shape = the broadcast batch shape."""
    tp, tq = validate_pair(model, theta_p, theta_q)
    est = kl_divergence(model, tp, tq, method, n_samples, seed, generator)
    return est if return_error else est.value


def jeffreys(
    model: Model,
    theta_p: Any,
    theta_q: Any,
    *,
    method: DivMethod = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """Jeffreys divergence KL[p‖q] + KL[q‖p] (symmetric), with errors added."""
    tp, tq = validate_pair(model, theta_p, theta_q)
    a = kl_divergence(model, tp, tq, method, n_samples, seed, generator)
    seed2 = None if seed is None else seed + 1
    b = kl_divergence(model, tq, tp, method, n_samples, seed2, generator)
    est = Estimate(
        a.value + b.value,
        a.error + b.error,
        a.method if a.method == b.method else f"{a.method}+{b.method}",
        a.n_samples,
    )
    return est if return_error else est.value


def chi2(
    model: Model,
    theta_p: Any,
    theta_q: Any,
    *,
    method: DivMethod = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """Pearson χ² = ∫ (q − p)²/p dx = E_p[(q/p − 1)²] (+inf where q is too wide for p).

    Closed for every exponential family and every Gaussian family. A Monte Carlo estimate whose
    variance is infinite (E_p[(q/p)⁴] = ∞) gets error +inf and an UnreliableEstimateWarning.
    """
    tp, tq = validate_pair(model, theta_p, theta_q)
    est = chi2_divergence(model, tp, tq, method, n_samples, seed, generator)
    return est if return_error else est.value


def _quadratic(model: Model, theta: Any, delta: Any, method: Method, at: str = "start") -> Tensor:
    t = require_model(model, "quadratic form").validate(theta)
    d = as_parameter_tensor(delta, "delta", like=t)
    if d.ndim == 0 and model.dim == 1:
        d = d.reshape(1)
    if d.ndim == 0 or d.shape[-1] != model.dim:
        raise ParameterError(f"{model.name}: delta must have last dimension {model.dim}, got shape {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise ParameterError(f"{model.name}: delta must be finite, got {d.tolist()}")
    if at not in ("start", "midpoint"):
        raise ParameterError(f"at must be 'start' or 'midpoint', got {at!r}")
    where = t if at == "start" else model.validate(t + d / 2, "theta + delta/2")
    info = fisher(model, where, method)
    assert isinstance(info, Tensor)
    return torch.einsum("...i,...ij,...j->...", d, info, d)


def kl_quadratic(model: Model, theta: Any, delta: Any, *, method: Method = "auto") -> Tensor:
    """½ δᵀ I(θ) δ, the second-order approximation of KL[p_θ ‖ p_{θ+δ}]."""
    return 0.5 * _quadratic(model, theta, delta, method)


def jeffreys_quadratic(model: Model, theta: Any, delta: Any, *, method: Method = "auto", at: str = "start") -> Tensor:
    """δᵀ I δ, the second-order approximation of Jeffreys(θ, θ+δ) (and of χ²).

    ``at="start"`` uses I(θ): relative error O(|δ|). ``at="midpoint"`` uses I(θ + δ/2): Jeffreys
    is symmetric in its two arguments, so expanding about the midpoint cancels the odd terms and
    the relative error is O(|δ|²) (measured for every smooth family by ``fisherkl.check``).
    """
    return _quadratic(model, theta, delta, method, at)
