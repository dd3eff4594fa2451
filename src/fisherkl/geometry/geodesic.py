"""Geodesics of the Fisher metric: the distance, the path, log and exponential maps, Christoffel symbols.

``fisher_rao_distance(model, θ₁, θ₂)`` uses a closed form where one is registered
(:mod:`fisherkl.geometry.closed`) and otherwise solves the geodesic boundary-value problem
(:mod:`fisherkl.geometry.solver`) in unconstrained coordinates (:mod:`fisherkl.geometry.chart`).
Shapes: θ₁, θ₂ broadcast to ``[..., d]``; distances ``[...]``; paths ``[steps, ..., d]``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .. import arguments
from ..derivatives import rows_of_jacobian
from ..errors import ConvergenceError, NumericalError, ParameterError, RouteError
from ..fisher import require_regular
from ..guard import finite_or_raise, shown_theta
from ..model import Model, as_parameter_tensor, no_argument_validation, require_model, validate_pair
from .chart import Chart, chart_for, fisher_metric
from .closed import closed_distance
from .solver import GeodesicSolution, metric_terms, solve_geodesic

DistanceMethod = Literal["auto", "closed", "geodesic"]


def _pair(model: Model, theta1: Any, theta2: Any) -> tuple[Tensor, Tensor]:
    t1, t2 = validate_pair(model, theta1, theta2, ("theta1", "theta2"))
    require_regular(model)
    return t1, t2


def _solve(
    model: Model, t1: Tensor, t2: Tensor, degree: int, max_degree: int, rtol: float
) -> tuple[Chart, GeodesicSolution]:
    chart = chart_for(model)
    d = t1.shape[-1]
    with no_argument_validation():
        phi1 = chart.inverse(t1.detach()).reshape(-1, d)
        phi2 = chart.inverse(t2.detach()).reshape(-1, d)
        sol = solve_geodesic(chart.metric, phi1, phi2, degree=degree, max_degree=max_degree, rtol=rtol)
    if not bool(torch.isfinite(sol.length).all()):
        raise ConvergenceError(
            f"{model.name}: the geodesic solver produced a non-finite length; the Fisher information is "
            "not finite along the path (check the model's constraints)"
        )
    return chart, sol


def _path(model: Model, chart: Chart, sol: GeodesicSolution, shape: torch.Size, steps: int) -> Tensor:
    t = torch.linspace(0, 1, steps, dtype=sol.coeffs.dtype, device=sol.coeffs.device)
    with no_argument_validation():
        theta = chart.forward(sol.position(t))
    return theta.reshape(steps, *shape)


def fisher_rao_distance(
    model: Model,
    theta1: Any,
    theta2: Any,
    *,
    method: DistanceMethod = "auto",
    steps: int = 33,
    return_path: bool = False,
    degree: int = 8,
    max_degree: int = 64,
    rtol: float = 1e-10,
) -> Tensor | tuple[Tensor, Tensor]:
    """The Fisher–Rao (geodesic) distance between p(·|θ₁) and p(·|θ₂), ``[...]``.

    d(θ₁, θ₂) = min over paths θ(t) of ∫₀¹ √(θ̇ᵀ I(θ) θ̇) dt.

    ``method``: ``"closed"`` (a registered closed form; RouteError if none), ``"geodesic"`` (the
    numerical boundary-value solver: Legendre degree starting at ``degree``, doubled until the
    length changes by less than ``rtol`` relative, at most ``max_degree``), or ``"auto"`` (closed
    where available, else geodesic). With ``return_path=True`` also returns the geodesic at
    ``steps`` points equally spaced in arc length, ``[steps, ..., d]`` (always from the solver).
    """
    if not isinstance(method, str) or method not in ("auto", "closed", "geodesic"):
        raise RouteError(f"unknown method {method!r}; choose 'auto', 'closed' or 'geodesic'")
    return_path = arguments.flag(return_path, "return_path")
    steps = arguments.integer(steps, "steps", 2)
    degree = arguments.integer(degree, "degree", 1, 4096)
    max_degree = arguments.integer(max_degree, "max_degree", degree, 4096)
    rtol = arguments.real(rtol, "rtol", low=0.0, high=1.0, low_open=True, high_open=True)
    t1, t2 = _pair(model, theta1, theta2)
    dist = None
    if method in ("auto", "closed"):
        with no_argument_validation():
            dist = closed_distance(model, t1, t2)
        if dist is None and method == "closed":
            raise RouteError(
                f"{model.name}: no closed-form Fisher–Rao distance for these parameters; use method='geodesic'"
            )
    if dist is not None:
        finite_or_raise(
            model.name,
            t1,
            dist,
            "the closed-form Fisher–Rao distance",
            "use method='geodesic' or rescale the parameters",
        )
    if dist is not None and not return_path:
        return dist
    chart, sol = _solve(model, t1, t2, degree, max_degree, rtol)
    if dist is None:
        dist = sol.length.reshape(t1.shape[:-1])
    if return_path:
        return dist, _path(model, chart, sol, t1.shape, steps)
    return dist


def geodesic(model: Model, theta1: Any, theta2: Any, steps: int = 33, *, rtol: float = 1e-10) -> Tensor:
    """The geodesic from θ₁ to θ₂ at ``steps`` points equally spaced in arc length, ``[steps, ..., d]``.

    path[0] = θ₁, path[-1] = θ₂; found by the numerical boundary-value solver.
    """
    steps = arguments.integer(steps, "steps", 2)
    rtol = arguments.real(rtol, "rtol", low=0.0, high=1.0, low_open=True, high_open=True)
    t1, t2 = _pair(model, theta1, theta2)
    chart, sol = _solve(model, t1, t2, 8, 64, rtol)
    return _path(model, chart, sol, t1.shape, steps)


def log_map(model: Model, theta1: Any, theta2: Any, *, rtol: float = 1e-10) -> Tensor:
    """The initial velocity v ``[..., d]`` (in θ coordinates) of the geodesic θ(t) from θ₁ (t = 0) to θ₂ (t = 1).

    Its length √(vᵀI(θ₁)v) is the Fisher–Rao distance; ``exp_map(model, θ₁, v)`` returns θ₂.
    """
    rtol = arguments.real(rtol, "rtol", low=0.0, high=1.0, low_open=True, high_open=True)
    t1, t2 = _pair(model, theta1, theta2)
    chart, sol = _solve(model, t1, t2, 8, 64, rtol)
    zero = torch.zeros(1, dtype=sol.coeffs.dtype, device=sol.coeffs.device)
    with no_argument_validation():
        v = chart.to_theta_velocity(sol.phi1, sol.velocity(zero)[0])
    return v.reshape(t1.shape)


def geodesic_acceleration(metric: Any, phi: Tensor, v: Tensor) -> Tensor:
    """φ̈ = −Γ(φ̇, φ̇) = −g⁻¹[(∂_v g) v − ½ ∇(vᵀ g v)] at φ ``[N, d]`` with velocity v ``[N, d]``."""
    g, s1, _, q = metric_terms(metric, phi, v)
    force = (q @ v.unsqueeze(-1)).squeeze(-1) - 0.5 * s1
    return -torch.linalg.solve(g, force)


def exp_map(
    model: Model, theta: Any, velocity: Any, t: float = 1.0, steps: int = 100, *, return_path: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Follow the geodesic from θ with initial velocity v (θ coordinates) for time t: θ(t) ``[..., d]``.

    Integrates θ̈ᵏ + Γᵏᵢⱼ θ̇ⁱ θ̇ʲ = 0 by classical RK4 with ``steps`` steps, in the model's unconstrained
    coordinates (so the path cannot leave the parameter domain). ``return_path=True`` also returns the
    ``steps + 1`` points visited, ``[steps + 1, ..., d]``.
    """
    theta = require_model(model, "exp_map").validate(theta)
    require_regular(model)
    t = arguments.real(t, "t")
    steps = arguments.integer(steps, "steps", 1)
    return_path = arguments.flag(return_path, "return_path")
    v = as_parameter_tensor(velocity, "velocity", like=theta)
    if v.ndim == 0 and model.dim == 1:
        v = v.reshape(1)
    if v.ndim == 0 or v.shape[-1] != model.dim:
        raise ParameterError(f"{model.name}: velocity must have last dimension {model.dim}, got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ParameterError(f"{model.name}: velocity must be finite")
    try:
        theta, v = torch.broadcast_tensors(theta, v)
    except RuntimeError:
        raise ParameterError(
            f"{model.name}: theta {tuple(theta.shape)} and velocity {tuple(v.shape)} do not broadcast"
        ) from None
    d = theta.shape[-1]
    chart = chart_for(model)
    with no_argument_validation():
        phi = chart.inverse(theta.detach()).reshape(-1, d)
        w = chart.to_phi_velocity(phi, v.detach().reshape(-1, d))
        h = float(t) / steps
        points = [phi]

        def rhs(p: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
            return u, geodesic_acceleration(chart.metric, p, u)

        for _ in range(steps):
            k1p, k1v = rhs(phi, w)
            k2p, k2v = rhs(phi + 0.5 * h * k1p, w + 0.5 * h * k1v)
            k3p, k3v = rhs(phi + 0.5 * h * k2p, w + 0.5 * h * k2v)
            k4p, k4v = rhs(phi + h * k3p, w + h * k3v)
            phi = phi + h / 6 * (k1p + 2 * k2p + 2 * k3p + k4p)
            w = w + h / 6 * (k1v + 2 * k2v + 2 * k3v + k4v)
            points.append(phi)
        if not bool(torch.isfinite(phi).all()):
            raise ConvergenceError(
                f"{model.name}: the geodesic left every finite chart before t = {t:g} (or the metric is not finite "
                f"along it); try a smaller t or more steps"
            )
        end = chart.forward(phi).reshape(theta.shape)
        if return_path:
            return end, chart.forward(torch.stack(points)).reshape(steps + 1, *theta.shape)
    return end


def christoffel(model: Model, theta: Any) -> Tensor:
    """Christoffel symbols of the second kind Γᵏᵢⱼ ``[..., k, i, j]`` of the Fisher metric at θ.

    Γᵏᵢⱼ = ½ gᵏˡ (∂ᵢ g_jl + ∂ⱼ g_il − ∂ₗ g_ij), with ∂g by autodiff of I(θ) (d² backward passes).
    Where the model has a location–scale or scale symmetry (``model.standard_point``: θ′ ↦ θ₀ + J(θ′ − θ) is
    an isometry), Γ is taken at θ₀ and carried back, Γ(θ) = J⁻¹ Γ(θ₀)[J·, J·], so that a scale of 1e150 does
    not overflow the metric's derivatives.
    """
    theta = require_model(model, "christoffel").validate(theta)
    require_regular(model)
    standard = model.standard_point(theta.detach())
    if standard is not None:
        theta0, jac = standard
        gamma0 = _christoffel(model, theta0)
        inv = torch.linalg.inv(jac)
        gamma = torch.einsum("...ka,...abc,...bi,...cj->...kij", inv, gamma0, jac, jac)
        return finite_or_raise(model.name, theta, gamma, "the Christoffel symbols", "rescale the parameters")
    size = theta.detach().abs()
    limit = 1e100 if theta.dtype == torch.float64 else 1e12
    if bool(((size > limit) | ((size < 1 / limit) & (size > 0))).any()):
        raise NumericalError(
            f"{model.name}: Christoffel symbols at theta = {shown_theta(theta)}: the metric's derivatives (powers "
            f"of θ such as 1/θ² and 1/θ³) leave the range of {theta.dtype} beyond |θ| = {limit:g} or below "
            f"{1 / limit:g}, so autodiff would return 0 or inf; rescale the parameters (fisherkl.reparametrize)"
        )
    return _christoffel(model, theta)


def _christoffel(model: Model, theta: Tensor) -> Tensor:
    d = theta.shape[-1]
    metric = fisher_metric(model)
    x = theta.detach().reshape(-1, d).requires_grad_(True)
    with torch.enable_grad(), no_argument_validation():
        g = metric(x)
        dg = rows_of_jacobian(g.reshape(-1, d * d), x, False)  # [N, (i j), l] = ∂ₗ g_ij
    dg = dg.reshape(-1, d, d, d)  # [N, i, j, l]
    first = 0.5 * (dg.permute(0, 3, 1, 2) + dg.permute(0, 1, 3, 2) - dg)
    # first[n, i, j, l] = ½(∂ᵢ g_jl + ∂ⱼ g_il − ∂ₗ g_ij)
    hint = "θ is too close to the edge of the parameter space for the metric's derivatives in this dtype"
    finite_or_raise(model.name, theta, g, "the Fisher metric", hint)
    finite_or_raise(model.name, theta, first, "the derivatives of the Fisher metric", hint)
    inv, info = torch.linalg.inv_ex(g.detach())
    if bool((info != 0).any()):
        raise ParameterError(
            f"{model.name}: the Fisher information is singular at theta, so the Christoffel symbols do not exist"
        )
    gamma = torch.einsum("nkl,nijl->nkij", inv, first)
    finite_or_raise(model.name, theta, gamma, "the Christoffel symbols", hint)
    return gamma.reshape(*theta.shape[:-1], d, d, d)
