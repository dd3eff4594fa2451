"""Statistics: regressions with per-row closed-form Fisher, observed and sandwich information, fits and
the summary table.

Oracles: statsmodels' GLM (estimates, standard errors from the expected information, its observed
Hessian, HC0 sandwich, log-likelihood, p-values, intervals); the Weibull Fisher of the literature
pulled back by hand; scipy quadrature of a Kumaraswamy score; scipy.optimize on a numpy
log-likelihood; scipy's trigamma for the Gamma Hessian.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special, stats

import fisherkl as fk
from fisherkl.stats import expected_information, log_likelihood, scores

sm = pytest.importorskip("statsmodels.api", reason="statsmodels is a test extra installed by `make install`")
F64 = torch.float64
EULER = 0.5772156649015329


def design(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([np.ones(n), rng.normal(size=(n, 3))])


BETA = np.array([0.3, 0.5, -0.4, 0.2])


@pytest.fixture(scope="module")
def poisson_data():
    x = design(400)
    y = np.random.default_rng(1).poisson(np.exp(x @ BETA)).astype(float)
    return x, y


def test_poisson_glm_matches_statsmodels(poisson_data):
    x, y = poisson_data
    model = fk.regression("poisson", torch.tensor(x))
    fit = fk.fit(model, torch.tensor(y))
    ref = sm.GLM(y, x, family=sm.families.Poisson()).fit(tol=1e-13)
    np.testing.assert_allclose(fit.theta.numpy(), ref.params, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fit.std_errors("expected").numpy(), ref.bse, rtol=1e-7)
    assert fit.loglik == pytest.approx(ref.llf, rel=1e-12)
    # canonical link: observed = expected = XᵀWX, and statsmodels' observed Hessian agrees
    hess = sm.GLM(y, x, family=sm.families.Poisson()).hessian(ref.params, observed=True)
    np.testing.assert_allclose(fit.observed_information().numpy(), -hess, rtol=1e-8)
    robust = sm.GLM(y, x, family=sm.families.Poisson()).fit(tol=1e-13, cov_type="HC0")
    np.testing.assert_allclose(fit.std_errors("sandwich").numpy(), robust.bse, rtol=1e-7)
    # the summary's z, p-values and 95% intervals
    summary = fit.summary()
    np.testing.assert_allclose([r.z for r in summary.rows], ref.tvalues, rtol=1e-7)
    np.testing.assert_allclose([r.p_value for r in summary.rows], ref.pvalues, rtol=1e-5, atol=1e-300)
    np.testing.assert_allclose([[r.low, r.high] for r in summary.rows], ref.conf_int(0.05), rtol=1e-7)
    text = str(summary)
    for name in ("x0", "x3", "std err", "P>|z|", "√CRB", "poisson regression, link log", "400"):
        assert name in text


def test_probit_expected_and_observed_information_match_statsmodels():
    """A non-canonical link: expected (n·I) and observed information differ, and each matches statsmodels."""
    x = design(300, seed=2)
    p = stats.norm.cdf(x @ BETA)
    y = (np.random.default_rng(3).uniform(size=300) < p).astype(float)
    model = fk.regression("bernoulli", torch.tensor(x), link="probit")
    fit = fk.fit(model, torch.tensor(y))
    glm = sm.GLM(y, x, family=sm.families.Binomial(link=sm.families.links.Probit()))
    ref = glm.fit(tol=1e-13)
    np.testing.assert_allclose(fit.theta.numpy(), ref.params, rtol=1e-8, atol=1e-9)
    expected, observed = fit.expected_information().numpy(), fit.observed_information().numpy()
    np.testing.assert_allclose(expected, -glm.hessian(ref.params, observed=False), rtol=1e-8)
    np.testing.assert_allclose(observed, -glm.hessian(ref.params, observed=True), rtol=1e-7)
    assert np.abs(expected - observed).max() > 1e-3 * np.abs(expected).max()  # they do differ
    np.testing.assert_allclose(fit.std_errors("expected").numpy(), ref.bse, rtol=1e-6)
    newton = fk.fit(model, torch.tensor(y), method="newton")
    np.testing.assert_allclose(newton.theta.numpy(), ref.params, rtol=1e-8, atol=1e-9)


def test_weibull_regression_fisher_is_the_pulled_back_closed_form():
    """Weibull(scale λᵢ = exp(xᵢᵀβ), concentration k = exp(u)): with the Fisher of one observation
    [[k²/λ², −(1−γ)/λ], [−(1−γ)/λ, ((1−γ)² + π²/6)/k²]] and J = ∂(λ, k)/∂(β, u):
    F_ββ = k² Σ xxᵀ, F_βu = −(1−γ)k Σ x, F_uu = n((1−γ)² + π²/6)."""
    x = design(200, seed=4)
    model = fk.regression("weibull", torch.tensor(x))
    assert model.names == ("x0", "x1", "x2", "x3", "log_concentration")
    k = 1.7
    theta = model.parameters(BETA, concentration=k)
    est = model.fisher_estimate(theta)
    got = fk.fisher(model, theta)
    want = np.zeros((5, 5))
    want[:4, :4] = k**2 * x.T @ x
    want[:4, 4] = want[4, :4] = -(1 - EULER) * k * x.sum(0)
    want[4, 4] = 200 * ((1 - EULER) ** 2 + math.pi**2 / 6)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-10)
    assert est.method == "per-row closed" and float(est.error.abs().max()) == 0


def test_weibull_fit_matches_scipy_optimize():
    x = design(300, seed=5)
    rng = np.random.default_rng(6)
    lam, k = np.exp(x @ BETA), 1.7
    y = lam * rng.weibull(k, size=300)

    def nll(p):
        b, kk = p[:4], np.exp(p[4])
        lm = np.exp(x @ b)
        return -np.sum(np.log(kk / lm) + (kk - 1) * np.log(y / lm) - (y / lm) ** kk)

    ref = optimize.minimize(nll, np.zeros(5), method="BFGS", options={"gtol": 1e-10})
    fit = fk.fit(fk.regression("weibull", torch.tensor(x)), torch.tensor(y))
    np.testing.assert_allclose(fit.theta.numpy(), ref.x, rtol=1e-5, atol=1e-6)
    assert fit.loglik == pytest.approx(-ref.fun, rel=1e-10)
    # the gradient of the log-likelihood vanishes at the estimate
    assert float(scores(fit.model, fit.theta, fit.data).sum(0).abs().max()) < 1e-8


def test_regression_without_a_closed_form_uses_exact_per_row_quadrature():
    """Kumaraswamy(a = exp(xᵀβ), b): each row's Fisher by quadrature, checked against scipy.quad of E[s sᵀ]."""
    x = np.array([[1.0, -0.5], [1.0, 0.0], [1.0, 0.7]])
    model = fk.regression("kumaraswamy", torch.tensor(x))
    theta = model.parameters([0.4, 0.3], concentration0=2.5)
    est = model.fisher_estimate(theta)
    assert est.method.startswith("per-row") and "mc" not in est.method
    b = 2.5

    def row_fisher(a):
        def pdf(t):
            return a * b * t ** (a - 1) * (1 - t**a) ** (b - 1)

        def sa(t):
            return 1 / a + np.log(t) - (b - 1) * t**a * np.log(t) / (1 - t**a)

        def sb(t):
            return 1 / b + np.log(1 - t**a)

        q = [
            [
                integrate.quad(lambda t, f=f, g=g: f(t) * g(t) * pdf(t), 0, 1, epsabs=1e-13, limit=200)[0]
                for g in (sa, sb)
            ]
            for f in (sa, sb)
        ]
        return np.array(q)

    want = np.zeros((3, 3))
    for row in x:
        a = math.exp(row @ np.array([0.4, 0.3]))
        jac = np.array([[a * row[0], a * row[1], 0.0], [0.0, 0.0, b]])  # ∂(a, b)/∂(β₀, β₁, log b)
        want += jac.T @ row_fisher(a) @ jac
    np.testing.assert_allclose(est.value.numpy(), want, rtol=1e-8)


