"""The full catalogue: KL where torch has none, the multivariate normals, the listing, singular and
non-regular points, and bad input for every new family.

Oracles are computed here with numpy / scipy (quadrature, explicit sums, the general Gaussian
formula), never by fisherkl.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from scipy import integrate, special, stats

import fisherkl
from fisherkl.cli import main
from helpers import compositions, rel_err, t64

F64 = torch.float64
EULER = float(np.euler_gamma)
HYPOTHESIS = settings(max_examples=5, deadline=None, derandomize=True, phases=[Phase.generate])


def quad(f, lo: float, hi: float, points=()) -> float:
    edges = [lo, *sorted(p for p in points if lo < p < hi), hi]
    return sum(integrate.quad(f, a, b, epsabs=1e-14, epsrel=1e-12, limit=1000)[0] for a, b in itertools.pairwise(edges))


def kl_by_quadrature(logpdf_p, logpdf_q, lo: float, hi: float, points=()) -> float:
    """∫ p (log p − log q) dx, with the integrand set to 0 where p has underflowed."""

    def f(x):
        lp = logpdf_p(x)
        if not np.isfinite(lp) or lp < -745:
            return 0.0
        return math.exp(lp) * (lp - logpdf_q(x))

    return quad(f, lo, hi, points)


# --------------------------------------------------------------------------------------------------
# KL for the families torch has no KL for: quadrature and explicit sums
# --------------------------------------------------------------------------------------------------


def kumaraswamy_logpdf(a: float, b: float):
    return lambda x: math.log(a * b) + (a - 1) * math.log(x) + (b - 1) * math.log1p(-(x**a))


def mixture_logpdf(theta, k: int):
    t = np.asarray(theta, dtype=float)
    w = np.append(t[: k - 1], 1 - t[: k - 1].sum())
    loc, scale = t[k - 1 : 2 * k - 1], t[2 * k - 1 :]
    return lambda x: float(special.logsumexp(np.log(w) + stats.norm.logpdf(x, loc, scale)))


def vonmises_logpdf(m: float, kappa: float):
    # log I₀(κ) = log i0e(κ) + κ
    return lambda x: kappa * math.cos(x - m) - math.log(2 * math.pi) - (math.log(special.i0e(kappa)) + kappa)


def continuous_bernoulli_logpdf(lam: float):
    z = quad(lambda x: lam**x * (1 - lam) ** (1 - x), 0.0, 1.0)
    return lambda x: x * math.log(lam) + (1 - x) * math.log1p(-lam) - math.log(z)


def weibull_kl_bauckhage(l1: float, k1: float, l2: float, k2: float) -> float:
    """Bauckhage (2013), KL[Weibull(λ₁, k₁) ‖ Weibull(λ₂, k₂)] (scale λ, shape k)."""
    return (
        math.log(k1 / l1**k1)
        - math.log(k2 / l2**k2)
        + (k1 - k2) * (math.log(l1) - EULER / k1)
        + (l1 / l2) ** k2 * math.gamma(k2 / k1 + 1)
        - 1
    )


def negative_binomial_kl_sum(p1: float, p2: float, r: float) -> float:
    """Σ_k pmf₁(k) log(pmf₁/pmf₂); scipy's nbinom(n, p) counts failures before n successes: p = 1 − torch's p."""
    d1, d2 = stats.nbinom(r, 1 - p1), stats.nbinom(r, 1 - p2)
    k = np.arange(0, int(d1.isf(1e-20)) + 200)
    return float(np.sum(d1.pmf(k) * (d1.logpmf(k) - d2.logpmf(k))))


def multinomial_kl_sum(theta_p, theta_q, n: int) -> float:
    p = np.array([*theta_p, 1 - sum(theta_p)])
    q = np.array([*theta_q, 1 - sum(theta_q)])
    dp, dq = stats.multinomial(n, p), stats.multinomial(n, q)
    total = 0.0
    for x in compositions(n, p.size):
        total += dp.pmf(x) * (dp.logpmf(x) - dq.logpmf(x))
    return total


def categorical_kl(theta_p, theta_q) -> float:
    p = np.array([*theta_p, 1 - sum(theta_p)])
    q = np.array([*theta_q, 1 - sum(theta_q)])
    return float(np.sum(p * np.log(p / q)))


def kl_oracle(name: str, fixed: dict, tp, tq) -> float:
    if name in ("studentt", "logistic"):
        dist = (lambda m, s: stats.t(fixed.get("df", 5.0), m, s)) if name == "studentt" else stats.logistic
        p, q = dist(*tp), dist(*tq)
        return kl_by_quadrature(p.logpdf, q.logpdf, -np.inf, np.inf, (tp[0], tq[0]))
    if name == "vonmises":
        return kl_by_quadrature(vonmises_logpdf(*tp), vonmises_logpdf(*tq), -math.pi, math.pi, (tp[0], tq[0]))
    if name == "weibull":
        p, q = stats.weibull_min(c=tp[1], scale=tp[0]), stats.weibull_min(c=tq[1], scale=tq[0])
        return kl_by_quadrature(p.logpdf, q.logpdf, 0.0, np.inf, (tp[0], tq[0]))
    if name == "rayleigh":
        p, q = stats.rayleigh(scale=tp[0]), stats.rayleigh(scale=tq[0])
        return kl_by_quadrature(p.logpdf, q.logpdf, 0.0, np.inf, (tp[0], tq[0]))
    if name == "pareto":
        xm = fixed.get("scale", 1.0)
        p, q = stats.pareto(tp[0], scale=xm), stats.pareto(tq[0], scale=xm)
        return kl_by_quadrature(p.logpdf, q.logpdf, xm, np.inf, (2 * xm,))
    if name == "kumaraswamy":
        return kl_by_quadrature(kumaraswamy_logpdf(*tp), kumaraswamy_logpdf(*tq), 0.0, 1.0, (0.5,))
    if name == "continuousbernoulli":
        return kl_by_quadrature(continuous_bernoulli_logpdf(*tp), continuous_bernoulli_logpdf(*tq), 0.0, 1.0)
    if name == "mixture_normal":
        k = fixed.get("k", 2)
        points = [*tp[k - 1 : 2 * k - 1], *tq[k - 1 : 2 * k - 1]]
        return kl_by_quadrature(mixture_logpdf(tp, k), mixture_logpdf(tq, k), -np.inf, np.inf, points)
    if name == "negativebinomial":
        return negative_binomial_kl_sum(tp[0], tq[0], fixed.get("total_count", 5.0))
    if name == "multinomial":
        return multinomial_kl_sum(tp, tq, fixed.get("total_count", 10))
    raise KeyError(name)


KL_CASES = [
    ("studentt", {}, (0.3, 1.2), (-0.5, 2.0)),
    ("studentt", {"df": 2.5}, (0.0, 1.0), (1.0, 0.5)),
    ("logistic", {}, (0.3, 1.2), (-0.5, 2.0)),
    ("logistic", {}, (2.0, 0.3), (0.0, 1.0)),
    ("vonmises", {}, (0.3, 2.0), (2.5, 0.7)),
    ("vonmises", {}, (-3.0, 15.0), (3.0, 10.0)),  # near ±π: the densities wrap around
    ("weibull", {}, (1.3, 2.2), (0.8, 1.1)),
    ("weibull", {}, (0.5, 0.8), (2.0, 3.0)),
    ("rayleigh", {}, (1.5,), (0.7,)),
    ("pareto", {}, (2.5,), (0.6,)),
    ("pareto", {"scale": 3.0}, (1.2,), (4.0,)),
    ("kumaraswamy", {}, (2.0, 3.0), (0.8, 1.5)),
    ("kumaraswamy", {}, (1.5, 1.2), (4.0, 6.0)),
    ("continuousbernoulli", {}, (0.3,), (0.85,)),
    ("continuousbernoulli", {}, (0.5,), (0.02,)),
    ("mixture_normal", {}, (0.3, -1.0, 1.0, 0.7, 0.9), (0.6, 0.0, 2.0, 1.5, 0.5)),
    ("mixture_normal", {"k": 3}, (0.2, 0.3, -2.0, 0.0, 1.5, 0.5, 1.0, 2.0), (0.3, 0.3, -1.0, 0.5, 1.0, 1.0, 1.0, 1.0)),
    ("negativebinomial", {}, (0.4,), (0.6,)),
    ("negativebinomial", {"total_count": 2.5}, (0.9,), (0.3,)),
    ("multinomial", {}, (0.2, 0.3), (0.5, 0.1)),
    ("multinomial", {"total_count": 4, "k": 4}, (0.1, 0.6, 0.05), (0.25, 0.25, 0.25)),
]


@pytest.mark.parametrize(
    ("name", "fixed", "tp", "tq"), KL_CASES, ids=[f"{c[0]}{c[1] or ''}-{c[2]}-{c[3]}" for c in KL_CASES]
)
def test_kl_where_torch_has_none(name, fixed, tp, tq):
    fam = fisherkl.family(name, **fixed)
    expected = kl_oracle(name, fixed, tp, tq)
    reverse = kl_oracle(name, fixed, tq, tp)
    for method in ("auto", "exact"):
        est = fisherkl.kl(fam, t64(tp), t64(tq), method=method, return_error=True)
        assert est.exact
        assert est.value.dtype == F64 and est.value.shape == ()
        assert float(est.value) == pytest.approx(expected, rel=1e-8, abs=1e-13), method
        back = fisherkl.kl(fam, t64(tq), t64(tp), method=method)
        assert float(back) == pytest.approx(reverse, rel=1e-8, abs=1e-13), method
    jeff = fisherkl.jeffreys(fam, t64(tp), t64(tq))
    assert float(jeff) == pytest.approx(expected + reverse, rel=1e-8)


def test_weibull_kl_closed_form_of_bauckhage():
    """Bauckhage's formula (written here) agrees with quadrature, and fisherkl agrees with both."""
    fam = fisherkl.family("weibull")
    for tp, tq in [
        ((1.3, 2.2), (0.8, 1.1)),
        ((0.5, 0.8), (2.0, 3.0)),
        ((3.0, 5.0), (2.5, 4.0)),
        ((1.0, 1.0), (2.0, 1.0)),
    ]:
        closed = weibull_kl_bauckhage(*tp, *tq)
        assert closed == pytest.approx(kl_oracle("weibull", {}, tp, tq), rel=1e-9)
        assert float(fisherkl.kl(fam, t64(tp), t64(tq))) == pytest.approx(closed, rel=1e-12)
    # k₁ = k₂ = 1: exponentials with rates 1/λ: KL = log(λ₂/λ₁) + λ₁/λ₂ − 1
    assert weibull_kl_bauckhage(1.0, 1.0, 2.0, 1.0) == pytest.approx(math.log(2) + 0.5 - 1, rel=1e-14)


