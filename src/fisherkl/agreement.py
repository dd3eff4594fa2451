"""How the routes to the Fisher agree with each other, and how well ½δᵀIδ predicts the KL.

This is what ``fisherkl demo`` prints for every family: the seeds' relation checked live.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .divergence import jeffreys, kl
from .errors import FisherKLError
from .estimate import Estimate
from .fisher import available_routes, fisher
from .model import Model


@dataclass
class RouteResult:
    route: str
    method: str  # e.g. "score/quadrature"
    rel_diff: float  # max |I_route − I_ref| / max |I_ref|
    error: float  # stated absolute error (max entry)
    seconds: float


@dataclass
class Agreement:
    name: str
    theta: list[float]
    reference: str
    routes: list[RouteResult] = field(default_factory=list)
    delta_norm: float = 0.0
    kl: float = float("nan")
    kl_quadratic: float = float("nan")
    jeffreys: float = float("nan")
    jeffreys_quadratic: float = float("nan")
    jeffreys_midpoint: float = float("nan")  # Jeffreys(θ − δ/2, θ + δ/2)
    note: str = ""

    @property
    def kl_ratio(self) -> float:
        return self.kl / self.kl_quadratic

    @property
    def jeffreys_ratio(self) -> float:
        return self.jeffreys / self.jeffreys_quadratic

    @property
    def midpoint_ratio(self) -> float:
        return self.jeffreys_midpoint / self.jeffreys_quadratic


def unit_direction(dim: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A reproducible random unit vector in ℝ^dim."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(dim, generator=g, dtype=dtype)
    return u / u.norm()


def agreement(
    model: Model, theta: Tensor, *, delta_norm: float = 1e-3, seed: int = 0, n_samples: int = 200_000
) -> Agreement:
    """Fisher by every available route vs the best one, and KL vs ½δᵀIδ at |δ| = ``delta_norm``."""
    out = Agreement(model.name, [float(v) for v in theta], reference="")
    if not model.regular:
        out.note = "non-regular: no Fisher information"
        return out
    routes = [r.split()[0] for r in available_routes(model, theta)]
    ref: Tensor | None = None
    for route in routes:
        start = time.perf_counter()
        est = fisher(model, theta, route, return_error=True, seed=seed, n_samples=n_samples)  # type: ignore[arg-type]
        seconds = time.perf_counter() - start
        assert isinstance(est, Estimate)
        if ref is None:
            ref, out.reference = est.value, route
        scale = float(ref.abs().max())
        rel = float((est.value - ref).abs().max()) / scale if scale > 0 else 0.0
        out.routes.append(RouteResult(route, est.method, rel, float(est.error.abs().max()), seconds))
    assert ref is not None
    delta = delta_norm * unit_direction(model.dim, seed, theta.dtype)
    # keep θ + δ valid: shrink the step toward θ until the model accepts it
    for _ in range(30):
        try:
            model.validate(theta + delta)
            model.validate(theta - delta / 2)
            break
        except FisherKLError:
            delta = delta / 2
    out.delta_norm = float(delta.norm())
    quad = float(delta @ ref @ delta)
    out.kl_quadratic, out.jeffreys_quadratic = 0.5 * quad, quad
    try:
        out.kl = float(kl(model, theta, theta + delta, seed=seed, n_samples=n_samples))  # type: ignore[arg-type]
        out.jeffreys = float(jeffreys(model, theta, theta + delta, seed=seed, n_samples=n_samples))  # type: ignore[arg-type]
        mid = jeffreys(model, theta - delta / 2, theta + delta / 2, seed=seed, n_samples=n_samples)
        out.jeffreys_midpoint = float(mid)  # type: ignore[arg-type]
    except FisherKLError as exc:
        out.note = str(exc)
    return out


def format_agreement(results: list[Agreement]) -> str:
    """Two plain-text tables: the routes against the reference, and KL against ½δᵀIδ."""
    lines = [f"{'family':<20} {'route':<17} {'computed as':<28} {'max rel diff':>12} {'stated err':>10} {'time':>8}"]
    for a in results:
        if a.note and not a.routes:
            lines.append(f"{a.name:<20} {a.note}")
            continue
        for i, r in enumerate(a.routes):
            label = a.name if i == 0 else ""
            ref = " (reference)" if i == 0 else ""
            err = f"{r.error:>10.1e}" if math.isfinite(r.error) else f"{'n/a':>10}"
            lines.append(
                f"{label:<20} {r.route:<17} {r.method + ref:<28} {r.rel_diff:>12.1e} {err} {r.seconds * 1e3:>6.1f}ms"
            )
    lines.append("")
    lines.append(
        f"{'family':<20} {'|δ|':>8} {'KL':>13} {'½δᵀIδ':>13} {'KL/(½δᵀIδ)':>12} {'J/(δᵀIδ)':>12} {'Jmid/(δᵀIδ)':>13}"
    )
    for a in results:
        if not a.routes:
            continue
        lines.append(
            f"{a.name:<20} {a.delta_norm:>8.1e} {a.kl:>13.6e} {a.kl_quadratic:>13.6e} {a.kl_ratio:>12.6f} "
            f"{a.jeffreys_ratio:>12.8f} {a.midpoint_ratio:>13.10f}"
        )
    lines.append(
        "\nKL(θ, θ+δ) and Jeffreys(θ, θ+δ) differ from their quadratic forms by O(|δ|) relative; Jmid = "
        "Jeffreys(θ−δ/2, θ+δ/2) cancels the odd terms and differs by O(|δ|²)."
    )
    return "\n".join(lines)
