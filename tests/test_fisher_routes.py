"""Routes to the Fisher information, checked against oracles that do not use fisherkl.

* closed forms from DESIGN.md re-implemented with numpy / scipy.special;
* scipy.integrate.quad of the score outer product (analytic scores written here, themselves
  checked against finite differences of scipy.stats log-densities) and plain Python sums;
* Monte Carlo routes within 4 standard errors, with the standard error itself checked against
  its analytic value for the normal.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

import fisherkl

F64 = torch.float64
EXAMPLES = 6  # hypothesis examples per family configuration

# --------------------------------------------------------------------------------------------------
# Independent closed forms (DESIGN.md, "Facts to test against"), numpy + scipy.special only.
# --------------------------------------------------------------------------------------------------


def trigamma(x):
    return special.polygamma(1, x)


def oracle_fisher(name: str, theta, fixed: dict | None = None) -> np.ndarray:
    """I(θ) for one observation, from the textbook formula."""
    fixed = fixed or {}
    t = np.asarray(theta, dtype=float)
    if name in ("normal", "lognormal"):
        s = t[1]
        return np.diag([1 / s**2, 2 / s**2])
    if name == "laplace":
        s = t[1]
        return np.diag([1 / s**2, 1 / s**2])
    if name == "cauchy":
        s = t[1]
        return np.diag([0.5 / s**2, 0.5 / s**2])
    if name == "halfnormal":
        return np.array([[2 / t[0] ** 2]])
    if name == "exponential":
        return np.array([[1 / t[0] ** 2]])
    if name == "gamma":
        a, b = t
        return np.array([[trigamma(a), -1 / b], [-1 / b, a / b**2]])
    if name == "beta":
        a, b = t
        ab = trigamma(a + b)
        return np.array([[trigamma(a) - ab, -ab], [-ab, trigamma(b) - ab]])
    if name == "bernoulli":
        p = t[0]
        return np.array([[1 / (p * (1 - p))]])
    if name == "binomial":
        p, n = t[0], fixed.get("total_count", 10)
        return np.array([[n / (p * (1 - p))]])
    if name == "geometric":
        p = t[0]
        return np.array([[1 / (p**2 * (1 - p))]])
    if name == "poisson":
        return np.array([[1 / t[0]]])
    if name == "categorical":
        last = 1 - t.sum()
        return np.diag(1 / t) + 1 / last
    if name == "dirichlet":
        return np.diag(trigamma(t)) - trigamma(t.sum())
    raise KeyError(name)


ORACLE_NAMES = {
    "normal",
    "lognormal",
    "laplace",
    "cauchy",
    "halfnormal",
    "exponential",
    "gamma",
    "beta",
    "bernoulli",
    "binomial",
    "geometric",
    "poisson",
    "categorical",
    "dirichlet",
}

# (name, fixed arguments) — every regular family, plus non-default fixed arguments.
CONFIGS = [
    ("normal", {}),
    ("lognormal", {}),
    ("laplace", {}),
    ("cauchy", {}),
    ("halfnormal", {}),
    ("exponential", {}),
    ("gamma", {}),
    ("beta", {}),
    ("bernoulli", {}),
    ("binomial", {}),
    ("binomial", {"total_count": 7}),
    ("geometric", {}),
    ("poisson", {}),
    ("categorical", {}),
    ("categorical", {"k": 4}),
    ("dirichlet", {}),
    ("dirichlet", {"k": 4}),
]


def config_id(cfg) -> str:
    name, fixed = cfg
    return name + "".join(f"-{k}{v}" for k, v in fixed.items())


def k_of(name: str, fixed: dict) -> int:
    return fixed.get("k", 3)


# hand-picked θ for the closed-form check (including edges of the sensible ranges)
FIXED_THETAS = {
    "normal": [(0.0, 1.0), (-2.5, 0.2), (3.0, 5.0)],
    "lognormal": [(0.0, 1.0), (1.2, 0.3), (-3.0, 4.5)],
    "laplace": [(0.0, 1.0), (2.0, 0.25), (-1.0, 3.7)],
    "cauchy": [(0.0, 1.0), (-3.0, 0.2), (1.5, 4.0)],
    "halfnormal": [(1.0,), (0.2,), (4.3,)],
    "exponential": [(1.0,), (0.3,), (5.0,)],
    "gamma": [(2.5, 1.7), (0.7, 0.2), (20.0, 5.0)],
    "beta": [(2.0, 3.0), (0.7, 20.0), (13.0, 0.9)],
    "bernoulli": [(0.3,), (0.05,), (0.95,)],
    "binomial": [(0.3,), (0.05,), (0.77,)],
    "geometric": [(0.3,), (0.05,), (0.95,)],
    "poisson": [(3.5,), (0.1,), (50.0,)],
    "categorical": [(0.2, 0.3), (0.05, 0.9), (0.45, 0.45)],
    "dirichlet": [(1.5, 2.0, 2.5), (0.7, 20.0, 3.0), (10.0, 10.0, 0.8)],
}


def fixed_thetas(name: str, fixed: dict) -> list[tuple[float, ...]]:
    k = k_of(name, fixed)
    if name == "categorical" and k == 4:
        return [(0.1, 0.2, 0.3), (0.05, 0.05, 0.85), (0.25, 0.25, 0.25)]
    if name == "dirichlet" and k == 4:
        return [(1.0, 2.0, 3.0, 4.0), (0.7, 0.7, 20.0, 5.0)]
    return FIXED_THETAS[name]


# hypothesis strategies for θ in sensible ranges
def fl(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def theta_strategy(name: str, fixed: dict):
    k = k_of(name, fixed)
    if name in ("normal", "lognormal", "laplace", "cauchy"):
        return st.tuples(fl(-3, 3), fl(0.2, 5))
    if name in ("halfnormal", "exponential"):
        return st.tuples(fl(0.2, 5))
    if name in ("gamma", "beta"):
        return st.tuples(fl(0.7, 20), fl(0.7, 20)) if name == "beta" else st.tuples(fl(0.7, 20), fl(0.2, 5))
    if name in ("bernoulli", "binomial", "geometric"):
        return st.tuples(fl(0.05, 0.95))
    if name == "poisson":
        return st.tuples(fl(0.1, 50))
    if name == "categorical":
        weights = st.lists(fl(0.05, 1.0), min_size=k, max_size=k)
        return weights.map(lambda w: tuple(np.asarray(w) / np.sum(w))[:-1])
    if name == "dirichlet":
        return st.tuples(*[fl(0.7, 20)] * k)
    raise KeyError(name)


def rel_err(a, b) -> float:
    """max |a − b| / max |b| (entrywise, relative to the largest entry of the reference)."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------------------------------
