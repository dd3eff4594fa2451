"""The validity radius of the quadratic approximation KL ≈ ½δᵀIδ along a direction.

    radius = the largest t such that |KL(θ, θ+s·u) − ½s²uᵀIu| ≤ rtol·KL(θ, θ+s·u) for all s ≤ t

found by bracketing (doubling, then bisection) against the exact KL. Where no exact KL exists
(Monte Carlo-only models), it is predicted from the cubic Taylor term instead:
relative error ≈ |c₃|t/c₂ ⇒ t ≈ rtol·c₂/|c₃| (``method="cubic"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from . import arguments
from .divergence import kl
from .errors import FisherKLError, ParameterError
from .estimate import Estimate
from .expectation import exact_scheme
from .fisher import fisher
from .model import Model, no_argument_validation, require_model
from .taylor import _delta, kl_taylor_terms


@dataclass(frozen=True)
class ValidityRadius:
    """How far along ``direction`` the quadratic form predicts KL to ``rtol``.

    ``radius`` is in units of the direction (δ = radius·u); ``norm`` = radius·|u|. ``method`` is
    'exact KL' or 'cubic term' (Monte Carlo-only models: seeded, reproducible). ``bound`` says what
    stopped the search: 'rtol' (the error reached rtol), 'boundary' (θ + t·u left the parameter
    space first) or 'none' (the quadratic form stayed within rtol up to t = ``t_max``, e.g. a
    normal's location, where it is exact; the radius is then ``t_max``).
    """

    radius: float
    norm: float
    rtol: float
    method: str
    bound: str
    kl_at_radius: float


def _relative_error(model: Model, theta: Tensor, u: Tensor, t: float, quad: float) -> float | None:
    """|KL − ½t²q|/KL at θ + t·u, or None if θ + t·u is not a valid parameter."""
    step = t * u
    try:
        model.validate(theta + step, "theta + t*direction")
    except ParameterError:
        return None
    exact = float(kl(model, theta, theta + step))  # type: ignore[arg-type]
    if exact <= 0 or not math.isfinite(exact):
        return math.inf
    return abs(exact - 0.5 * t * t * quad) / exact


def validity_radius(
    model: Model,
    theta: Any,
    direction: Any,
    rtol: float = 0.1,
    *,
    t_max: float | None = None,
    iterations: int = 60,
    seed: int = 0,
    n_samples: int = 200_000,
) -> ValidityRadius:
    """The validity radius of ½δᵀIδ at ``theta`` along ``direction`` (see the module docstring)."""
    rtol = arguments.real(rtol, "rtol", low=0.0, high=1.0, low_open=True, high_open=True)
    t_max = arguments.optional_real(t_max, "t_max", low=0.0, low_open=True)
    iterations = arguments.integer(iterations, "iterations", 1, 10_000)
    seed = arguments.integer(seed, "seed", 0, 2**64 - 1)
    n_samples = arguments.integer(n_samples, "n_samples", 2)
    th = require_model(model, "validity_radius").validate(theta)
    if th.ndim != 1:
        raise ParameterError(f"{model.name}: validity_radius takes one θ of shape [{model.dim}], got {tuple(th.shape)}")
    u = _delta(model, th, direction)
    if not bool((u != 0).any()):
        raise ParameterError(f"{model.name}: direction must be non-zero, got {u.tolist()}")
    info = fisher(model, th)
    assert isinstance(info, Tensor)
    quad = float(u @ info @ u)
    if quad <= 0:
        raise FisherKLError(f"{model.name}: uᵀI(θ)u = {quad:g} ≤ 0: the Fisher information is singular along u")
    unit = 1 / math.sqrt(quad)  # t·unit has ½t²uᵀIu ≈ ½
    t_max = 1e6 * unit if t_max is None else t_max
    with no_argument_validation():
        exact_available = model.has_closed_kl(th) or exact_scheme(model.distribution(th)) is not None
    if not exact_available:
        terms = kl_taylor_terms(model, th, u, 3, return_error=True, seed=seed, n_samples=n_samples)
        assert isinstance(terms, Estimate)
        c2, c3 = float(terms.value[2]), float(terms.value[3])
        t = math.inf if c3 == 0 else rtol * c2 / abs(c3)
        t = min(t, t_max)
        return ValidityRadius(t, t * float(u.norm()), rtol, "cubic term", "rtol", c2 * t * t + c3 * t**3)

    good, bad, bound = 0.0, None, "none"
    t = min(1e-3 * unit, t_max)
    while True:
        err = _relative_error(model, th, u, t, quad)
        if err is None or err > rtol:
            bad, bound = t, ("boundary" if err is None else "rtol")
            break
        good = t
        if t >= t_max:
            break
        t = min(2 * t, t_max)
    if bad is None:
        radius = good  # = t_max: within rtol all the way
    else:
        lo, hi = good, bad
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            err = _relative_error(model, th, u, mid, quad)
            if err is None or err > rtol:
                hi, bound = mid, ("boundary" if err is None else "rtol")
            else:
                lo = mid
            if hi - lo <= 1e-9 * hi:
                break
        radius = lo
    kl_r = float(kl(model, th, th + radius * u)) if radius > 0 else 0.0  # type: ignore[arg-type]
    return ValidityRadius(radius, radius * float(u.norm()), rtol, "exact KL", bound, kl_r)