def test_closed_form_kls_of_the_new_families():
    """Rayleigh, Pareto (same scale) and multinomial in closed form, against textbook formulas."""
    rayleigh = fisherkl.family("rayleigh")
    for s1, s2 in ((1.5, 0.7), (0.2, 3.0)):
        expected = 2 * math.log(s2 / s1) + s1**2 / s2**2 - 1
        assert float(fisherkl.kl(rayleigh, t64([s1]), t64([s2]))) == pytest.approx(expected, rel=1e-13)
    pareto = fisherkl.family("pareto", scale=2.0)
    for a1, a2 in ((2.5, 0.6), (0.4, 7.0)):
        expected = math.log(a1 / a2) + a2 / a1 - 1
        assert float(fisherkl.kl(pareto, t64([a1]), t64([a2]))) == pytest.approx(expected, rel=1e-13)
    for n, tp, tq in ((10, (0.2, 0.3), (0.5, 0.1)), (4, (0.1, 0.6, 0.05), (0.25, 0.25, 0.25))):
        fam = fisherkl.family("multinomial", total_count=n, k=len(tp) + 1)
        expected = n * categorical_kl(tp, tq)
        assert expected == pytest.approx(multinomial_kl_sum(tp, tq, n), rel=1e-12)
        assert float(fisherkl.kl(fam, t64(tp), t64(tq))) == pytest.approx(expected, rel=1e-13)