# 1. closed forms
# --------------------------------------------------------------------------------------------------


def test_oracle_covers_every_regular_family():
    for name in fisherkl.families.names():
        fam = fisherkl.family(name)
        if fam.regular:
            assert name in ORACLE_NAMES, f"no independent oracle for regular family {name!r}"
        else:
            assert name == "uniform"
    assert {n for n, _ in CONFIGS} == ORACLE_NAMES


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_closed_form_matches_design_formula(cfg):
    name, fixed = cfg
    fam = fisherkl.family(name, **fixed)
    thetas = [*fixed_thetas(name, fixed), tuple(fam.typical().tolist())]
    for theta in thetas:
        est = fisherkl.fisher(fam, torch.tensor(theta, dtype=F64), "closed", return_error=True)
        assert est.method == "closed"
        assert est.value.dtype == F64
        assert est.value.shape == (fam.dim, fam.dim)
        assert torch.all(est.error == 0)
        assert rel_err(est.value, oracle_fisher(name, theta, fixed)) <= 1e-12, (name, theta)
        # auto takes the closed form when there is one
        auto = fisherkl.fisher(fam, torch.tensor(theta, dtype=F64), return_error=True)
        assert auto.method == "closed"
        assert rel_err(auto.value, oracle_fisher(name, theta, fixed)) <= 1e-12


