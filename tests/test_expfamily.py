"""Exponential families in natural coordinates: I(η) = ∇²A(η), KL = Bregman divergence of A,
Jeffreys = ⟨η_p − η_q, μ_p − μ_q⟩, and the pull-back to the usual coordinates.

Natural parameters η(θ), log-partitions A(η) and mean parameters μ = E[T(x)] (from the known
moments) are written here with numpy / scipy.special, independently of fisherkl.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special
from torch.distributions import constraints

import fisherkl
from helpers import rel_err, t64

F64 = torch.float64


def logit(p):
    return np.log(p) - np.log1p(-p)


def log1pexp(x):
    return np.logaddexp(0.0, x)


def cb_mean(lam: float) -> float:
    """E[x] under the density ∝ λ^x (1 − λ)^{1−x} on [0, 1], by quadrature."""

    def dens(x):
        return lam**x * (1 - lam) ** (1 - x)

    z = integrate.quad(dens, 0, 1, epsabs=1e-15, epsrel=1e-13)[0]
    return integrate.quad(lambda x: x * dens(x), 0, 1, epsabs=1e-15, epsrel=1e-13)[0] / z


def cb_log_partition(e: float) -> float:
    """log((e^η − 1)/η), written for η of either sign (and η → 0)."""
    if abs(e) < 1e-8:
        return e / 2
    return math.log(math.expm1(e) / e) if e < 30 else e - math.log(e) + math.log1p(-math.exp(-e))


# name -> (η(θ), A(η), μ(θ) = E[T(x)]), numpy; fixed arguments at their defaults unless noted
N_BINOMIAL, R_NEGBIN, N_MULTINOMIAL, XM_PARETO = 10, 5.0, 10, 1.0
ORACLES = {
    "normal": (
        lambda t: np.array([t[0] / t[1] ** 2, -0.5 / t[1] ** 2]),
        lambda e: -(e[0] ** 2) / (4 * e[1]) - 0.5 * np.log(-2 * e[1]),
        lambda t: np.array([t[0], t[0] ** 2 + t[1] ** 2]),
    ),
    "lognormal": (  # T = (log x, log² x)
        lambda t: np.array([t[0] / t[1] ** 2, -0.5 / t[1] ** 2]),
        lambda e: -(e[0] ** 2) / (4 * e[1]) - 0.5 * np.log(-2 * e[1]),
        lambda t: np.array([t[0], t[0] ** 2 + t[1] ** 2]),
    ),
    "halfnormal": (  # T = x², A = log σ
        lambda t: np.array([-0.5 / t[0] ** 2]),
        lambda e: -0.5 * np.log(-2 * e[0]),
        lambda t: np.array([t[0] ** 2]),
    ),
    "exponential": (
        lambda t: np.array([-t[0]]),
        lambda e: -np.log(-e[0]),
        lambda t: np.array([1 / t[0]]),
    ),
    "gamma": (  # T = (log x, x)
        lambda t: np.array([t[0] - 1, -t[1]]),
        lambda e: special.gammaln(e[0] + 1) - (e[0] + 1) * np.log(-e[1]),
        lambda t: np.array([special.digamma(t[0]) - np.log(t[1]), t[0] / t[1]]),
    ),
    # 1/X ~ Gamma(α, β): the Gamma's η = (α − 1, −β) and A, with T(x) = (−log x, 1/x), h(x) = 1/x²
    "inversegamma": (
        lambda t: np.array([t[0] - 1, -t[1]]),
        lambda e: special.gammaln(e[0] + 1) - (e[0] + 1) * np.log(-e[1]),
        lambda t: np.array([special.digamma(t[0]) - np.log(t[1]), t[0] / t[1]]),
    ),
    "chi2": (  # T = log x
        lambda t: np.array([t[0] / 2 - 1]),
        lambda e: special.gammaln(e[0] + 1) + (e[0] + 1) * np.log(2),
        lambda t: np.array([special.digamma(t[0] / 2) + np.log(2)]),
    ),
    "rayleigh": (  # T = x², A = log σ²
        lambda t: np.array([-0.5 / t[0] ** 2]),
        lambda e: -np.log(-2 * e[0]),
        lambda t: np.array([2 * t[0] ** 2]),
    ),
    "pareto": (  # T = log x, α = −η − 1
        lambda t: np.array([-t[0] - 1]),
        lambda e: -np.log(-e[0] - 1) - (-e[0] - 1) * np.log(XM_PARETO),
        lambda t: np.array([np.log(XM_PARETO) + 1 / t[0]]),
    ),
    "beta": (  # T = (log x, log(1 − x))
        lambda t: np.array([t[0] - 1, t[1] - 1]),
        lambda e: special.gammaln(e[0] + 1) + special.gammaln(e[1] + 1) - special.gammaln(e[0] + e[1] + 2),
        lambda t: np.array([special.digamma(t[0]), special.digamma(t[1])]) - special.digamma(t[0] + t[1]),
    ),
    "continuousbernoulli": (
        lambda t: np.array([logit(t[0])]),
        lambda e: cb_log_partition(e[0]),
        lambda t: np.array([cb_mean(t[0])]),
    ),
    "bernoulli": (
        lambda t: np.array([logit(t[0])]),
        lambda e: log1pexp(e[0]),
        lambda t: np.array([t[0]]),
    ),
    "binomial": (
        lambda t: np.array([logit(t[0])]),
        lambda e: N_BINOMIAL * log1pexp(e[0]),
        lambda t: np.array([N_BINOMIAL * t[0]]),
    ),
    "geometric": (  # failures before the first success
        lambda t: np.array([np.log1p(-t[0])]),
        lambda e: -np.log(-np.expm1(e[0])),
        lambda t: np.array([(1 - t[0]) / t[0]]),
    ),
    "poisson": (
        lambda t: np.array([np.log(t[0])]),
        lambda e: np.exp(e[0]),
        lambda t: np.array([t[0]]),
    ),
    "negativebinomial": (  # successes (probability p) before the r-th failure
        lambda t: np.array([np.log(t[0])]),
        lambda e: -R_NEGBIN * np.log(-np.expm1(e[0])),
        lambda t: np.array([R_NEGBIN * t[0] / (1 - t[0])]),
    ),
    "categorical": (
        lambda t: np.log(t) - np.log1p(-t.sum()),
        lambda e: log1pexp(special.logsumexp(e)),
        lambda t: t,
    ),
    "multinomial": (
        lambda t: np.log(t) - np.log1p(-t.sum()),
        lambda e: N_MULTINOMIAL * log1pexp(special.logsumexp(e)),
        lambda t: N_MULTINOMIAL * t,
    ),
    "dirichlet": (  # T = log x
        lambda t: t - 1,
        lambda e: special.gammaln(e + 1).sum() - special.gammaln((e + 1).sum()),
        lambda t: special.digamma(t) - special.digamma(t.sum()),
    ),
}
EF_NAMES = list(ORACLES)

# a second θ per family (the first is the typical one)
OTHER = {
    "normal": (-1.0, 0.4),
    "lognormal": (0.7, 2.0),
    "halfnormal": (0.3,),
    "exponential": (0.2,),
    "gamma": (0.8, 4.0),
    "inversegamma": (0.8, 4.0),
    "chi2": (9.0,),
    "rayleigh": (0.4,),
    "pareto": (0.7,),
    "beta": (0.6, 9.0),
    "continuousbernoulli": (0.85,),
    "bernoulli": (0.8,),
    "binomial": (0.55,),
    "geometric": (0.7,),
    "poisson": (0.4,),
    "negativebinomial": (0.15,),
    "categorical": (0.6, 0.15),
    "multinomial": (0.05, 0.5),
    "dirichlet": (0.8, 5.0, 1.2),
}


def thetas(name: str) -> list[np.ndarray]:
    fam = fisherkl.family(name)
    return [np.asarray(fam.typical_theta, dtype=float), np.asarray(OTHER[name], dtype=float)]


def fd_hessian(f, x, h: float = 1e-3) -> np.ndarray:
    """∇²f by central differences, Richardson-extrapolated to 4th order (steps h and 2h)."""
    x = np.asarray(x, dtype=float)
    d = x.size
    steps = h * np.maximum(1.0, np.abs(x))

    def at(moves):
        y = x.copy()
        for i, s in moves:
            y[i] += s * steps[i]
        return f(y)

    def second(i, j, s):
        if i == j:
            return (at([(i, s)]) - 2 * f(x) + at([(i, -s)])) / (s * steps[i]) ** 2
        corners = at([(i, s), (j, s)]) - at([(i, s), (j, -s)]) - at([(i, -s), (j, s)]) + at([(i, -s), (j, -s)])
        return corners / (4 * s * s * steps[i] * steps[j])

    out = np.zeros((d, d))
    for i in range(d):
        for j in range(i, d):
            out[i, j] = out[j, i] = (4 * second(i, j, 1) - second(i, j, 2)) / 3
    return out


def test_the_exponential_families_are_the_expected_ones():
    """Every family with an exponential-family view has an oracle here (add one when a family gains a view)."""
    have = []
    for name in fisherkl.families.names():
        fam = fisherkl.family(name)
        if fam.natural(fam.typical()) is not None:
            have.append(name)
    assert set(have) == set(EF_NAMES)
    # the list is among them
    assert {"normal", "poisson", "gamma", "beta", "bernoulli", "categorical", "dirichlet", "exponential"} <= set(have)
    with pytest.raises(fisherkl.RouteError, match="exponential-family"):
        fisherkl.family("cauchy").exponential_family()


@pytest.mark.parametrize("name", EF_NAMES)
def test_natural_parameters_and_their_inverse(name):
    fam = fisherkl.family(name)
    eta_of, _, _ = ORACLES[name]
    for theta in thetas(name):
        eta = fam.natural(t64(theta))
        np.testing.assert_allclose(eta.numpy(), eta_of(theta), rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(fam.from_natural(eta).numpy(), theta, rtol=1e-12)


@pytest.mark.parametrize("name", EF_NAMES)
def test_fisher_in_natural_coordinates_is_the_hessian_of_a(name):
    fam = fisherkl.family(name)
    ef = fam.exponential_family()
    eta_of, log_partition, mean_of = ORACLES[name]
    for theta in thetas(name):
        eta = eta_of(theta)
        hessian = fd_hessian(log_partition, eta)
        got = fisherkl.fisher(ef, t64(eta), return_error=True)
        assert got.method == "closed"
        assert rel_err(got.value, hessian) <= 1e-7
        # ∇A = E[T]: the mean parameters from the known moments
        np.testing.assert_allclose(ef.mean_parameters(t64(eta)).numpy(), mean_of(theta), rtol=1e-10, atol=1e-12)
        # every exact route of the natural-coordinate model agrees with ∇²A
        for listed in fisherkl.available_routes(ef, t64(eta)):
            if "(mc)" in listed:
                continue
            kwargs = {"expectation": "exact"} if listed in ("score", "neg_hessian") else {}
            value = fisherkl.fisher(ef, t64(eta), listed, **kwargs)
            assert rel_err(value, got.value) <= 1e-8, listed


@pytest.mark.parametrize("name", EF_NAMES)
def test_pull_back_from_natural_coordinates_is_the_closed_form(name):
    fam = fisherkl.family(name)
    model = fisherkl.reparametrize(fam.exponential_family(), fam.natural)
    for theta in thetas(name):
        t = t64(theta)
        closed = fisherkl.fisher(fam, t, "closed")
        assert rel_err(fisherkl.fisher(model, t), closed) <= 1e-10
        assert rel_err(fisherkl.fisher(model, t, "kl_hessian"), closed) <= 1e-10


@pytest.mark.parametrize("name", EF_NAMES)
def test_kl_is_the_bregman_divergence_and_jeffreys_the_pairing(name):
    fam = fisherkl.family(name)
    ef = fam.exponential_family()
    eta_of, log_partition, mean_of = ORACLES[name]
    tp, tq = thetas(name)
    eta_p, eta_q = eta_of(tp), eta_of(tq)
    mu_p, mu_q = mean_of(tp), mean_of(tq)
    for (a, ea, ma), (eb, _mb) in (((tp, eta_p, mu_p), (eta_q, mu_q)), ((tq, eta_q, mu_q), (eta_p, mu_p))):
        bregman = log_partition(eb) - log_partition(ea) - np.dot(eb - ea, ma)
        b_theta = tq if a is tp else tp
        assert float(fisherkl.kl(fam, t64(a), t64(b_theta))) == pytest.approx(bregman, rel=1e-9)
        assert float(fisherkl.kl(ef, t64(ea), t64(eb))) == pytest.approx(bregman, rel=1e-9)
    pairing = float(np.dot(eta_p - eta_q, mu_p - mu_q))
    assert float(fisherkl.jeffreys(fam, t64(tp), t64(tq))) == pytest.approx(pairing, rel=1e-9)
    assert float(fisherkl.jeffreys(ef, t64(eta_p), t64(eta_q))) == pytest.approx(pairing, rel=1e-9)


def test_natural_domain_is_validated():
    ef = fisherkl.family("gamma").exponential_family()
    with pytest.raises(fisherkl.ParameterError, match="natural parameter space"):
        fisherkl.fisher(ef, t64([1.0, 0.5]))  # η₂ = −β must be < 0
    with pytest.raises(fisherkl.ParameterError):
        fisherkl.kl(ef, t64([1.0, -1.0]), t64([-2.0, -1.0]))  # η₁ = α − 1 must be > −1


# --------------------------------------------------------------------------------------------------
# A user-built exponential family
# --------------------------------------------------------------------------------------------------


def user_poisson(**extra) -> fisherkl.ExponentialFamily:
    """Poisson as p(x | η) = exp(η x − e^η) / x! on {0, 1, 2, …}."""
    return fisherkl.ExponentialFamily(
        lambda eta: eta[..., 0].exp(),
        1,
        sufficient_statistic=lambda x: x.unsqueeze(-1),
        log_base_measure=lambda x: -torch.lgamma(x + 1),
        support=constraints.nonnegative_integer,
        **extra,
    )


@pytest.mark.parametrize("lam", [0.3, 2.0, 25.0])
def test_user_built_poisson_pulled_back_to_the_rate(lam):
    ef = user_poisson()
    rate = fisherkl.reparametrize(ef, torch.log, names=["rate"])
    t = t64([lam])
    assert float(fisherkl.fisher(rate, t)) == pytest.approx(1 / lam, rel=1e-12)
    assert float(fisherkl.fisher(rate, t, "kl_hessian")) == pytest.approx(1 / lam, rel=1e-12)
    # KL = Bregman of e^η: λ_q − λ_p − λ_p log(λ_q/λ_p)
    other = 1.7 * lam
    expected = other - lam - lam * math.log(other / lam)
    assert float(fisherkl.kl(rate, t, t64([other]))) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("lam", [0.3, 2.0, 25.0])
def test_user_built_poisson_score_route_is_the_series(lam):
    """The score route sums over x = 0, 1, 2, … with the user's T and h: E[(x − e^η)²] = e^η = ∇²A."""
    ef = user_poisson()
    eta = t64([math.log(lam)])
    assert fisherkl.available_routes(ef, eta) == ["closed", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian"]
    est = fisherkl.fisher(ef, eta, "score", return_error=True)
    assert est.method == "score/series"
    assert float(est.value) == pytest.approx(lam, rel=1e-10)
    assert float(fisherkl.fisher(ef, eta, "closed")) == pytest.approx(lam, rel=1e-13)
    rate = fisherkl.reparametrize(ef, torch.log)
    assert float(fisherkl.fisher(rate, t64([lam]), "score")) == pytest.approx(1 / lam, rel=1e-10)


def test_user_built_poisson_with_center_scores_by_series():
    ef = user_poisson(center=lambda eta: (eta[..., 0].exp(), eta[..., 0].exp().sqrt()))
    for lam in (0.3, 2.0, 25.0):
        est = fisherkl.fisher(ef, t64([math.log(lam)]), "score", return_error=True)
        assert est.method == "score/series"
        assert float(est.value) == pytest.approx(lam, rel=1e-10)


def test_user_built_continuous_family_exponential_distribution():
    """Exponential as exp(ηx + log(−η)) on (0, ∞): I(η) = 1/η², and 1/λ² after pull-back to the rate."""
    ef = fisherkl.ExponentialFamily(
        lambda eta: -torch.log(-eta[..., 0]),
        1,
        sufficient_statistic=lambda x: x.unsqueeze(-1),
        support=constraints.positive,
        domain=lambda eta: eta[..., 0] < 0,
    )
    for lam in (0.3, 1.7, 6.0):
        eta = t64([-lam])
        for route in ("closed", "kl_hessian"):
            assert float(fisherkl.fisher(ef, eta, route)) == pytest.approx(1 / lam**2, rel=1e-12), route
        # quadrature without a centre/scale hint: accurate to its stated error, which is small
        for route in ("score", "neg_hessian"):
            est = fisherkl.fisher(ef, eta, route, expectation="exact", return_error=True)
            assert est.method == f"{route}/quadrature"
            assert abs(float(est.value) - 1 / lam**2) <= float(est.error) + 1e-12 / lam**2, route
            assert float(est.error) <= 1e-6 / lam**2, route
        rate = fisherkl.reparametrize(ef, lambda r: -r)
        assert float(fisherkl.fisher(rate, t64([lam]))) == pytest.approx(1 / lam**2, rel=1e-12)
    with pytest.raises(fisherkl.ParameterError, match="natural parameter space"):
        fisherkl.fisher(ef, t64([0.5]))
