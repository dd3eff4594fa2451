"""The validity radius of ½δᵀIδ, the midpoint Jeffreys form, and `check()`, against independent oracles.

Oracles: KL, Jeffreys and Fisher formulas written out here in numpy/scipy (not taken from fisherkl), a
brute-force scan of the relative error on a fine logarithmic grid refined by brentq, and scipy quadrature
for a Monte Carlo-only user model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.distributions as D
from scipy import integrate, optimize
from scipy import special as sps

import fisherkl as fk
from fisherkl import families
from fisherkl.agreement import unit_direction
from fisherkl.constraints import positive, real
from fisherkl.convergence import STEPS, CheckRow, Sweep, check, check_model, fitted_order, format_table
from fisherkl.errors import FisherKLError, ParameterError
from fisherkl.validity import ValidityRadius, validity_radius

F64 = torch.float64


def t64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# --- independent formulas: KL(θ₁ ‖ θ₂), Fisher I(θ), parameter domain ---------------------------------------


def normal_kl(a, b):
    (m1, s1), (m2, s2) = a, b
    return np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5


def poisson_kl(a, b):
    return a[0] * np.log(a[0] / b[0]) + b[0] - a[0]


def exponential_kl(a, b):
    return np.log(a[0] / b[0]) + b[0] / a[0] - 1


def bernoulli_kl(a, b):
    p, q = a[0], b[0]
    return p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))


def gamma_kl(a, b):
    (a1, b1), (a2, b2) = a, b
    return (
        (a1 - a2) * sps.digamma(a1)
        - sps.gammaln(a1)
        + sps.gammaln(a2)
        + a2 * (np.log(b1) - np.log(b2))
        + a1 * (b2 - b1) / b1
    )


def beta_kl(a, b):
    (a1, b1), (a2, b2) = a, b
    return (
        sps.betaln(a2, b2)
        - sps.betaln(a1, b1)
        + (a1 - a2) * sps.digamma(a1)
        + (b1 - b2) * sps.digamma(b1)
        + (a2 - a1 + b2 - b1) * sps.digamma(a1 + b1)
    )


def negbin_kl(a, b, r=5.0):
    # successes before the r-th failure, success probability p: E[k] = rp/(1−p)
    p, q = a[0], b[0]
    return r * p / (1 - p) * np.log(p / q) + r * np.log((1 - p) / (1 - q))


def vonmises_kl(a, b):
    (m1, k1), (m2, k2) = a, b
    big_a = sps.i1e(k1) / sps.i0e(k1)
    log_i0 = lambda k: np.log(sps.i0e(k)) + k  # noqa: E731
    return log_i0(k2) - log_i0(k1) + big_a * (k1 - k2 * np.cos(m1 - m2))


def _trigamma(x):
    return sps.polygamma(1, x)


FISHER: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "normal": lambda t: np.diag([1 / t[1] ** 2, 2 / t[1] ** 2]),
    "poisson": lambda t: np.array([[1 / t[0]]]),
    "exponential": lambda t: np.array([[1 / t[0] ** 2]]),
    "bernoulli": lambda t: np.array([[1 / (t[0] * (1 - t[0]))]]),
    "gamma": lambda t: np.array([[_trigamma(t[0]), -1 / t[1]], [-1 / t[1], t[0] / t[1] ** 2]]),
    "beta": lambda t: np.array(
        [
            [_trigamma(t[0]) - _trigamma(t[0] + t[1]), -_trigamma(t[0] + t[1])],
            [-_trigamma(t[0] + t[1]), _trigamma(t[1]) - _trigamma(t[0] + t[1])],
        ]
    ),
    "negativebinomial": lambda t: np.array([[5.0 / (t[0] * (1 - t[0]) ** 2)]]),
    "vonmises": lambda t: np.diag(
        [t[1] * sps.i1e(t[1]) / sps.i0e(t[1]), 1 - (a := sps.i1e(t[1]) / sps.i0e(t[1])) / t[1] - a * a]
    ),
}
KL = {
    "normal": normal_kl,
    "poisson": poisson_kl,
    "exponential": exponential_kl,
    "bernoulli": bernoulli_kl,
    "gamma": gamma_kl,
    "beta": beta_kl,
    "negativebinomial": negbin_kl,
    "vonmises": vonmises_kl,
}
UNIT_INTERVAL = {"bernoulli", "negativebinomial"}


def in_domain(name: str, theta: np.ndarray) -> bool:
    if name in UNIT_INTERVAL:
        return bool(0 < theta[0] < 1)
    if name in ("normal", "vonmises"):
        return bool(theta[1] > 0)
    return bool(np.all(theta > 0))


# --- 3. validity radius vs a brute-force scan ------------------------------------------------------------


def brute_radius(name: str, theta, u, rtol: float, span: float = 1e4, n: int = 100_001) -> tuple[float, str]:
    """First t where |KL − ½t²uᵀIu| > rtol·KL (or θ + t·u leaves the domain), on a log grid, then brentq."""
    theta, u = np.asarray(theta, float), np.asarray(u, float)
    q = float(u @ FISHER[name](theta) @ u)
    kl = KL[name]

    def excess(t: float) -> float:
        k = kl(theta, theta + t * u)
        return abs(k - 0.5 * t * t * q) - rtol * k

    ts = np.geomspace(1e-4 / math.sqrt(q), span / math.sqrt(q), n)
    prev = 0.0
    for t in ts:  # vectorising would need every formula to broadcast; 1e5 scalar evaluations are cheap enough
        if not in_domain(name, theta + t * u):
            lo, hi = prev, t
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if in_domain(name, theta + mid * u) else (lo, mid)
            return hi, "boundary"
        if not excess(t) <= 0:
            return optimize.brentq(excess, prev, t, xtol=1e-15, rtol=1e-13), "rtol"
        prev = t
    return prev, "none"


BRUTE_CASES = [
    ("normal", (0.5, 1.5), (0.6, 0.8), 0.1),
    ("normal", (0.5, 1.5), (0.6, -0.8), 0.05),
    ("poisson", (3.5,), (1.0,), 0.1),
    ("poisson", (3.5,), (-1.0,), 0.1),
    ("exponential", (1.7,), (1.0,), 0.1),
    ("bernoulli", (0.3,), (1.0,), 0.1),
    ("gamma", (2.5, 1.7), (0.6, -0.8), 0.1),
    ("beta", (2.0, 3.0), (0.6, 0.8), 0.2),
    ("vonmises", (0.3, 2.0), (0.6, 0.8), 0.1),
    ("vonmises", (0.3, 2.0), (0.0, -1.0), 0.5),  # error stays ≤ 0.43 until κ → 0: a genuine boundary
]


@pytest.mark.parametrize(("name", "theta", "u", "rtol"), BRUTE_CASES)
def test_radius_matches_a_brute_force_scan(name, theta, u, rtol):
    r = validity_radius(families.family(name), t64(*theta), t64(*u), rtol)
    expected, bound = brute_radius(name, theta, u, rtol)
    assert isinstance(r, ValidityRadius)
    assert (r.method, r.rtol) == ("exact KL", rtol)
    assert r.radius == pytest.approx(expected, rel=1e-8), (r, expected, bound)  # measured ≤ 7e-10
    assert r.bound == bound
    assert r.norm == pytest.approx(r.radius * math.hypot(*u), rel=1e-12)
    th, uu = np.array(theta), np.array(u)
    assert r.kl_at_radius == pytest.approx(KL[name](th, th + r.radius * uu), rel=1e-7)


@pytest.mark.parametrize(
    ("name", "theta", "u", "rtol"),
    [
        ("bernoulli", (0.9,), (1.0,), 0.9),  # crosses rtol at t = 0.09985, the boundary is at 0.1
        ("negativebinomial", (0.4,), (1.0,), 0.1),  # the catalogue's typical θ: crosses at 0.3787, boundary at 0.6
    ],
)
def test_bound_says_rtol_when_the_error_reached_rtol_before_the_boundary(name, theta, u, rtol):
    """Bug: when the doubling search first lands outside the parameter space, the bisection finds the rtol
    crossing correctly but the result keeps bound='boundary' (validity.py sets `bound` only while doubling).
    The same mislabel shows in check()/the report for negativebinomial, multinomial (seed 1), dirichlet (seed 2)."""
    r = validity_radius(families.family(name), t64(*theta), t64(*u), rtol)
    expected, bound = brute_radius(name, theta, u, rtol)
    assert bound == "rtol"
    assert r.radius == pytest.approx(expected, rel=1e-6)
    assert r.bound == "rtol", f"radius {r.radius:.6g} < boundary, but bound={r.bound!r}"


def test_boundary_radius_is_the_edge_of_the_parameter_space():
    r = validity_radius(families.family("vonmises"), t64(0.3, 2.0), t64(0.0, -1.0), 0.5)
    assert r.bound == "boundary"
    assert r.radius == pytest.approx(2.0, rel=1e-8) and r.radius <= 2.0


def test_normal_along_the_location_is_never_limited():
    """KL = ½δᵀIδ exactly along the normal's location: the search runs out at t_max with bound='none'."""
    r = validity_radius(families.family("normal"), t64(0.5, 1.5), t64(1.0, 0.0), 0.1, t_max=50.0)
    assert (r.bound, r.method) == ("none", "exact KL")
    assert 0 < r.radius <= 50.0
    assert r.kl_at_radius == pytest.approx(r.radius**2 / (2 * 1.5**2), rel=1e-12)


