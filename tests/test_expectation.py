"""The exact expectation engine against scipy quadrature and closed-form moments; stated errors are honest."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, special, stats

from fisherkl.expectation import exact_scheme, expect_exact, expect_mc
from fisherkl.special import trigamma

F64 = torch.float64


def moments(dist, fn):
    def integrand(x):
        return dist.log_prob(x), fn(x)

    return integrand


@pytest.mark.parametrize(
    ("dist", "scipy_dist"),
    [
        (torch.distributions.Normal(torch.tensor(3.0, dtype=F64), torch.tensor(0.01, dtype=F64)), stats.norm(3, 0.01)),
        (
            torch.distributions.Gamma(torch.tensor(0.4, dtype=F64), torch.tensor(2.0, dtype=F64)),
            stats.gamma(0.4, scale=0.5),
        ),
        (
            torch.distributions.Gamma(torch.tensor(400.0, dtype=F64), torch.tensor(2.0, dtype=F64)),
            stats.gamma(400, scale=0.5),
        ),
        (torch.distributions.Beta(torch.tensor(0.8, dtype=F64), torch.tensor(5.0, dtype=F64)), stats.beta(0.8, 5.0)),
        (
            torch.distributions.Beta(torch.tensor(300.0, dtype=F64), torch.tensor(200.0, dtype=F64)),
            stats.beta(300, 200),
        ),
        (torch.distributions.Cauchy(torch.tensor(1.0, dtype=F64), torch.tensor(2.0, dtype=F64)), stats.cauchy(1, 2)),
    ],
    ids=["narrow-normal", "gamma-singular", "gamma-peaked", "beta-singular", "beta-peaked", "cauchy"],
)
def test_quadrature_matches_scipy(dist, scipy_dist):
    # E[log-density²] and E[atan(x)] — smooth, bounded or slowly growing integrands
    value, err, scheme = expect_exact(dist, moments(dist, lambda x: torch.atan(x).unsqueeze(-1)))
    assert scheme == "quadrature"
    lo, hi = scipy_dist.support()
    m, sd = scipy_dist.mean(), scipy_dist.std()
    if math.isfinite(sd):  # integrate where the mass is (scipy's quad misses narrow peaks on infinite ranges)
        lo, hi = max(lo, m - 40 * sd), min(hi, m + 40 * sd)
        pieces = [(lo, m), (m, hi)]
    else:
        pieces = [(lo, 1.0), (1.0, hi)]
    ref = sum(
        integrate.quad(lambda x: math.atan(x) * scipy_dist.pdf(x), a, b, epsabs=1e-15, epsrel=1e-12, limit=500)[0]
        for a, b in pieces
    )
    assert float(value[0]) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert float(err[0]) < 1e-8


def test_quadrature_heavy_right_tail_lognormal():
    # X and 1/X have the same law when log X ~ N(0, σ²), and atan(x) + atan(1/x) = π/2, so E[atan X] = π/4
    d = torch.distributions.LogNormal(torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64))
    value, err, _ = expect_exact(d, moments(d, lambda x: torch.atan(x).unsqueeze(-1)))
    assert float(value[0]) == pytest.approx(math.pi / 4, rel=1e-12)
    assert float(err[0]) < 1e-9


def test_series_poisson_large_rate_and_tail_bound():
    lam = 2500.0
    d = torch.distributions.Poisson(torch.tensor(lam, dtype=F64))
    assert exact_scheme(d) == "series"
    value, err, _ = expect_exact(d, moments(d, lambda k: torch.stack([k, (k - lam) ** 2], -1)))
    assert float(value[0]) == pytest.approx(lam, rel=1e-12)
    assert float(value[1]) == pytest.approx(lam, rel=1e-10)  # variance
    assert float(err.max()) < 1e-8


@pytest.mark.parametrize(
    ("lp", "lq", "restarts"),
    [
        (1e6, 9e5, False),  # q's mass 100 sd of p below p's: the sum starts 12 sd below q's mean
        (9e5, 1e6, False),  # and runs past q's bulk on the right
        (1e4, 8.5e3, True),  # χ²'s terms q²/p peak at λq²/λp = 7225, below where both masses start (7394)
    ],
)
def test_series_covers_q_and_restarts_from_zero_where_the_left_tail_is_open(monkeypatch, lp, lq, restarts):
    import fisherkl as fk
    from fisherkl import expectation

    calls = []
    original = expectation._series_from
    monkeypatch.setattr(expectation, "_series_from", lambda *a: calls.append(a[6]) or original(*a))
    poisson = fk.family("poisson")
    p, q = torch.tensor([lp], dtype=F64), torch.tensor([lq], dtype=F64)
    kl = fk.kl(poisson, p, q, method="exact", return_error=True)
    want = lp * math.log(lp / lq) - lp + lq  # closed form
    assert abs(float(kl.value) - want) <= float(kl.error) + 1e-15 * want
    assert float(kl.error) <= 1e-9 * want
    chi2 = fk.chi2(poisson, p, q, method="exact", return_error=True)
    exponent = (lq - lp) ** 2 / lp  # Σ q²/p − 1 = exp((λq − λp)²/λp) − 1
    want = math.expm1(exponent) if exponent < 709 else math.inf
    if math.isinf(want):
        assert math.isinf(float(chi2.value))
    else:
        assert abs(float(chi2.value) - want) <= float(chi2.error) + 1e-15 * want
        assert float(chi2.error) <= 1e-9 * want
    assert any(float(start.max()) > 0 for start in calls)  # started at the mass, not at 0
    assert any(float(start.max()) == 0 for start in calls) == restarts


def test_series_geometric_heavy_tail():
    p = 0.01
    d = torch.distributions.Geometric(probs=torch.tensor(p, dtype=F64))
    value, _, _ = expect_exact(d, moments(d, lambda k: k.unsqueeze(-1)))
    assert float(value[0]) == pytest.approx((1 - p) / p, rel=1e-11)


def test_finite_batched():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], dtype=F64)
    d = torch.distributions.Categorical(probs=probs)
    value, _, scheme = expect_exact(d, moments(d, lambda k: (k.to(F64) ** 2).unsqueeze(-1)))
    assert scheme == "finite"
    expected = (probs * torch.arange(3, dtype=F64) ** 2).sum(-1)
    torch.testing.assert_close(value[..., 0], expected, rtol=1e-15, atol=0)


def test_no_exact_scheme_for_multivariate_continuous():
    d = torch.distributions.Dirichlet(torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    assert exact_scheme(d) is None


def test_batched_quadrature_with_very_different_scales():
    scale = torch.tensor([1e-3, 1.0, 1e3], dtype=F64)
    d = torch.distributions.HalfNormal(scale)
    value, _, _ = expect_exact(d, moments(d, lambda x: (x**2).unsqueeze(-1)))
    torch.testing.assert_close(value[..., 0], scale**2, rtol=1e-11, atol=0)


def test_mc_standard_error_is_honest():
    # over 200 independent seeds, |mean − truth| ≤ 2 SE about 95% of the time
    d = torch.distributions.Exponential(torch.tensor(1.0, dtype=F64))
    inside = 0
    for seed in range(200):
        m, se = expect_mc(d, moments(d, lambda x: x.unsqueeze(-1)), n_samples=400, seed=seed)
        inside += int(abs(float(m[0]) - 1.0) <= 2 * float(se[0]))
    assert 180 <= inside <= 198


def test_mc_seed_reproducible_and_generator():
    d = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
    a, _ = expect_mc(d, moments(d, lambda x: x.unsqueeze(-1)), n_samples=100, seed=7)
    b, _ = expect_mc(d, moments(d, lambda x: x.unsqueeze(-1)), n_samples=100, seed=7)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    c, _ = expect_mc(d, moments(d, lambda x: x.unsqueeze(-1)), n_samples=100, generator=g1)
    e, _ = expect_mc(d, moments(d, lambda x: x.unsqueeze(-1)), n_samples=100, generator=g2)
    assert torch.equal(c, e)


@pytest.mark.parametrize("x", [1e-6, 1e-2, 0.3, 1.0, 2.5, 7.9, 12.0, 13.7, 100.0, 1e5])
def test_trigamma_against_scipy(x):
    t = torch.tensor(x, dtype=F64, requires_grad=True)
    value = trigamma(t)
    assert float(value.detach()) == pytest.approx(special.polygamma(1, x), rel=2e-15)
    (g,) = torch.autograd.grad(value, t)
    assert float(g) == pytest.approx(special.polygamma(2, x), rel=1e-13)