def test_closed_form_spot_values():
    """A few hand-computed numbers (no formula shared with the code)."""
    cases = [
        ("normal", {}, (0.0, 2.0), [[0.25, 0.0], [0.0, 0.5]]),
        ("cauchy", {}, (1.0, 0.5), [[2.0, 0.0], [0.0, 2.0]]),
        ("bernoulli", {}, (0.5,), [[4.0]]),
        ("binomial", {"total_count": 20}, (0.5,), [[80.0]]),
        ("geometric", {}, (0.5,), [[8.0]]),
        ("poisson", {}, (4.0,), [[0.25]]),
        ("exponential", {}, (0.5,), [[4.0]]),
        ("categorical", {}, (0.25, 0.25), [[6.0, 2.0], [2.0, 6.0]]),
        # ψ′(1) = π²/6
        ("gamma", {}, (1.0, 2.0), [[math.pi**2 / 6, -0.5], [-0.5, 0.25]]),
        # Beta(1,1): ψ′(1) − ψ′(2) = 1, ψ′(2) = π²/6 − 1
        ("beta", {}, (1.0, 1.0), [[1.0, 1 - math.pi**2 / 6], [1 - math.pi**2 / 6, 1.0]]),
    ]
    for name, fixed, theta, expected in cases:
        got = fisherkl.fisher(fisherkl.family(name, **fixed), torch.tensor(theta, dtype=F64), "closed")
        np.testing.assert_allclose(got.numpy(), np.array(expected), rtol=1e-13, atol=1e-15, err_msg=name)


# --------------------------------------------------------------------------------------------------
# 2. every exact route agrees with the closed form (hypothesis)
# --------------------------------------------------------------------------------------------------

