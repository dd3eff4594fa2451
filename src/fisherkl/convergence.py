"""``check()``: how fast the quadratic forms converge to the divergences they approximate, per family.

For each model at its typical θ and a few random unit directions u, δ = h·u is swept over
h = 10⁻¹ … 10⁻⁴ (float64) and three relative errors are measured:

* ``kl``:       |KL(θ, θ+δ) − ½δᵀI(θ)δ| / KL                      (expected order 1)
* ``jeffreys``: |J(θ, θ+δ) − δᵀI(θ)δ| / J                         (expected order 1)
* ``midpoint``: |J(θ, θ+δ) − δᵀI(θ+δ/2)δ| / J                     (expected order 2)

The fitted order is the least-squares slope of log(error) against log h over the four smallest h
whose error stands above the float64 noise floor: a divergence of size ~h² computed from O(1)
terms carries a rounding error ~ε/h² relative, so points with error < 100·ε/h² are left out.
The validity radius (rtol 0.1) is reported for the first direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import arguments, families
from .agreement import unit_direction
from .divergence import jeffreys, jeffreys_quadratic, kl, kl_quadratic
from .errors import FisherKLError, ParameterError
from .model import Model
from .validity import validity_radius

STEPS: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
EPS64 = 2.220446049250313e-16


@dataclass
class Sweep:
    """Relative errors along one direction; ``steps`` are the |δ| actually used."""

    steps: list[float]
    kl: list[float]
    jeffreys: list[float]
    midpoint: list[float]


@dataclass
class CheckRow:
    name: str
    theta: list[float]
    sweeps: list[Sweep] = field(default_factory=list)
    kl_order: float = math.nan
    jeffreys_order: float = math.nan
    midpoint_order: float = math.nan
    radius: float = math.nan
    radius_bound: str = ""
    note: str = ""


def fitted_order(steps: Sequence[float], errors: Sequence[float], last: int = 4) -> float:
    """Least-squares slope of log(error) vs log(step) over the ``last`` smallest steps above the noise floor."""
    usable = [(h, e) for h, e in zip(steps, errors) if math.isfinite(e) and e > 100 * EPS64 / (h * h)]
    usable = sorted(usable)[:last]
    pts = [(math.log(h), math.log(e)) for h, e in usable]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else math.nan


def _rel(a: Tensor, b: Tensor) -> float:
    a_, b_ = float(a), float(b)
    return abs(a_ - b_) / abs(a_) if a_ != 0 else math.nan


def sweep(model: Model, theta: Tensor, u: Tensor, steps: Sequence[float] = STEPS) -> Sweep:
    """Relative errors of the three quadratic forms at δ = h·u for each h that keeps θ ± δ valid."""
    out = Sweep([], [], [], [])
    for h in steps:
        d = h * u
        try:
            model.validate(theta + d)
            model.validate(theta + d / 2)
        except FisherKLError:
            continue
        k = kl(model, theta, theta + d)
        j = jeffreys(model, theta, theta + d)
        out.steps.append(h)
        out.kl.append(_rel(k, kl_quadratic(model, theta, d)))  # type: ignore[arg-type]
        out.jeffreys.append(_rel(j, jeffreys_quadratic(model, theta, d)))  # type: ignore[arg-type]
        out.midpoint.append(_rel(j, jeffreys_quadratic(model, theta, d, at="midpoint")))  # type: ignore[arg-type]
    return out


def _median(values: Iterable[float]) -> float:
    v = sorted(x for x in values if math.isfinite(x))
    if not v:
        return math.nan
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def check_model(model: Model, theta: Tensor, *, directions: int = 3, seed: int = 0, radius: bool = True) -> CheckRow:
    """The :func:`check` row for one model at one θ."""
    row = CheckRow(model.name, [float(v) for v in theta])
    if not model.regular:
        row.note = "non-regular: no Fisher information"
        return row
    for i in range(directions):
        u = unit_direction(model.dim, seed + i, theta.dtype)
        row.sweeps.append(sweep(model, theta, u))
    row.kl_order = _median(fitted_order(s.steps, s.kl) for s in row.sweeps)
    row.jeffreys_order = _median(fitted_order(s.steps, s.jeffreys) for s in row.sweeps)
    row.midpoint_order = _median(fitted_order(s.steps, s.midpoint) for s in row.sweeps)
    if radius:
        try:
            r = validity_radius(model, theta, unit_direction(model.dim, seed, theta.dtype), 0.1)
            row.radius, row.radius_bound = r.radius, r.bound
        except FisherKLError as exc:
            row.note = str(exc)
    return row


def check(
    models: Iterable[Model] | None = None,
    *,
    directions: int = 3,
    seed: int = 0,
    radius: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[CheckRow]:
    """The convergence table for ``models`` (default: every family at its typical θ)."""
    directions = arguments.integer(directions, "directions", 1, 1000)
    seed = arguments.integer(seed, "seed", 0, 2**63 - 1)
    radius = arguments.flag(radius, "radius")
    if progress is not None and not callable(progress):
        raise ParameterError(f"check: progress must be a callable or None, got {type(progress).__name__}")
    if isinstance(models, Model):
        models = [models]
    if models is not None and not isinstance(models, Iterable):
        raise TypeError(f"check: models must be an iterable of fisherkl models, got {type(models).__name__}")
    if models is None:
        models = [families.family(n) for n in families.names()]
    rows = []
    for m in models:
        if not isinstance(m, Model):
            raise TypeError(
                f"check: models must be fisherkl models (fisherkl.family(name) or fisherkl.Model), got {m!r}"
            )
        if progress is not None:
            progress(m.name)
        theta = m.typical() if hasattr(m, "typical") else None
        if theta is None:
            raise FisherKLError(f"check: model {m.name!r} has no typical θ; call check_model(model, theta)")
        rows.append(check_model(m, theta.to(torch.float64), directions=directions, seed=seed, radius=radius))
    return rows


def format_table(rows: Sequence[CheckRow]) -> str:
    """The rows as a plain-text table."""
    head = f"{'family':<20} {'order KL':>9} {'order J':>8} {'order Jmid':>10} {'err KL@1e-2':>12} {'radius(0.1)':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.sweeps:
            lines.append(f"{r.name:<20} {r.note}")
            continue
        s = r.sweeps[0]
        at = s.kl[s.steps.index(1e-2)] if 1e-2 in s.steps else math.nan
        if math.isnan(r.radius):
            radius = "-"
        else:
            radius = f"{r.radius:.3g}" + ("" if r.radius_bound == "rtol" else f" ({r.radius_bound})")
        orders = f"{r.kl_order:>9.2f} {r.jeffreys_order:>8.2f} {r.midpoint_order:>10.2f}"
        lines.append(f"{r.name:<20} {orders} {at:>12.2e} {radius:>12}")
    return "\n".join(lines)