@HYPOTHESIS
@given(
    a=st.tuples(st.floats(-2, 2), st.floats(0.3, 3)),
    b=st.tuples(st.floats(-2, 2), st.floats(0.3, 3)),
)
def test_student_t_kl_by_quadrature_property(a, b):
    fam = fisherkl.family("studentt")
    got = float(fisherkl.kl(fam, t64(a), t64(b)))
    assert got == pytest.approx(kl_oracle("studentt", {}, a, b), rel=1e-8, abs=1e-13)


# --------------------------------------------------------------------------------------------------
# Multivariate normal: the general formula, the routes, and k = 50
# --------------------------------------------------------------------------------------------------


def mvn_sigma_torch(theta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, Σ = LLᵀ) with L's lower triangle row-major in θ[k:], built here with torch ops."""
    rows, cols = np.tril_indices(k)
    tril = torch.zeros(k, k, dtype=theta.dtype)
    tril = tril.index_put((torch.as_tensor(rows), torch.as_tensor(cols)), theta[k:])
    return theta[:k], tril @ tril.T


def gaussian_fisher_autodiff(mean_cov, theta: torch.Tensor) -> np.ndarray:
    """I_ij = ∂ᵢμᵀΣ⁻¹∂ⱼμ + ½ tr(Σ⁻¹∂ᵢΣΣ⁻¹∂ⱼΣ) with ∂μ, ∂Σ by torch.autograd.functional.jacobian."""
    d_mean, d_cov = torch.autograd.functional.jacobian(mean_cov, theta)  # [k, d], [k, k, d]
    _, cov = mean_cov(theta)
    prec = torch.linalg.inv(cov)
    mean_part = d_mean.T @ prec @ d_mean
    b = torch.einsum("ab,bcj->acj", prec, d_cov)  # Σ⁻¹ ∂ⱼΣ
    cov_part = 0.5 * torch.einsum("abi,baj->ij", b, b)
    return (mean_part + cov_part).numpy()