def test_unlimited_radius_reaches_t_max():
    """The docstring: bound 'none' means "the quadratic form stayed within rtol up to t = t_max", and the radius
    is the largest such t. Bug (minor): the radius returned is the last doubling point ≤ t_max, not t_max
    (49.152 for t_max = 50; ~0.54·t_max with the default t_max = 1e6/√(uᵀIu))."""
    r = validity_radius(families.family("normal"), t64(0.5, 1.5), t64(1.0, 0.0), 0.1, t_max=50.0)
    assert r.radius == pytest.approx(50.0, rel=1e-9)


def test_rtol_and_the_radius_scale_with_the_direction():
    m, theta = families.family("gamma"), t64(2.5, 1.7)
    u = t64(0.6, -0.8)
    small, large = (validity_radius(m, theta, u, r) for r in (0.02, 0.2))
    assert small.radius < large.radius
    # t is in units of u: doubling u halves t and leaves the step t·u (and the KL there) unchanged
    double = validity_radius(m, theta, 2 * u, 0.02)
    assert double.radius == pytest.approx(small.radius / 2, rel=1e-7)
    assert double.norm == pytest.approx(small.norm, rel=1e-7)
    assert double.kl_at_radius == pytest.approx(small.kl_at_radius, rel=1e-6)


def test_bad_arguments():
    m = families.family("normal")
    for rtol in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(ParameterError, match="rtol"):
            validity_radius(m, t64(0.5, 1.5), t64(1.0, 0.0), rtol)
    with pytest.raises(ParameterError, match="one"):
        validity_radius(m, t64(0.5, 1.5).repeat(2, 1), t64(1.0, 0.0))
    with pytest.raises(ParameterError, match="direction must be non-zero"):
        validity_radius(m, t64(0.5, 1.5), t64(0.0, 0.0))
    with pytest.raises(ParameterError):
        validity_radius(m, t64(0.5, -1.5), t64(1.0, 0.0))


