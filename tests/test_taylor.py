"""Higher-order Taylor terms of KL[p_θ ‖ p_θ+tδ]: checked against hand-derived series, sympy, and each other.

Oracles: for one-parameter families, KL(θ, θ+d) is an elementary function of x = d/θ whose power series
is written out by hand (e.g. Poisson: λ·(x − log(1 + x)) ⇒ c_k = λ(−x)^k/k); for two-parameter families,
sympy differentiates the textbook KL formula (written here, not taken from fisherkl) k times in t at 0.
"""

from __future__ import annotations

import math
import statistics

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import polygamma

import fisherkl as fk
from fisherkl import families
from fisherkl.agreement import unit_direction
from fisherkl.errors import FisherKLError, NonRegularModelError, ParameterError, RouteError
from fisherkl.expectation import exact_scheme
from fisherkl.model import no_argument_validation
from fisherkl.taylor import kl_taylor, kl_taylor_terms

F64 = torch.float64


def t64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def assert_close(actual: torch.Tensor, expected: list[float], rtol: float = 1e-10, atol: float = 1e-16) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=rtol, atol=atol)


def assert_mc_within(est: fk.Estimate, expected: list[float], n_se: float = 4.0) -> None:
    """Every coefficient k ≥ 2 within n_se standard errors (plus rounding) of the exact value."""
    exp = torch.tensor(expected, dtype=F64)
    diff = (est.value - exp).abs()[2:]
    allowed = n_se * est.error[2:] + 1e-12 * exp.abs()[2:] + 1e-300
    assert bool((diff <= allowed).all()), f"mc {est.value.tolist()} ± {est.error.tolist()} vs exact {expected}"


# --- 1. hand-derived coefficients -------------------------------------------------------------------------


def series_log1p(scale: float, x: float, order: int) -> list[float]:
    """Coefficients of scale·(x·t − log(1 + x·t)) in t: c_k = scale·(−x)^k/k for k ≥ 2."""
    return [0.0, 0.0] + [scale * (-x) ** k / k for k in range(2, order + 1)]


def poisson_terms(lam: float, d: float, order: int) -> list[float]:
    # KL(λ ‖ λ+d) = λ log(λ/(λ+d)) + d = λ·(x − log(1 + x)), x = d/λ
    return series_log1p(lam, d / lam, order)


def exponential_terms(rate: float, d: float, order: int) -> list[float]:
    # KL(λ ‖ λ+d) = log(λ/(λ+d)) + (λ+d)/λ − 1 = x − log(1 + x)
    return series_log1p(1.0, d / rate, order)


def bernoulli_terms(p: float, d: float, order: int) -> list[float]:
    # KL = −p log(1 + d/p) − (1−p) log(1 − d/(1−p)) ⇒ c_k = (d^k/k)·[(−1)^k/p^(k−1) + 1/(1−p)^(k−1)]
    return [0.0, 0.0] + [d**k / k * ((-1) ** k / p ** (k - 1) + 1 / (1 - p) ** (k - 1)) for k in range(2, order + 1)]


def categorical_terms(p: list[float], d: list[float], order: int) -> list[float]:
    # KL = −Σ p_i log(1 + δ_i/p_i) over all K categories (δ_K = −Σ δ_i) ⇒ c_k = ((−1)^k/k)·Σ p_i (δ_i/p_i)^k
    probs = [*p, 1 - sum(p)]
    steps = [*d, -sum(d)]
    return [0.0, 0.0] + [
        (-1) ** k / k * sum(q * (s / q) ** k for q, s in zip(probs, steps)) for k in range(2, order + 1)
    ]


ONE_D_CASES = [
    # (family, θ, δ, hand coefficients up to order 6)
    ("poisson", [3.5], [0.3], poisson_terms(3.5, 0.3, 6)),
    ("poisson", [3.5], [-0.4], poisson_terms(3.5, -0.4, 6)),
    ("exponential", [1.7], [0.2], exponential_terms(1.7, 0.2, 6)),
    ("bernoulli", [0.3], [0.05], bernoulli_terms(0.3, 0.05, 6)),
    ("bernoulli", [0.3], [-0.05], bernoulli_terms(0.3, -0.05, 6)),
    ("categorical", [1 / 6, 1 / 3], [0.02, -0.05], categorical_terms([1 / 6, 1 / 3], [0.02, -0.05], 6)),
    # gamma with the shape held fixed: KL = α·(x − log(1 + x)), x = dβ/β
    ("gamma", [2.5, 1.7], [0.0, 0.2], series_log1p(2.5, 0.2 / 1.7, 6)),
]