EXPECTED_ROUTES = {name: ["closed", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian"] for name in ORACLE_NAMES}
EXPECTED_ROUTES["laplace"] = ["closed", "kl_hessian", "jeffreys_hessian", "score"]
EXPECTED_ROUTES["dirichlet"] = ["closed", "kl_hessian", "jeffreys_hessian", "score (mc)", "neg_hessian (mc)"]

EXACT_SCHEME = {
    "normal": "quadrature",
    "lognormal": "quadrature",
    "laplace": "quadrature",
    "cauchy": "quadrature",
    "halfnormal": "quadrature",
    "exponential": "quadrature",
    "gamma": "quadrature",
    "beta": "quadrature",
    "bernoulli": "finite",
    "binomial": "finite",
    "categorical": "finite",
    "geometric": "series",
    "poisson": "series",
}


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_available_routes(cfg):
    name, fixed = cfg
    fam = fisherkl.family(name, **fixed)
    assert fisherkl.available_routes(fam, fam.typical()) == EXPECTED_ROUTES[name]


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data())
def test_every_exact_route_matches_closed_form(cfg, data):
    name, fixed = cfg
    fam = fisherkl.family(name, **fixed)
    theta_tuple = data.draw(theta_strategy(name, fixed), label="theta")
    theta = torch.tensor(theta_tuple, dtype=F64)
    expected = oracle_fisher(name, theta_tuple, fixed)
    closed = fisherkl.fisher(fam, theta, "closed")
    assert rel_err(closed, expected) <= 1e-11
    routes = [r for r in fisherkl.available_routes(fam, theta) if "(mc)" not in r and r != "closed"]
    assert {"kl_hessian", "jeffreys_hessian"} <= set(routes)
    for route in routes:
        kwargs = {"expectation": "exact"} if route in ("score", "neg_hessian") else {}
        est = fisherkl.fisher(fam, theta, route, return_error=True, **kwargs)
        if route in ("score", "neg_hessian"):
            assert est.method == f"{route}/{EXACT_SCHEME[name]}"
            assert est.exact
        else:
            assert est.method == route
        assert est.value.dtype == F64
        assert est.value.shape == (fam.dim, fam.dim)
        assert rel_err(est.value, expected) <= 1e-8, (route, theta_tuple)
        assert rel_err(est.value, closed) <= 1e-8, (route, theta_tuple)


# --------------------------------------------------------------------------------------------------
# 3. numerical oracle: scipy quad of the score outer product, and plain Python sums
# --------------------------------------------------------------------------------------------------


def continuous_oracle(name: str, theta: tuple[float, ...]):
    """(scipy.stats frozen distribution, analytic score x ↦ array[d], break points, support)."""
    if name == "normal":
        m, s = theta
        return (
            stats.norm(m, s),
            lambda x: np.array([(x - m) / s**2, (((x - m) / s) ** 2 - 1) / s]),
            [m],
            (-np.inf, np.inf),
        )
    if name == "lognormal":
        m, s = theta

        def score(x):
            z = (np.log(x) - m) / s
            return np.array([z / s, (z**2 - 1) / s])

        return stats.lognorm(s=s, scale=np.exp(m)), score, [np.exp(m)], (0.0, np.inf)
    if name == "laplace":
        m, s = theta
        return (
            stats.laplace(m, s),
            lambda x: np.array([np.sign(x - m) / s, (abs(x - m) / s - 1) / s]),
            [m],
            (-np.inf, np.inf),
        )
    if name == "cauchy":
        m, s = theta

        def score(x):
            u = x - m
            return np.array([2 * u / (s**2 + u**2), 1 / s - 2 * s / (s**2 + u**2)])

        return stats.cauchy(m, s), score, [m], (-np.inf, np.inf)
    if name == "gamma":
        a, b = theta
        c = np.log(b) - special.digamma(a)
        return stats.gamma(a, scale=1 / b), lambda x: np.array([c + np.log(x), a / b - x]), [a / b], (0.0, np.inf)
    if name == "beta":
        a, b = theta
        ca = special.digamma(a + b) - special.digamma(a)
        cb = special.digamma(a + b) - special.digamma(b)
        return (
            stats.beta(a, b),
            lambda x: np.array([np.log(x) + ca, np.log1p(-x) + cb]),
            [a / (a + b)],
            (0.0, 1.0),
        )
    if name == "halfnormal":
        (s,) = theta
        return stats.halfnorm(scale=s), lambda x: np.array([-1 / s + x**2 / s**3]), [s], (0.0, np.inf)
    if name == "exponential":
        (r,) = theta
        return stats.expon(scale=1 / r), lambda x: np.array([1 / r - x]), [1 / r], (0.0, np.inf)
    raise KeyError(name)


def quad_fisher(name: str, theta: tuple[float, ...]) -> np.ndarray:
    """∫ s sᵀ p dx by scipy quad, split at the break points."""
    if name == "beta":
        return quad_fisher_beta(*theta)
    dist, score, points, (lo, hi) = continuous_oracle(name, theta)
    d = len(theta)
    edges = [lo, *points, hi]
    out = np.zeros((d, d))
    for i in range(d):
        for j in range(i, d):
            total = 0.0
            for a, b in itertools.pairwise(edges):
                val, _ = integrate.quad(
                    lambda x, i=i, j=j: score(x)[i] * score(x)[j] * dist.pdf(x),
                    a,
                    b,
                    epsabs=1e-13,
                    epsrel=1e-10,
                    limit=400,
                )
                total += val
            out[i, j] = out[j, i] = total
    return out


def quad_fisher_beta(a: float, b: float) -> np.ndarray:
    """Beta: [0, ½] in x, and [½, 1] in y = 1 − x (mirrored density) so both end singularities stay resolved."""
    ca = special.digamma(a + b) - special.digamma(a)
    cb = special.digamma(a + b) - special.digamma(b)
    lower, mirrored = stats.beta(a, b), stats.beta(b, a)

    def lower_part(x):
        return np.array([np.log(x) + ca, np.log1p(-x) + cb]), lower.pdf(x)

    def upper_part(y):
        return np.array([np.log1p(-y) + ca, np.log(y) + cb]), mirrored.pdf(y)

    out = np.zeros((2, 2))
    for i in range(2):
        for j in range(i, 2):
            total = 0.0
            for part in (lower_part, upper_part):

                def f(x, part=part, i=i, j=j):
                    s, p = part(x)
                    return s[i] * s[j] * p

                total += integrate.quad(f, 0.0, 0.5, epsabs=1e-13, epsrel=1e-10, limit=400)[0]
            out[i, j] = out[j, i] = total
    return out


def fd_score(dist_of_theta, theta: tuple[float, ...], x: float) -> np.ndarray:
    """4th-order central differences of scipy.stats logpdf in θ."""
    g = []
    for i in range(len(theta)):
        h = 1e-3 * max(1.0, abs(theta[i]))

        def lp(eps, i=i):
            t = list(theta)
            t[i] += eps
            return dist_of_theta(t).logpdf(x)

        g.append((-lp(2 * h) + 8 * lp(h) - 8 * lp(-h) + lp(-2 * h)) / (12 * h))
    return np.array(g)


SCIPY_OF = {
    "normal": lambda t: stats.norm(t[0], t[1]),
    "lognormal": lambda t: stats.lognorm(s=t[1], scale=np.exp(t[0])),
    "laplace": lambda t: stats.laplace(t[0], t[1]),
    "cauchy": lambda t: stats.cauchy(t[0], t[1]),
    "gamma": lambda t: stats.gamma(t[0], scale=1 / t[1]),
    "beta": lambda t: stats.beta(t[0], t[1]),
    "halfnormal": lambda t: stats.halfnorm(scale=t[0]),
    "exponential": lambda t: stats.expon(scale=1 / t[0]),
}

QUAD_CASES = [
    ("normal", (0.3, 1.7)),
    ("normal", (-2.0, 0.25)),
    ("lognormal", (0.4, 0.6)),
    ("lognormal", (-1.0, 2.0)),
    ("laplace", (0.5, 1.5)),
    ("laplace", (-2.2, 0.3)),
    ("cauchy", (0.5, 1.5)),
    ("cauchy", (2.0, 0.3)),
    ("gamma", (2.5, 1.7)),
    ("gamma", (0.8, 0.3)),
    ("beta", (2.0, 3.0)),
    ("beta", (0.8, 7.0)),
    ("beta", (2.0, 0.75)),
    ("halfnormal", (0.7,)),
    ("exponential", (2.3,)),
]


@pytest.mark.parametrize(("name", "theta"), QUAD_CASES)
def test_fisher_matches_quadrature_of_score_outer_product(name, theta):
    dist, score, _, _ = continuous_oracle(name, theta)
    # the analytic scores are themselves right: compare with finite differences of scipy's logpdf
    for q in (0.03, 0.3, 0.5, 0.8, 0.97):
        x = float(dist.ppf(q))
        if name == "laplace" and abs(x - theta[0]) < 1e-6:
            continue
        np.testing.assert_allclose(score(x), fd_score(SCIPY_OF[name], theta, x), rtol=1e-7, atol=1e-8)
    oracle = quad_fisher(name, theta)
    # and the quadrature oracle reproduces the textbook formula (so neither is broken)
    assert rel_err(oracle, oracle_fisher(name, theta)) <= 1e-9
    fam = fisherkl.family(name)
    t = torch.tensor(theta, dtype=F64)
    for route in fisherkl.available_routes(fam, t):
        kwargs = {"expectation": "exact"} if route in ("score", "neg_hessian") else {}
        got = fisherkl.fisher(fam, t, route, **kwargs)
        assert rel_err(got, oracle) <= 1e-8, route


def poisson_sum(lam: float) -> np.ndarray:
    total = 0.0
    for k in range(int(lam + 40 * math.sqrt(lam) + 60)):
        pmf = math.exp(k * math.log(lam) - lam - math.lgamma(k + 1))
        total += pmf * (k / lam - 1) ** 2
    return np.array([[total]])


def geometric_sum(p: float) -> np.ndarray:
    total = 0.0
    k = 0
    while True:
        pmf = (1 - p) ** k * p
        total += pmf * (1 / p - k / (1 - p)) ** 2
        if pmf < 1e-30 and k > 10:
            break
        k += 1
    return np.array([[total]])


def binomial_sum(p: float, n: int) -> np.ndarray:
    total = 0.0
    for k in range(n + 1):
        pmf = math.comb(n, k) * p**k * (1 - p) ** (n - k)
        total += pmf * (k / p - (n - k) / (1 - p)) ** 2
    return np.array([[total]])


def categorical_sum(theta: tuple[float, ...]) -> np.ndarray:
    probs = [*theta, 1 - sum(theta)]
    d = len(theta)
    out = np.zeros((d, d))
    for i, pi in enumerate(probs):
        s = np.array([(1 / pi if j == i else 0.0) - (1 / probs[-1] if i == d else 0.0) for j in range(d)])
        out += pi * np.outer(s, s)
    return out


SUM_CASES = [
    ("poisson", {}, (3.5,), lambda t: poisson_sum(t[0])),
    ("poisson", {}, (0.1,), lambda t: poisson_sum(t[0])),
    ("poisson", {}, (47.0,), lambda t: poisson_sum(t[0])),
    ("geometric", {}, (0.3,), lambda t: geometric_sum(t[0])),
    ("geometric", {}, (0.05,), lambda t: geometric_sum(t[0])),
    ("geometric", {}, (0.93,), lambda t: geometric_sum(t[0])),
    ("binomial", {}, (0.3,), lambda t: binomial_sum(t[0], 10)),
    ("binomial", {}, (0.5,), lambda t: binomial_sum(t[0], 10)),
    ("binomial", {"total_count": 33}, (0.81,), lambda t: binomial_sum(t[0], 33)),
    ("bernoulli", {}, (0.12,), lambda t: binomial_sum(t[0], 1)),
    ("categorical", {}, (0.2, 0.5), categorical_sum),
    ("categorical", {"k": 4}, (0.1, 0.6, 0.05), categorical_sum),
]


@pytest.mark.parametrize(
    ("name", "fixed", "theta", "oracle"), SUM_CASES, ids=[f"{c[0]}{c[1] or ''}-{c[2]}" for c in SUM_CASES]
)
def test_discrete_fisher_matches_python_sum(name, fixed, theta, oracle):
    expected = oracle(theta)
    assert rel_err(expected, oracle_fisher(name, theta, fixed)) <= 1e-10
    fam = fisherkl.family(name, **fixed)
    t = torch.tensor(theta, dtype=F64)
    for route in fisherkl.available_routes(fam, t):
        kwargs = {"expectation": "exact"} if route in ("score", "neg_hessian") else {}
        got = fisherkl.fisher(fam, t, route, **kwargs)
        assert rel_err(got, expected) <= 1e-9, route


# --------------------------------------------------------------------------------------------------
# 4. Monte Carlo routes: within 4 standard errors, with honest standard errors
# --------------------------------------------------------------------------------------------------

MC_CASES = [
    ("dirichlet", {}, (1.5, 2.0, 2.5), "score"),
    ("dirichlet", {}, (0.8, 6.0, 3.0), "score"),
    ("dirichlet", {"k": 4}, (1.0, 2.0, 3.0, 4.0), "score"),
    ("dirichlet", {}, (1.5, 2.0, 2.5), "neg_hessian"),
    ("gamma", {}, (2.5, 1.7), "score"),
    ("gamma", {}, (0.9, 0.4), "neg_hessian"),
    ("normal", {}, (0.5, 1.5), "score"),
    ("normal", {}, (-1.0, 0.4), "neg_hessian"),
]


@pytest.mark.parametrize(
    ("name", "fixed", "theta", "route"), MC_CASES, ids=[f"{c[0]}{c[1] or ''}-{c[2]}-{c[3]}" for c in MC_CASES]
)
def test_monte_carlo_within_four_standard_errors(name, fixed, theta, route):
    fam = fisherkl.family(name, **fixed)
    t = torch.tensor(theta, dtype=F64)
    est = fisherkl.fisher(fam, t, route, expectation="mc", n_samples=20_000, seed=7, return_error=True)
    assert est.method == f"{route}/mc"
    assert not est.exact
    assert est.n_samples == 20_000
    assert est.value.shape == est.error.shape == (fam.dim, fam.dim)
    assert est.value.dtype == F64
    expected = oracle_fisher(name, theta, fixed)
    value, se = est.value.detach().numpy(), est.error.detach().numpy()
    assert np.all(se >= 0)
    if route == "score":
        assert np.all(se > 0)
        # a Monte Carlo estimate is not exact: some entry must differ from the truth
        assert np.max(np.abs(value - expected)) > 0
    # (−∇²log p of a gamma/dirichlet in some coordinates does not depend on x: se = 0 there)
    slack = 1e-9 * np.max(np.abs(expected))
    assert np.all(np.abs(value - expected) <= 4 * se + slack), (value, expected, se)


def test_dirichlet_mc_is_default_and_exact_is_refused():
    fam = fisherkl.family("dirichlet")
    t = fam.typical()
    est = fisherkl.fisher(fam, t, "score", n_samples=4000, seed=1, return_error=True)
    assert est.method == "score/mc"
    with pytest.raises(fisherkl.RouteError, match="mc"):
        fisherkl.fisher(fam, t, "score", expectation="exact")


def test_monte_carlo_standard_error_is_the_analytic_one():
    """Normal score route: Var[s_μ²] = 2/σ⁴, Var[s_μ s_σ] = 10/σ⁴, Var[s_σ²] = 56/σ⁴ (Gaussian moments)."""
    sigma, n = 1.3, 50_000
    fam = fisherkl.family("normal")
    est = fisherkl.fisher(
        fam, torch.tensor([0.2, sigma], dtype=F64), "score", expectation="mc", n_samples=n, seed=3, return_error=True
    )
    expected_se = np.sqrt(np.array([[2.0, 10.0], [10.0, 56.0]]) / sigma**4 / n)
    np.testing.assert_allclose(est.error.numpy(), expected_se, rtol=0.2)


def test_monte_carlo_seed_reproducible():
    fam = fisherkl.family("gamma")
    t = fam.typical()
    a = fisherkl.fisher(fam, t, "score", expectation="mc", n_samples=3000, seed=11)
    b = fisherkl.fisher(fam, t, "score", expectation="mc", n_samples=3000, seed=11)
    c = fisherkl.fisher(fam, t, "score", expectation="mc", n_samples=3000, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_monte_carlo_error_shrinks_like_one_over_root_n():
    fam = fisherkl.family("gamma")
    t = fam.typical()
    small = fisherkl.fisher(fam, t, "score", expectation="mc", n_samples=5_000, seed=5, return_error=True)
    large = fisherkl.fisher(fam, t, "score", expectation="mc", n_samples=80_000, seed=5, return_error=True)
    ratio = (small.error / large.error).numpy()
    assert np.all((ratio > 3.0) & (ratio < 5.3)), ratio  # √16 = 4


# --------------------------------------------------------------------------------------------------
# 8. non-regular models and routes that do not exist
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "closed", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian"])
def test_uniform_is_non_regular(method):
    fam = fisherkl.family("uniform")
    with pytest.raises(fisherkl.NonRegularModelError) as info:
        fisherkl.fisher(fam, torch.tensor([0.0, 1.0], dtype=F64), method)
    message = str(info.value)
    assert "support" in message
    assert "depends on the parameters" in message
    assert "uniform" in message


@pytest.mark.parametrize("expectation", ["auto", "exact", "mc"])
def test_laplace_has_no_neg_hessian_route(expectation):
    fam = fisherkl.family("laplace")
    with pytest.raises(fisherkl.RouteError, match="neg_hessian"):
        fisherkl.fisher(fam, fam.typical(), "neg_hessian", expectation=expectation, seed=0)


def test_unknown_method_is_a_route_error():
    fam = fisherkl.family("normal")
    with pytest.raises(fisherkl.RouteError, match="unknown method"):
        fisherkl.fisher(fam, fam.typical(), "hessian")
    with pytest.raises(fisherkl.RouteError, match="expectation"):
        fisherkl.fisher(fam, fam.typical(), "score", expectation="sometimes")


# --------------------------------------------------------------------------------------------------
# 9. kl_hessian is accurate in float32
# --------------------------------------------------------------------------------------------------


def test_kl_hessian_float32_gamma():
    fam = fisherkl.family("gamma")
    got = fisherkl.fisher(fam, torch.tensor([2.5, 1.7], dtype=torch.float32), "kl_hessian")
    assert got.dtype == torch.float32
    reference = fisherkl.fisher(fam, torch.tensor([2.5, 1.7], dtype=F64), "closed")
    assert rel_err(got.double(), reference) <= 1e-5
    assert rel_err(got.double(), oracle_fisher("gamma", (2.5, 1.7))) <= 1e-5
    jeff = fisherkl.fisher(fam, torch.tensor([2.5, 1.7], dtype=torch.float32), "jeffreys_hessian")
    assert jeff.dtype == torch.float32
    assert rel_err(jeff.double(), reference) <= 1e-5