# --- the cubic-term radius of a Monte Carlo-only model ----------------------------------------------------

NU = 5.0


def student2d() -> fk.Model:
    """x ∈ ℝ², two independent Student-t(ν=5, loc, scale): no closed KL, no exact scheme (2-D event)."""

    def fn(t: torch.Tensor) -> D.Distribution:
        loc = t[..., 0:1].expand(*t.shape[:-1], 2)
        scale = t[..., 1:2].expand(*t.shape[:-1], 2)
        return D.Independent(D.StudentT(torch.full_like(loc, NU), loc, scale), 1)

    return fk.Model(fn, 2, names=["loc", "scale"], constraints=[real, positive], name="student2d")


def _student_logpdf(x, loc, scale):
    z = (x - loc) / scale
    return (
        sps.gammaln((NU + 1) / 2)
        - sps.gammaln(NU / 2)
        - 0.5 * math.log(NU * math.pi)
        - math.log(scale)
        - (NU + 1) / 2 * math.log1p(z * z / NU)
    )


def student2d_kl(a, b) -> float:
    """2 × the 1-D Student-t KL, by scipy quadrature."""

    def f(x):
        lp = _student_logpdf(x, *a)
        return math.exp(lp) * (lp - _student_logpdf(x, *b))

    val, _ = integrate.quad(f, -np.inf, np.inf, epsabs=1e-14, epsrel=1e-11, limit=200)
    return 2 * val