def test_gamma_observed_information_and_iid_fit():
    """Gamma(α, β) log-likelihood Hessian: −n[[ψ′(α), −1/β], [−1/β, α/β²]] for any data (scipy trigamma);
    the MLE agrees with scipy.stats.gamma.fit."""
    gamma = fk.family("gamma")
    data = torch.tensor(stats.gamma.rvs(2.5, scale=1 / 1.7, size=500, random_state=7), dtype=F64)
    theta = torch.tensor([2.2, 1.5], dtype=F64)
    n = 500
    want = n * np.array([[special.polygamma(1, 2.2), -1 / 1.5], [-1 / 1.5, 2.2 / 1.5**2]])
    np.testing.assert_allclose(fk.observed_information(gamma, theta, data).numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(expected_information(gamma, theta, data).numpy(), want, rtol=1e-12)
    fit = fk.fit(gamma, data)
    shape, _, scale = stats.gamma.fit(data.numpy(), floc=0)
    np.testing.assert_allclose(fit.theta.numpy(), [shape, 1 / scale], rtol=1e-5)
    assert float(log_likelihood(gamma, fit.theta, data)) == pytest.approx(fit.loglik, rel=1e-14)
    s = fk.sandwich_covariance(gamma, fit.theta, data)
    assert s.shape == (2, 2) and bool(torch.isfinite(s).all())


def test_regression_refuses_bad_inputs_by_name():
    x = torch.tensor(design(20), dtype=F64)
    with pytest.raises(fk.ParameterError, match="link"):
        fk.regression("poisson", x, link="loglog")
    with pytest.raises(fk.ParameterError, match="not a parameter"):
        fk.regression("normal", x, on="mean")
    with pytest.raises(fk.ParameterError, match="cannot also be fixed"):
        fk.regression("normal", x, fixed={"loc": 1.0})
    with pytest.raises(fk.ParameterError, match="NaN"):
        fk.regression("poisson", x.clone().fill_(math.nan))
    with pytest.raises(fk.ParameterError, match="non-regular"):
        fk.regression("uniform", x)
    ident = fk.regression("poisson", x, link="identity")
    with pytest.raises(fk.ParameterError, match=r"rate.*must be > 0.*rows' parameters"):
        fk.fisher(ident, torch.tensor([-1.0, 0, 0, 0], dtype=F64))
    model = fk.regression("poisson", x)
    with pytest.raises(fk.ParameterError, match="20 rows"):
        fk.fit(model, torch.ones(19, dtype=F64))
    with pytest.raises(fk.ParameterError, match="outside the support"):
        fk.fit(model, torch.full((20,), -1.0, dtype=F64))
    normal = fk.regression("normal", x, fixed={"scale": 2.0})
    assert normal.names == ("x0", "x1", "x2", "x3")
    np.testing.assert_allclose(fk.fisher(normal, torch.zeros(4, dtype=F64)).numpy(), (x.T @ x).numpy() / 4)


def test_intercept_and_dataframe_columns():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"age": [1.0, 2.0, 3.0, 4.0], "dose": [0.5, 0.1, 0.2, 0.9]})
    model = fk.regression("bernoulli", frame, intercept=True)
    assert model.names == ("const", "age", "dose") and model.link == "logit"
    # logit link at β = 0: Fisher = XᵀX/4
    x = np.column_stack([np.ones(4), frame.to_numpy()])
    np.testing.assert_allclose(fk.fisher(model, torch.zeros(3, dtype=F64)).numpy(), x.T @ x / 4, rtol=1e-14)