def gaussian_fisher_fd(mean_cov, theta, h: float = 0.5) -> np.ndarray:
    """Same formula, ∂μ and ∂Σ by central differences (exact: μ, Σ are quadratic in θ)."""
    t = np.asarray(theta, dtype=float)
    d = t.size
    prec = np.linalg.inv(mean_cov(t)[1])
    dm, dc = [], []
    for i in range(d):
        e = np.zeros(d)
        e[i] = h
        (m1, c1), (m0, c0) = mean_cov(t + e), mean_cov(t - e)
        dm.append((m1 - m0) / (2 * h))
        dc.append((c1 - c0) / (2 * h))
    return np.array(
        [[dm[i] @ prec @ dm[j] + 0.5 * np.trace(prec @ dc[i] @ prec @ dc[j]) for j in range(d)] for i in range(d)]
    )


def mvn_mean_cov_np(k: int):
    def mean_cov(t):
        tril = np.zeros((k, k))
        tril[np.tril_indices(k)] = t[k:]
        return t[:k], tril @ tril.T

    return mean_cov


def lowrank_mean_cov_np(k: int, rank: int):
    def mean_cov(t):
        w = t[k : k + k * rank].reshape(k, rank)
        return t[:k], w @ w.T + np.diag(t[k + k * rank :])

    return mean_cov