def test_cubic_term_radius_of_a_monte_carlo_only_model_against_quadrature():
    """Predicted radius rtol·c₂/|c₃| (MC) vs the brute-force radius from the quadrature KL: measured 0.1444 vs
    0.1416 (2%); asserted within 10%. I = 2σ⁻²·diag((ν+1)/(ν+3), 2ν/(ν+3)) for the quadratic form."""
    m = student2d()
    theta, u, rtol = np.array([0.5, 1.5]), np.array([0.6, 0.8]), 0.1
    r = validity_radius(m, t64(*theta), t64(*u), rtol)
    assert (r.method, r.bound, r.rtol) == ("cubic term", "rtol", rtol)
    assert r.norm == pytest.approx(r.radius, rel=1e-12)  # |u| = 1

    a, e = (NU + 1) / (NU + 3), 2 * NU / (NU + 3)
    q = 2 * (a * u[0] ** 2 + e * u[1] ** 2) / theta[1] ** 2

    def excess(t: float) -> float:
        k = student2d_kl(theta, theta + t * u)
        return abs(k - 0.5 * t * t * q) - rtol * k

    assert all(excess(t) < 0 for t in (0.01, 0.04, 0.08, 0.12))  # no earlier crossing
    truth = optimize.brentq(excess, 0.12, 0.3, xtol=1e-5)
    assert r.radius == pytest.approx(truth, rel=0.1)
    # and the cubic prediction itself, with c₂ and c₃ from the exact (quadrature) 1-D Student-t route, × 2
    from fisherkl.taylor import kl_taylor_terms

    c = kl_taylor_terms(families.family("studentt", df=NU), t64(*theta), t64(*u), 3, method="exact")
    assert r.radius == pytest.approx(rtol * float(c[2]) / abs(float(c[3])), rel=0.02)


def test_cubic_term_radius_is_reproducible():
    """DESIGN: "Monte Carlo results carry their standard error and take a seed / generator". Bug: validity_radius
    has no seed and draws from torch's global RNG, so two identical calls give different radii (0.14439 vs
    0.14431 measured), and no standard error is reported for the Monte Carlo-based radius."""
    m = student2d()
    theta, u = t64(0.5, 1.5), t64(0.6, 0.8)
    torch.manual_seed(123)
    first = validity_radius(m, theta, u, 0.1)
    torch.manual_seed(456)
    second = validity_radius(m, theta, u, 0.1)
    assert first.radius == second.radius


# --- 4. the midpoint Jeffreys form -------------------------------------------------------------------------


def jeffreys_hand(name: str, a, b) -> float:
    if name == "normal":
        (m1, s1), (m2, s2) = a, b
        return ((s1**2 - s2**2) ** 2 + (s1**2 + s2**2) * (m1 - m2) ** 2) / (2 * s1**2 * s2**2)
    if name == "poisson":
        return (a[0] - b[0]) * math.log(a[0] / b[0])
    if name == "exponential":
        return (a[0] - b[0]) ** 2 / (a[0] * b[0])
    if name == "bernoulli":
        return (a[0] - b[0]) * (sps.logit(a[0]) - sps.logit(b[0]))
    return KL[name](a, b) + KL[name](b, a)


def slope(steps, errors) -> float:
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


SMOOTH = [
    ("normal", (0.5, 1.5), (0.6, 0.8)),
    ("poisson", (3.5,), (1.0,)),
    ("exponential", (1.7,), (-1.0,)),
    ("bernoulli", (0.3,), (1.0,)),
    ("gamma", (2.5, 1.7), (0.6, -0.8)),
    ("beta", (2.0, 3.0), (0.6, 0.8)),
]
HS = np.array([3e-2, 1e-2, 3e-3, 1e-3])