@pytest.mark.parametrize(("name", "theta", "delta", "expected"), ONE_D_CASES, ids=lambda v: str(v)[:24])
@pytest.mark.parametrize("method", ["closed", "exact"])
def test_terms_match_the_hand_series(name, theta, delta, expected, method):
    m = families.family(name)
    got = kl_taylor_terms(m, t64(*theta), t64(*delta), 6, method=method)
    assert got.shape == (7,)
    assert_close(got, expected, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(("name", "theta", "delta", "expected"), ONE_D_CASES[:6], ids=lambda v: str(v)[:24])
def test_monte_carlo_terms_are_within_four_standard_errors_of_the_hand_series(name, theta, delta, expected):
    m = families.family(name)
    est = kl_taylor_terms(m, t64(*theta), t64(*delta), 4, method="mc", n_samples=50_000, seed=0, return_error=True)
    assert isinstance(est, fk.Estimate) and est.method == "mc" and not est.exact
    assert_mc_within(est, expected[:5])
    # and the stated error is honest but not absurdly loose: below 5% of c₂
    assert float(est.error[2]) < 0.05 * expected[2]


def test_normal_along_the_location_has_no_terms_beyond_the_quadratic():
    """KL(N(μ,σ) ‖ N(μ+d,σ)) = d²/(2σ²) exactly: c₂ = d²/(2σ²), c₃ = c₄ = 0, by every method."""
    m = families.family("normal")
    theta, d, sigma = t64(0.5, 1.5), 0.1, 1.5
    expected = [0.0, 0.0, d * d / (2 * sigma**2), 0.0, 0.0]
    for method in ("closed", "exact"):
        assert_close(kl_taylor_terms(m, theta, t64(d, 0.0), 4, method=method), expected, atol=1e-15)
    est = kl_taylor_terms(m, theta, t64(d, 0.0), 4, method="mc", seed=3, return_error=True)
    # d²/dt² log p = −d²/σ² for every x, so even Monte Carlo is exact from k = 2 on
    assert_close(est.value[2:], expected[2:], atol=1e-15)
    assert float(kl_taylor(m, theta, t64(d, 0.0), order=4)) == pytest.approx(d * d / (2 * sigma**2), rel=1e-12)


def test_normal_along_the_scale_matches_its_series():
    """KL(N(μ,σ) ‖ N(μ,σ+s)) = log(1+r) + ½(1+r)⁻² − ½ = r² − (5/3)r³ + (9/4)r⁴ − (14/5)r⁵ + …, r = s/σ."""
    m = families.family("normal")
    s, sigma = 0.12, 1.5
    r = s / sigma
    expected = [0.0, 0.0, r**2, -5 / 3 * r**3, 9 / 4 * r**4, -14 / 5 * r**5]
    for method in ("closed", "exact"):
        assert_close(kl_taylor_terms(m, t64(0.5, sigma), t64(0.0, s), 5, method=method), expected, rtol=1e-9)


def _sympy_terms(kl_expr, t: sp.Symbol, order: int) -> list[float]:
    return [float(sp.diff(kl_expr, t, k).subs(t, 0).evalf(30) / math.factorial(k)) for k in range(order + 1)]


def test_gamma_and_normal_third_and_fourth_terms_match_sympy_in_a_mixed_direction():
    t = sp.Symbol("t")
    # Gamma(α, β) in (shape, rate): KL = (α₁−α₂)ψ(α₁) − lnΓ(α₁) + lnΓ(α₂) + α₂(ln β₁ − ln β₂) + α₁(β₂ − β₁)/β₁
    a1, b1, da, db = sp.Rational(5, 2), sp.Rational(17, 10), sp.Rational(3, 10), sp.Rational(-2, 5)
    a2, b2 = a1 + t * da, b1 + t * db
    gamma_kl = (
        (a1 - a2) * sp.digamma(a1)
        - sp.loggamma(a1)
        + sp.loggamma(a2)
        + a2 * (sp.log(b1) - sp.log(b2))
        + a1 * (b2 - b1) / b1
    )
    expected = _sympy_terms(gamma_kl, t, 4)
    m = families.family("gamma")
    for method in ("closed", "exact"):
        assert_close(kl_taylor_terms(m, t64(2.5, 1.7), t64(0.3, -0.4), 4, method=method), expected, rtol=1e-9)

    # Normal(μ, σ): KL = log(σ₂/σ₁) + (σ₁² + (μ₁−μ₂)²)/(2σ₂²) − ½
    m1, s1, dm, ds = sp.Rational(1, 2), sp.Rational(3, 2), sp.Rational(1, 5), sp.Rational(-3, 10)
    m2, s2 = m1 + t * dm, s1 + t * ds
    normal_kl = sp.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - sp.Rational(1, 2)
    expected = _sympy_terms(normal_kl, t, 4)
    m = families.family("normal")
    for method in ("closed", "exact"):
        assert_close(kl_taylor_terms(m, t64(0.5, 1.5), t64(0.2, -0.3), 4, method=method), expected, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    lam=st.floats(0.2, 50.0),
    frac=st.floats(-0.5, 0.5).filter(lambda f: abs(f) > 1e-3),
    p=st.floats(0.05, 0.95),
    pfrac=st.floats(-0.5, 0.5).filter(lambda f: abs(f) > 1e-3),
)
def test_closed_terms_match_the_series_for_random_parameters(lam, frac, p, pfrac):
    d = pfrac * min(p, 1 - p)
    for name, theta, delta, expected in [
        ("poisson", lam, frac * lam, poisson_terms(lam, frac * lam, 5)),
        ("bernoulli", p, d, bernoulli_terms(p, d, 5)),
    ]:
        got = kl_taylor_terms(families.family(name), t64(theta), t64(delta), 5)
        assert abs(float(got[1])) <= 1e-13 * expected[2]  # c₁ = 0 up to rounding
        assert_close(got[2:], expected[2:], rtol=1e-9, atol=1e-13 * expected[2])  # odd terms vanish at p = ½


def test_taylor_polynomial_is_the_sum_of_the_terms_and_c2_is_half_the_fisher_form():
    m = families.family("beta")
    theta, delta = t64(2.0, 3.0), t64(0.05, -0.08)
    terms = kl_taylor_terms(m, theta, delta, 4)
    assert float(terms[0]) == 0.0 and abs(float(terms[1])) < 1e-15
    for order in (2, 3, 4):
        assert float(kl_taylor(m, theta, delta, order=order)) == pytest.approx(
            float(terms[: order + 1].sum()), rel=1e-14
        )
    # c₂ = ½ δᵀ I δ with the Beta Fisher matrix written out from trigamma functions
    a, b = 2.0, 3.0
    t_ab = polygamma(1, a + b)
    info = [[polygamma(1, a) - t_ab, -t_ab], [-t_ab, polygamma(1, b) - t_ab]]
    d = delta.tolist()
    quad = sum(d[i] * info[i][j] * d[j] for i in range(2) for j in range(2))
    assert float(terms[2]) == pytest.approx(0.5 * quad, rel=1e-12)


# --- cross-checks between the three methods, for every family -------------------------------------------


def _regular_families() -> list[str]:
    return [n for n in families.names() if families.family(n).regular]


def _has_exact(m: fk.Model, theta: torch.Tensor) -> bool:
    with no_argument_validation():
        return exact_scheme(m.distribution(theta)) is not None


@pytest.mark.parametrize("name", [n for n in _regular_families() if families.family(n).twice_differentiable])
def test_methods_agree_for_every_family(name):
    """closed == exact to 1e-8 (relative to c₂) where both exist; mc within 4 standard errors of the reference.

    Laplace (not twice differentiable) has its own test below.
    """
    m = families.family(name)
    theta = m.typical()
    delta = 0.1 * unit_direction(m.dim, 0)
    refs = []
    if m.has_closed_kl(theta):
        refs.append(kl_taylor_terms(m, theta, delta, 4, method="closed"))
    if _has_exact(m, theta):
        est = kl_taylor_terms(m, theta, delta, 4, method="exact", return_error=True)
        assert est.exact
        refs.append(est.value)
    else:
        with pytest.raises(RouteError, match="mc"):
            kl_taylor_terms(m, theta, delta, 4, method="exact")
    mc = kl_taylor_terms(m, theta, delta, 4, method="mc", n_samples=20_000, seed=1, return_error=True)
    if not refs:  # only Monte Carlo: at least c₂ must be ½δᵀIδ from the family's Fisher
        info = fk.fisher(m, theta)
        refs.append(torch.tensor([0.0, 0.0, float(0.5 * delta @ info @ delta), math.nan, math.nan], dtype=F64))
    ref = refs[0]
    scale = float(ref[2])
    assert scale > 0
    for other in refs[1:]:
        torch.testing.assert_close(other[2:], ref[2:], rtol=0, atol=1e-8 * scale)
    known = ~torch.isnan(ref)
    known[:2] = False
    diff = (mc.value - ref).abs()[known]
    assert bool((diff <= 4 * mc.error[known] + 1e-10 * scale).all()), (mc.value.tolist(), mc.error.tolist(), ref)


# --- 2. order 3 beats order 2 by ≥ 10× at |δ| = 10⁻², every family with a closed-form KL -----------------

CLOSED_KL = [n for n in _regular_families() if families.family(n).has_closed_kl(families.family(n).typical())]


def improvement_ratios(name: str, h: float = 1e-2) -> list[float]:
    m = families.family(name)
    theta = m.typical()
    out = []
    for seed in range(3):
        delta = h * unit_direction(m.dim, seed)
        exact = float(fk.kl(m, theta, theta + delta))
        terms = kl_taylor_terms(m, theta, delta, 3)
        err2 = abs(float(terms[:3].sum()) - exact)
        err3 = abs(float(terms.sum()) - exact)
        out.append(err2 / err3 if err3 > 0 else math.inf)
    return out


@pytest.mark.parametrize("name", CLOSED_KL)
def test_order_three_cuts_the_error_of_order_two_tenfold(name):
    """|KL − T₂| / |KL − T₃| ≥ 10 at |δ| = 10⁻², KL from fisherkl.kl (closed form, float64).

    The statistic is the median over 3 fixed random unit directions (fisherkl.agreement.unit_direction,
    seeds 0, 1, 2 — the directions `check()` uses), because along a single direction the cubic form
    c₃(u) can vanish (e.g. categorical at p = (1/6, 1/3, 1/2) near u ≈ (0.5, 0.86), where the ratio drops
    below 1 although every coefficient is exact), and then no improvement is expected.
    Measured medians are ~20–600. Laplace has no Taylor polynomial beyond order 2 (see
    test_laplace_kl_has_a_nonanalytic_cubic_term), and kl_taylor refuses it with a RouteError.
    """
    if name == "laplace":
        with pytest.raises(fk.RouteError, match="no Taylor polynomial of order > 2"):
            kl_taylor_terms(families.family("laplace"), t64(0.5, 1.5), t64(0.01, 0.0), 3)
        return
    ratios = improvement_ratios(name)
    assert statistics.median(ratios) >= 10, f"{name}: ratios {[f'{r:.3g}' for r in ratios]}"


def test_laplace_kl_has_a_nonanalytic_cubic_term():
    """Why order 3 does not help for Laplace: along the location KL = ½z² − |z|³/6 + …, z = Δμ/σ.

    |z|³ is not a polynomial in δ, so no c₃ can represent it for both signs of Δμ. Checked on the exact KL
    written out by hand, and on fisherkl.kl: the residual after ½z² is −|z|³/6 for both signs.
    """
    m = families.family("laplace")
    sigma = 1.5
    for h in (1e-2, -1e-2):
        z = abs(h) / sigma
        exact_hand = z + math.expm1(-z)  # KL(Laplace(μ,σ) ‖ Laplace(μ+h,σ)) = z + e^{−z} − 1
        exact = float(fk.kl(m, t64(0.5, sigma), t64(0.5 + h, sigma)))
        assert exact == pytest.approx(exact_hand, rel=1e-10)
        assert exact - 0.5 * z * z == pytest.approx(-(z**3) / 6, rel=1e-2)


@pytest.mark.parametrize("method", ["exact", "mc"])
def test_laplace_expectation_routes_refuse_or_agree_with_the_closed_form(method):
    """Laplace's log p has a kink at x = loc: pointwise t-derivatives of log p miss the point mass, exactly as
    for the 'neg_hessian' Fisher route, which refuses. kl_taylor_terms by 'exact'/'mc' must either refuse with a
    FisherKLError or return c₂ = ½δᵀIδ (I = diag(1,1)/σ²). Bug: it returns a wrong c₂ (0 by mc; 97% off by
    quadrature with a stated error of ~1e-19)."""
    m = families.family("laplace")
    theta = t64(0.5, 1.5)
    delta = 0.1 * unit_direction(2, 0)
    c2 = 0.5 * float(delta @ delta) / 1.5**2
    try:
        est = kl_taylor_terms(m, theta, delta, 3, method=method, seed=0, return_error=True)
    except FisherKLError:
        return
    assert float(est.value[2]) == pytest.approx(c2, abs=max(4 * float(est.error[2]), 1e-6 * c2))


def test_monte_carlo_first_coefficient_is_zero_so_small_steps_stay_usable():
    """c₁ = −E[d/dt log p] = 0 exactly (E[score] = 0; the docstring says c₀ = c₁ = 0). Estimating it by Monte
    Carlo adds noise of size |δ|/√n, which swamps c₂ ~ |δ|² for small δ: at |δ| = 1.4e-3 kl_taylor(method='mc')
    returned −4.8e-6 ± 3.7e-6 for a true value 6.7e-7 (a negative KL). Bug: c₁ is estimated instead of set to 0."""
    m = families.family("normal")
    theta, delta = t64(0.5, 1.5), t64(1e-3, 1e-3)
    est = kl_taylor_terms(m, theta, delta, 3, method="mc", seed=0, return_error=True)
    assert float(est.value[1]) == 0.0 and float(est.error[1]) == 0.0
    exact = float(kl_taylor(m, theta, delta, order=2, method="closed"))
    approx = kl_taylor(m, theta, delta, order=2, method="mc", seed=0, return_error=True)
    assert float(approx.value) == pytest.approx(exact, rel=0.05)
    assert float(approx.error) < 0.05 * exact


# --- shapes, dtypes, errors -------------------------------------------------------------------------------


def test_batches_broadcast_and_dtype_follows_the_input():
    m = families.family("gamma")
    thetas = t64(2.5, 1.7).repeat(3, 1) * t64(1.0, 1.2, 1.5).unsqueeze(-1)
    delta = t64(0.1, -0.05)
    batch = kl_taylor_terms(m, thetas, delta, 4)
    assert batch.shape == (3, 5)
    for i in range(3):
        torch.testing.assert_close(batch[i], kl_taylor_terms(m, thetas[i], delta, 4), rtol=1e-14, atol=0)
    assert kl_taylor(m, thetas, delta, order=3).shape == (3,)
    f32 = kl_taylor_terms(m, thetas[0].float(), delta.float(), 3)
    assert f32.dtype == torch.float32
    torch.testing.assert_close(f32.double(), batch[0, :4], rtol=1e-4, atol=1e-9)
    # plain Python scalars are accepted for one-parameter families (torch's default dtype, float32 here)
    assert float(kl_taylor(families.family("poisson"), 3.5, 0.3, order=6)) == pytest.approx(
        sum(poisson_terms(3.5, 0.3, 6)), rel=1e-5
    )


def test_bad_arguments_raise_clear_errors():
    m = families.family("normal")
    theta = t64(0.5, 1.5)
    for order in (1, 7, 2.5, "3"):
        with pytest.raises(ParameterError, match="order"):
            kl_taylor(m, theta, t64(0.1, 0.1), order=order)
    with pytest.raises(RouteError, match="unknown method"):
        kl_taylor(m, theta, t64(0.1, 0.1), method="quadrature")
    with pytest.raises(ParameterError, match="delta"):
        kl_taylor(m, theta, t64(0.1, 0.1, 0.1))
    with pytest.raises(ParameterError, match="finite"):
        kl_taylor(m, theta, t64(math.nan, 0.1))
    with pytest.raises(ParameterError, match="scale"):
        kl_taylor(m, t64(0.5, -1.0), t64(0.1, 0.1))
    with pytest.raises(RouteError, match="closed"):
        kl_taylor(families.family("logistic"), t64(0.5, 1.5), t64(0.1, 0.1), method="closed")
    with pytest.raises(NonRegularModelError):
        kl_taylor(families.family("uniform"), t64(0.0, 1.0), t64(0.1, 0.1))