def mvn_theta(k: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.tril_indices(k)
    tril = np.where(rows == cols, rng.uniform(0.5, 2.0, rows.size), rng.uniform(-0.7, 0.7, rows.size))
    return np.concatenate([rng.normal(size=k), tril])


@pytest.mark.parametrize("k", [2, 3])
def test_mvn_closed_fisher_is_the_general_gaussian_formula(k):
    fam = fisherkl.family("mvn", k=k)
    rng = np.random.default_rng(10 + k)
    for theta in [np.asarray(fam.typical_theta), mvn_theta(k, rng), mvn_theta(k, rng)]:
        t = t64(theta)
        by_autodiff = gaussian_fisher_autodiff(lambda th, k=k: mvn_sigma_torch(th, k), t.clone())
        by_fd = gaussian_fisher_fd(mvn_mean_cov_np(k), theta)
        assert rel_err(by_autodiff, by_fd) <= 1e-12
        closed = fisherkl.fisher(fam, t, "closed")
        assert closed.shape == (fam.dim, fam.dim) == (k + k * (k + 1) // 2,) * 2
        assert rel_err(closed, by_fd) <= 1e-12
        for route in ("kl_hessian", "jeffreys_hessian"):
            assert rel_err(fisherkl.fisher(fam, t, route), by_fd) <= 1e-10, route
        # the mean block is Σ⁻¹
        sigma = mvn_mean_cov_np(k)(theta)[1]
        np.testing.assert_allclose(closed[:k, :k].numpy(), np.linalg.inv(sigma), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("route", ["score", "neg_hessian"])
def test_mvn_monte_carlo_routes_within_four_standard_errors(route):
    k = 3
    fam = fisherkl.family("mvn", k=k)
    theta = mvn_theta(k, np.random.default_rng(5))
    expected = gaussian_fisher_fd(mvn_mean_cov_np(k), theta)
    est = fisherkl.fisher(fam, t64(theta), route, n_samples=20_000, seed=11, return_error=True)
    assert est.method == f"{route}/mc"
    value, se = est.value.numpy(), est.error.numpy()
    slack = 1e-9 * np.abs(expected).max()
    assert np.all(np.abs(value - expected) <= 4 * se + slack)
    if route == "score":
        assert np.all(se > 0)


def test_mvn_k50_closed_form():
    k = 50
    fam = fisherkl.family("mvn", k=k)
    rng = np.random.default_rng(50)
    theta = mvn_theta(k, rng)
    theta[k:][np.tril_indices(k)[0] == np.tril_indices(k)[1]] += 1.0  # a well-conditioned L
    info = fisherkl.fisher(fam, t64(theta))
    n = k + k * (k + 1) // 2
    assert info.shape == (n, n) == (1325, 1325)
    assert info.dtype == F64
    assert torch.isfinite(info).all()
    assert rel_err(info.T, info) <= 1e-14
    eig = torch.linalg.eigvalsh(info)
    assert float(eig.min()) > -1e-10 * float(eig.max())
    # a few entries against the formula, with ∂Σ/∂L_ab = E_ab Lᵀ + L E_ba written out here
    rows, cols = np.tril_indices(k)
    tril = np.zeros((k, k))
    tril[rows, cols] = theta[k:]
    prec = np.linalg.inv(tril @ tril.T)

    def d_sigma(i: int) -> np.ndarray:
        a, b = rows[i - k], cols[i - k]
        e = np.zeros((k, k))
        e[a, b] = 1.0
        return e @ tril.T + tril @ e.T

    np.testing.assert_allclose(info[:k, :k].numpy(), prec, rtol=1e-10, atol=1e-12)
    assert float(info[:k, k:].abs().max()) == 0.0  # mean and covariance decouple
    for i, j in [(k, k), (k + 1, k + 2), (n - 1, n - 1), (k + 100, n - 7), *rng.integers(k, n, size=(6, 2)).tolist()]:
        expected = 0.5 * np.trace(prec @ d_sigma(i) @ prec @ d_sigma(j))
        assert float(info[i, j]) == pytest.approx(expected, rel=1e-9, abs=1e-12 * np.abs(prec).max() ** 2)


@pytest.mark.parametrize(("k", "rank"), [(3, 1), (4, 2)])
def test_lowrank_mvn_is_the_general_gaussian_formula(k, rank):
    fam = fisherkl.family("lowrank_mvn", k=k, rank=rank)
    rng = np.random.default_rng(k * 10 + rank)
    for theta in [
        np.asarray(fam.typical_theta),
        np.concatenate([rng.normal(size=k), rng.normal(size=k * rank), rng.uniform(0.3, 2.0, k)]),
    ]:
        expected = gaussian_fisher_fd(lowrank_mean_cov_np(k, rank), theta)
        t = t64(theta)
        assert rel_err(fisherkl.fisher(fam, t, "closed"), expected) <= 1e-11
        assert rel_err(fisherkl.fisher(fam, t, "kl_hessian"), expected) <= 1e-10


def test_gaussian_families_agree_where_they_coincide():
    """mvn with a diagonal L = mvn_diag (σ = L_ii); lowrank_mvn with W = 0 = mvn_diag in D = σ²."""
    loc, sigma = np.array([0.3, -1.0, 2.0]), np.array([0.5, 1.5, 2.5])
    diag = fisherkl.fisher(fisherkl.family("mvn_diag", k=3), t64(np.concatenate([loc, sigma]))).numpy()
    np.testing.assert_allclose(diag, np.diag(np.concatenate([1 / sigma**2, 2 / sigma**2])), rtol=1e-14)
    rows, cols = np.tril_indices(3)
    tril = np.where(rows == cols, sigma[rows], 0.0)
    full = fisherkl.fisher(fisherkl.family("mvn", k=3), t64(np.concatenate([loc, tril]))).numpy()
    keep = [0, 1, 2, *(3 + np.flatnonzero(rows == cols))]
    np.testing.assert_allclose(full[np.ix_(keep, keep)], diag, rtol=1e-13, atol=1e-15)
    low = fisherkl.fisher(
        fisherkl.family("lowrank_mvn", k=3, rank=1), t64(np.concatenate([loc, np.zeros(3), sigma**2]))
    ).numpy()
    np.testing.assert_allclose(np.diag(low)[-3:], 1 / (2 * sigma**4), rtol=1e-13)
    np.testing.assert_allclose(low[:3, :3], np.diag(1 / sigma**2), rtol=1e-13)


@HYPOTHESIS
@given(st.lists(st.floats(-1, 1), min_size=3, max_size=3), st.lists(st.floats(0.3, 2), min_size=2, max_size=2))
def test_mvn_k2_property(loc_off, diag):
    theta = [loc_off[0], loc_off[1], diag[0], loc_off[2], diag[1]]
    fam = fisherkl.family("mvn", k=2)
    expected = gaussian_fisher_fd(mvn_mean_cov_np(2), theta)
    for route in ("closed", "kl_hessian"):
        assert rel_err(fisherkl.fisher(fam, t64(theta), route), expected) <= 1e-10


def test_mvn_from_the_cli_with_named_blocks(capsys):
    argv = ["fisher", "mvn", "--fixed", "k=2", "--theta", "loc=0.5,-1; scale_tril=1.2,0.3,0.8", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    theta = [0.5, -1.0, 1.2, 0.3, 0.8]
    np.testing.assert_allclose(out["fisher"], gaussian_fisher_fd(mvn_mean_cov_np(2), theta), rtol=1e-12, atol=1e-14)
    assert out["theta"] == dict(zip(fisherkl.family("mvn", k=2).names, theta))
    # the plain comma-separated form gives the same matrix
    assert main(["fisher", "mvn", "--fixed", "k=2", "--theta", "0.5,-1,1.2,0.3,0.8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fisher"] == out["fisher"]


# --------------------------------------------------------------------------------------------------
# `fisherkl families`
# --------------------------------------------------------------------------------------------------


def test_families_listing_has_every_family_with_parameters_and_routes(capsys):
    assert main(["families"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert main(["families", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == fisherkl.families.names()
    for name in fisherkl.families.names():
        fam = fisherkl.family(name)
        (line,) = [ln for ln in lines if ln.split()[0] == name]
        row = rows[name]
        assert [tuple(p) for p in row["params"]] == fam.param_table()
        for pname, constraint in fam.param_table():
            assert f"{pname} {constraint}" in line, (name, pname)
        if fam.regular:
            routes = fisherkl.available_routes(fam, fam.typical())
            assert row["routes"] == routes
            assert ", ".join(routes) in line
            assert ("closed" in routes) == (name not in ("kumaraswamy", "mixture_normal"))
        else:
            assert row["routes"] == ["none (non-regular)"]
            assert "non-regular" in line
        assert row["fixed"] == {key: spec.default for key, spec in fam.fixed.items()}
        for key in fam.fixed:
            assert f"{key}=" in line


# --------------------------------------------------------------------------------------------------
# Singular points (mixture) and non-regular models (Pareto with a free scale)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["auto", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian"])
def test_mixture_at_a_symmetric_point_warns_and_is_singular(route):
    """Two components with equal loc and scale: the density is N(μ, σ²) whatever the weight, and the
    locations/scales enter only through w₁ + w₂ = 1 times one normal: rank 2, eigenvalues
    (w₁² + w₂²)/σ² and 2(w₁² + w₂²)/σ²."""
    w1, mu, sigma = 0.3, 0.5, 1.2
    fam = fisherkl.family("mixture_normal")
    with pytest.warns(fisherkl.SingularFisherWarning, match="components 0 and 1") as record:
        info = fisherkl.fisher(fam, t64([w1, mu, mu, sigma, sigma]), route)
    assert "singular" in str(record[0].message)
    assert torch.isfinite(info).all()
    eig = np.sort(np.linalg.eigvalsh(info.numpy()))
    assert np.all(np.abs(eig[:3]) <= 1e-10 * eig[-1])
    s = w1**2 + (1 - w1) ** 2
    np.testing.assert_allclose(eig[3:], [s / sigma**2, 2 * s / sigma**2], rtol=1e-8)


def test_mixture_warns_only_where_components_coincide():
    fam = fisherkl.family("mixture_normal", k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fisherkl.SingularFisherWarning)
        info = fisherkl.fisher(fam, t64([0.2, 0.3, -3.0, 0.0, 3.0, 0.5, 1.0, 1.5]))
        eig = torch.linalg.eigvalsh(info)
        assert float(eig.min()) > 1e-6 * float(eig.max())
    with pytest.warns(fisherkl.SingularFisherWarning, match="components 1 and 2"):
        info = fisherkl.fisher(fam, t64([0.2, 0.3, -1.0, 0.7, 0.7, 1.0, 0.8, 0.8]))
    assert torch.isfinite(info).all()


@pytest.mark.parametrize("method", ["auto", "closed", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian"])
def test_pareto_with_a_free_scale_is_non_regular(method):
    fam = fisherkl.family("pareto", scale=None)
    assert fam.names == ("scale", "alpha")
    with pytest.raises(fisherkl.NonRegularModelError) as info:
        fisherkl.fisher(fam, t64([1.0, 2.5]), method)
    message = str(info.value)
    assert "support" in message
    assert "does not exist" in message
    assert "pareto" in message
    with pytest.raises(fisherkl.NonRegularModelError):
        fisherkl.kl_quadratic(fam, t64([1.0, 2.5]), t64([0.01, 0.0]))


def test_pareto_with_a_free_scale_still_has_a_kl():
    """KL[Pareto(x₁, α₁) ‖ Pareto(x₂, α₂)] = log(α₁/α₂) + α₂ log(x₁/x₂) + α₂/α₁ − 1 for x₂ ≤ x₁."""
    fam = fisherkl.family("pareto", scale=None)
    for (x1, a1), (x2, a2) in [((1.0, 2.5), (0.8, 2.0)), ((3.0, 0.7), (1.0, 1.5))]:
        expected = math.log(a1 / a2) + a2 * math.log(x1 / x2) + a2 / a1 - 1
        p, q = stats.pareto(a1, scale=x1), stats.pareto(a2, scale=x2)
        assert expected == pytest.approx(kl_by_quadrature(p.logpdf, q.logpdf, x1, np.inf, (2 * x1,)), rel=1e-9)
        assert float(fisherkl.kl(fam, t64([x1, a1]), t64([x2, a2]))) == pytest.approx(expected, rel=1e-12)
    # the support of q does not cover p's: infinite
    assert float(fisherkl.kl(fam, t64([1.0, 2.5]), t64([1.5, 2.5]))) == math.inf


# --------------------------------------------------------------------------------------------------
# Bad input for every new family: ParameterError naming the parameter
# --------------------------------------------------------------------------------------------------

# (family, fixed, bad θ, words the message must contain)
BAD = [
    ("logistic", {}, [0.0, -1.0], ["scale", "> 0"]),
    ("gumbel", {}, [0.0, 0.0], ["scale", "> 0"]),
    ("studentt", {}, [math.inf, 1.0], ["loc", "inf"]),
    ("studentt", {"df": 3.0}, [0.0, -2.0], ["scale", "-2"]),
    ("inversegamma", {}, [-1.0, 1.0], ["concentration", "> 0"]),
    ("inversegamma", {}, [1.0, 0.0], ["rate"]),
    ("chi2", {}, [0.0], ["df", "> 0"]),
    ("weibull", {}, [-1.3, 2.2], ["scale", "> 0"]),
    ("weibull", {}, [1.3, 0.0], ["concentration", "> 0"]),
    ("rayleigh", {}, [-0.5], ["scale", "> 0"]),
    ("pareto", {}, [0.0], ["alpha", "> 0"]),
    ("pareto", {"scale": None}, [-1.0, 2.0], ["scale", "> 0"]),
    ("kumaraswamy", {}, [2.0, -3.0], ["concentration0", "> 0"]),
    ("kumaraswamy", {}, [0.0, 3.0], ["concentration1"]),
    ("continuousbernoulli", {}, [1.0], ["probs", "(0, 1)"]),
    ("continuousbernoulli", {}, [-0.2], ["probs"]),
    ("vonmises", {}, [0.3, 0.0], ["concentration", "> 0"]),
    ("vonmises", {}, [math.inf, 1.0], ["loc"]),
    ("negativebinomial", {}, [1.0], ["probs", "(0, 1)"]),
    ("negativebinomial", {"total_count": 2.5}, [0.0], ["probs"]),
    ("multinomial", {}, [0.6, 0.5], ["sum", "less than 1"]),
    ("multinomial", {"total_count": 4, "k": 4}, [0.2, -0.1, 0.3], ["probs[1]"]),
    ("mvn", {}, [0.0, 0.0, 1.0, 0.3, -1.0], ["scale_tril[1,1]", "> 0"]),
    ("mvn", {}, [0.0, 0.0, 0.0, 0.3, 1.0], ["scale_tril[0,0]"]),
    ("mvn", {"k": 3}, [0.0, 0.0, 0.0, 1.0, 0.1, 1.0, 0.1, 0.1, -1.0], ["scale_tril[2,2]"]),
    ("mvn_diag", {}, [0.0, 0.0, 1.0, 0.0], ["scale[1]", "> 0"]),
    ("lowrank_mvn", {}, [0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 1.0, -1.0, 1.0], ["cov_diag[1]", "> 0"]),
    ("mixture_normal", {}, [0.3, -1.0, 1.0, 0.7, -0.9], ["scale[1]", "> 0"]),
    ("mixture_normal", {}, [1.3, -1.0, 1.0, 0.7, 0.9], ["weights"]),
    ("mixture_normal", {"k": 3}, [0.6, 0.5, -1.0, 0.0, 1.0, 1.0, 1.0, 1.0], ["weights", "sum"]),
]


def _entry_points(fam, theta):
    good = fam.typical()
    return [
        lambda: fam.validate(theta),
        lambda: fam(theta),
        lambda: fisherkl.fisher(fam, theta) if fam.regular else fam.validate(theta),
        lambda: fisherkl.kl(fam, theta, good),
        lambda: fisherkl.kl(fam, good, theta),
        lambda: fisherkl.jeffreys(fam, theta, good),
    ]


@pytest.mark.parametrize(("name", "fixed", "theta", "words"), BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_theta_names_the_parameter(name, fixed, theta, words):
    fam = fisherkl.family(name, **fixed)
    t = t64(theta)
    with pytest.raises(fisherkl.ParameterError) as info:
        fam.validate(t)
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)
    assert name in message
    for call in _entry_points(fam, t):
        with pytest.raises(fisherkl.ParameterError):
            call()


NEW_FAMILIES = [
    ("logistic", {}),
    ("gumbel", {}),
    ("studentt", {}),
    ("inversegamma", {}),
    ("chi2", {}),
    ("weibull", {}),
    ("rayleigh", {}),
    ("pareto", {}),
    ("kumaraswamy", {}),
    ("continuousbernoulli", {}),
    ("vonmises", {}),
    ("negativebinomial", {}),
    ("multinomial", {}),
    ("mvn", {}),
    ("mvn", {"k": 3}),
    ("mvn_diag", {}),
    ("lowrank_mvn", {"k": 3, "rank": 2}),
    ("mixture_normal", {}),
]


@pytest.mark.parametrize(("name", "fixed"), NEW_FAMILIES, ids=[f"{n}{f or ''}" for n, f in NEW_FAMILIES])
def test_nan_and_wrong_dimension_name_the_parameter(name, fixed):
    fam = fisherkl.family(name, **fixed)
    good = fam.typical()
    for i, pname in enumerate(fam.names):
        bad = good.clone()
        bad[i] = math.nan
        for call in _entry_points(fam, bad):
            with pytest.raises(fisherkl.ParameterError) as info:
                call()
            assert f"'{pname}'" in str(info.value) and "nan" in str(info.value), str(info.value)
    for wrong in (good[:-1], torch.cat([good, good[:1]]), good.reshape(1, -1).expand(2, -1)[:, :-1]):
        for call in _entry_points(fam, wrong):
            with pytest.raises(fisherkl.ParameterError, match=f"last dimension {fam.dim}"):
                call()


@pytest.mark.parametrize(
    ("name", "fixed", "word"),
    [
        ("studentt", {"df": -1.0}, "df"),
        ("studentt", {"df": math.nan}, "df"),
        ("negativebinomial", {"total_count": 0.0}, "total_count"),
        ("multinomial", {"total_count": 2.5}, "total_count"),
        ("multinomial", {"k": 1}, "k"),
        ("mvn", {"k": 0}, "k"),
        ("mvn_diag", {"k": 1.5}, "k"),
        ("lowrank_mvn", {"rank": 0}, "rank"),
        ("mixture_normal", {"k": 1}, "k"),
        ("pareto", {"scale": -1.0}, "scale"),
        ("pareto", {"shape": 2.0}, "shape"),
    ],
)
def test_bad_fixed_arguments(name, fixed, word):
    with pytest.raises(fisherkl.ParameterError, match=word):
        fisherkl.family(name, **fixed)