@pytest.mark.parametrize(("name", "theta", "u"), SMOOTH)
def test_midpoint_form_is_second_order_and_the_start_form_first_order(name, theta, u):
    """|J − δᵀI(θ+δ/2)δ|/J ∝ |δ|² and |J − δᵀI(θ)δ|/J ∝ |δ|, J and I written out by hand.

    Measured slopes: midpoint 1.97–2.00, start 0.98–1.00."""
    m = families.family(name)
    th, uu = np.array(theta), np.array(u)
    mid, start = [], []
    for h in HS:
        d = h * uu
        j = jeffreys_hand(name, th, th + d)
        q_mid = float(fk.jeffreys_quadratic(m, t64(*th), t64(*d), at="midpoint"))
        q_start = float(fk.jeffreys_quadratic(m, t64(*th), t64(*d)))
        assert q_mid == pytest.approx(float(d @ FISHER[name](th + d / 2) @ d), rel=1e-12)
        assert q_start == pytest.approx(float(d @ FISHER[name](th) @ d), rel=1e-12)
        mid.append(abs(j - q_mid) / j)
        start.append(abs(j - q_start) / j)
    assert 1.8 <= slope(HS, mid) <= 2.2, mid
    assert 0.9 <= slope(HS, start) <= 1.1, start
    assert mid[-1] < 1e-3 * start[-1]  # at |δ| = 1e-3 the midpoint form is ≥ 1000× better


def test_laplace_midpoint_stays_first_order():
    """Along the location, J = 2(z + e^{−z} − 1) with z = |Δμ|/σ and δᵀIδ = z² at any point (I = 1/σ² there):
    relative error ≈ z/3, order 1 — the kink of log p at x = loc breaks the odd-term cancellation."""
    m = families.family("laplace")
    sigma = 1.5
    errs = []
    for h in HS:
        z = h / sigma
        j = 2 * (z + math.expm1(-z))
        assert float(fk.jeffreys(m, t64(0.5, sigma), t64(0.5 + h, sigma))) == pytest.approx(j, rel=1e-9)
        q = float(fk.jeffreys_quadratic(m, t64(0.5, sigma), t64(h, 0.0), at="midpoint"))
        assert q == pytest.approx(z * z, rel=1e-12)
        errs.append(abs(j - q) / j)
        assert errs[-1] == pytest.approx(z / 3, rel=0.02)
    assert 0.9 <= slope(HS, errs) <= 1.1


def test_midpoint_form_rejects_a_midpoint_outside_the_space_and_unknown_at():
    m = families.family("normal")
    with pytest.raises(ParameterError, match="delta/2"):
        fk.jeffreys_quadratic(m, t64(0.5, 1.5), t64(0.0, -4.0), at="midpoint")
    with pytest.raises(ParameterError, match="at"):
        fk.jeffreys_quadratic(m, t64(0.5, 1.5), t64(0.1, 0.1), at="end")


# --- 5. check(), fitted_order, format_table ----------------------------------------------------------------

CHECKED = ["normal", "poisson", "gamma", "beta", "bernoulli"]


@pytest.fixture(scope="module")
def rows() -> list[CheckRow]:
    return check([families.family(n) for n in CHECKED])


def test_check_measures_orders_one_one_two(rows):
    """Measured (kl, jeffreys, midpoint) orders: normal 1.000/1.000/2.003, poisson 1.001/1.000/1.992,
    gamma 1.000/1.000/1.997, beta 1.001/1.000/1.996, bernoulli 0.998/0.998/1.972."""
    assert [r.name for r in rows] == CHECKED
    for r in rows:
        assert len(r.sweeps) == 3 and r.note == ""
        assert (r.kl_order, r.jeffreys_order, r.midpoint_order) == (
            pytest.approx(1, abs=0.1),
            pytest.approx(1, abs=0.1),
            pytest.approx(2, abs=0.1),
        ), r.name
        m = families.family(r.name)
        expected = validity_radius(m, m.typical(), unit_direction(m.dim, 0), 0.1)
        assert (r.radius, r.radius_bound) == (pytest.approx(expected.radius, rel=1e-12), expected.bound)


def test_check_sweep_values_are_the_relative_errors(rows):
    """The normal row's first sweep, recomputed from the hand formulas at each |δ|."""
    row = rows[0]
    u = unit_direction(2, 0).numpy()
    th = np.array([0.5, 1.5])
    s = row.sweeps[0]
    assert s.steps == list(STEPS)
    for h, e_kl, e_j, e_mid in zip(s.steps, s.kl, s.jeffreys, s.midpoint):
        d = h * u
        k, j = normal_kl(th, th + d), jeffreys_hand("normal", th, th + d)
        q = float(d @ FISHER["normal"](th) @ d)
        q_mid = float(d @ FISHER["normal"](th + d / 2) @ d)
        # a divergence ~h² computed from O(1) terms carries a rounding error ~ε/h² relative (library and hand)
        tol = 1e-14 / h**2
        assert e_kl == pytest.approx(abs(k - q / 2) / k, abs=tol, rel=1e-9)
        assert e_j == pytest.approx(abs(j - q) / j, abs=tol, rel=1e-9)
        assert e_mid == pytest.approx(abs(j - q_mid) / j, abs=tol, rel=1e-9)


def test_check_options_and_special_rows():
    seen: list[str] = []
    out = check(
        [families.family("poisson"), families.family("uniform")], radius=False, directions=2, progress=seen.append
    )
    assert seen == ["poisson", "uniform"]
    poisson, uniform = out
    assert len(poisson.sweeps) == 2 and math.isnan(poisson.radius)
    assert uniform.sweeps == [] and "non-regular" in uniform.note
    lap = check_model(families.family("laplace"), t64(0.5, 1.5), radius=False)
    assert lap.kl_order == pytest.approx(1, abs=0.1)
    assert lap.midpoint_order == pytest.approx(1, abs=0.1)  # Laplace: the midpoint form stays first order
    user = fk.Model(lambda t: D.Poisson(t[..., 0]), 1, constraints=[positive])
    with pytest.raises(FisherKLError, match="typical"):
        check([user])


def test_fitted_order_on_synthetic_data():
    steps = list(STEPS)
    for p in (0.5, 1.0, 1.5, 2.0, 3.0):
        assert fitted_order(steps, [7.0 * h**p for h in steps]) == pytest.approx(p, rel=1e-12)
    # order 1 at the four smallest usable steps, order 3 above them: only the smallest four count
    errs = [h if h <= 3e-3 else 1e3 * h**3 for h in steps]
    assert fitted_order(steps, errs) == pytest.approx(1.0, rel=1e-12)
    assert fitted_order(steps, errs, last=2) == pytest.approx(1.0, rel=1e-12)
    # order in the input does not matter
    assert fitted_order(steps[::-1], errs[::-1]) == pytest.approx(1.0, rel=1e-12)
    # points below the float64 noise floor (error < 100ε/h²) are dropped: h² errors at h ≤ 3e-4 fall below it
    errs2 = [0.5 * h * h for h in steps]
    assert fitted_order(steps, errs2) == pytest.approx(2.0, rel=1e-12)
    assert fitted_order(steps, [*errs2[:-1], 1e-300]) == pytest.approx(2.0, rel=1e-12)
    # nan and inf are ignored; fewer than two usable points give nan
    assert fitted_order([1e-1, 1e-2, 1e-3], [math.nan, 1e-2, 1e-3]) == pytest.approx(1.0, rel=1e-12)
    assert math.isnan(fitted_order([1e-1, 1e-2], [math.inf, 1e-2]))
    assert math.isnan(fitted_order([], []))


def test_format_table_names_every_family(rows):
    synthetic = [
        CheckRow(n, [1.0], [Sweep([1e-2, 1e-3], [1e-2, 1e-3], [1e-2, 1e-3], [1e-4, 1e-6])], 1.0, 1.0, 2.0, 0.3, "rtol")
        for n in families.names()
    ]
    synthetic.append(CheckRow("uniform-like", [0.0, 1.0], note="non-regular: no Fisher information"))
    text = format_table(synthetic)
    lines = text.splitlines()
    assert "order KL" in lines[0] and "radius(0.1)" in lines[0]
    for n in families.names():
        assert any(line.split()[0] == n for line in lines[2:]), n
    assert "non-regular" in text
    assert "1.00e-02" in text  # the KL error at |δ| = 1e-2
    real_text = format_table(rows)
    for r in rows:
        line = next(line for line in real_text.splitlines() if line.startswith(r.name + " "))
        assert f"{r.midpoint_order:.2f}" in line and f"{r.radius:.3g}" in line
