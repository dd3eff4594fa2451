"""fisherkl.geometry against independent oracles: closed-form Fisher–Rao distances from the literature
(written out here in numpy), published reference values, scipy (special functions, quadrature, maximum
likelihood fits) and torch's own KL divergences — never values produced by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch.distributions import Gamma, NegativeBinomial, Normal, Weibull

import fisherkl
from fisherkl.geometry import (
    christoffel,
    closed_distance_names,
    cramer_rao,
    exp_map,
    fisher_rao_distance,
    geodesic,
    jeffreys_prior,
    kl_step,
    log_map,
    natural_gradient,
)

F64 = torch.float64
EULER = 0.5772156649015329
PRESENT = set(fisherkl.families.names())


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


# --- literature closed forms, in numpy (the oracles) -------------------------------------------------------------


def np_location_scale(m1, s1, m2, s2, a, c, e):
    """Half-plane distance for I = σ⁻²[[a, c], [c, e]] (DESIGN.md)."""
    b = e - c * c / a
    u1, u2 = m1 + c / a * s1, m2 + c / a * s2
    return np.sqrt(b) * np.arccosh(1 + ((a / b) * (u1 - u2) ** 2 + (s1 - s2) ** 2) / (2 * s1 * s2))


def np_cat(p, q):
    p = np.concatenate([p, 1 - p.sum(-1, keepdims=True)], -1)
    q = np.concatenate([q, 1 - q.sum(-1, keepdims=True)], -1)
    return 2 * np.arccos(np.clip(np.sqrt(p * q).sum(-1), -1, 1))


def np_mvn_equal_means(t1, t2, k):
    out = []
    for a, b in zip(t1, t2):
        la, lb = np.zeros((k, k)), np.zeros((k, k))
        la[np.tril_indices(k)], lb[np.tril_indices(k)] = a[k:], b[k:]
        lam = np.linalg.eigvals(np.linalg.solve(la @ la.T, lb @ lb.T)).real
        out.append(np.sqrt(0.5 * np.sum(np.log(lam) ** 2)))
    return np.array(out)


LS = {  # (a, c, e) from DESIGN.md
    "normal": (1, 0, 2),
    "lognormal": (1, 0, 2),
    "laplace": (1, 0, 1),
    "cauchy": (0.5, 0, 0.5),
    "logistic": (1 / 3, 0, (math.pi**2 + 3) / 9),
    "gumbel": (1, EULER - 1, (1 - EULER) ** 2 + math.pi**2 / 6),
}


def oracle(name: str, fixed: dict, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """The literature distance between rows of t1 and t2."""
    if name in LS:
        return np_location_scale(t1[:, 0], t1[:, 1], t2[:, 0], t2[:, 1], *LS[name])
    if name == "studentt":
        nu = fixed.get("df", 5.0)
        a, e = (nu + 1) / (nu + 3), 2 * nu / (nu + 3)
        return np_location_scale(t1[:, 0], t1[:, 1], t2[:, 0], t2[:, 1], a, 0, e)
    if name == "weibull":  # log X is Gumbel(min) with location log λ, scale 1/k; c = 1 − γ
        c = 1 - EULER
        return np_location_scale(
            np.log(t1[:, 0]), 1 / t1[:, 1], np.log(t2[:, 0]), 1 / t2[:, 1], 1, c, c * c + math.pi**2 / 6
        )
    p1, p2 = t1[:, 0], t2[:, 0]
    if name == "bernoulli":
        return 2 * np.abs(np.arcsin(np.sqrt(p1)) - np.arcsin(np.sqrt(p2)))
    if name == "binomial":
        return 2 * np.sqrt(fixed.get("total_count", 10)) * np.abs(np.arcsin(np.sqrt(p1)) - np.arcsin(np.sqrt(p2)))
    if name == "categorical":
        return np_cat(t1, t2)
    if name == "multinomial":
        return np.sqrt(fixed.get("total_count", 10)) * np_cat(t1, t2)
    if name == "poisson":
        return 2 * np.abs(np.sqrt(p1) - np.sqrt(p2))
    if name in ("exponential", "pareto"):
        return np.abs(np.log(p1 / p2))
    if name == "halfnormal":
        return np.sqrt(2) * np.abs(np.log(p1 / p2))
    if name == "rayleigh":
        return 2 * np.abs(np.log(p1 / p2))
    if name == "geometric":
        return 2 * np.abs(np.arctanh(np.sqrt(1 - p1)) - np.arctanh(np.sqrt(1 - p2)))
    if name == "negativebinomial":
        return 2 * np.sqrt(fixed.get("total_count", 5.0)) * np.abs(np.arctanh(np.sqrt(p1)) - np.arctanh(np.sqrt(p2)))
    if name == "mvn":
        return np_mvn_equal_means(t1, t2, fixed.get("k", 2))
    if name == "mvn_diag":
        k = fixed.get("k", 2)
        each = np_location_scale(t1[:, :k], t1[:, k:], t2[:, :k], t2[:, k:], 1, 0, 2)
        return np.sqrt((each**2).sum(-1))
    raise KeyError(name)


def draw(name: str, fixed: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    if name in (*LS, "studentt"):
        return np.stack([rng.uniform(-3, 3, n), np.exp(rng.uniform(-1.5, 1.5, n))], -1)
    if name == "weibull":
        return np.exp(rng.uniform(-1, 1, (n, 2)))
    if name in ("categorical", "multinomial"):
        k = fixed.get("k", 3)
        return rng.dirichlet(np.ones(k), n)[:, : k - 1] * 0.98 + 0.01 / k
    if name in ("bernoulli", "binomial", "geometric", "negativebinomial"):
        return rng.uniform(0.05, 0.95, (n, 1))
    if name in ("poisson", "exponential", "pareto", "halfnormal", "rayleigh"):
        return np.exp(rng.uniform(-2, 2, (n, 1)))
    if name == "mvn":  # equal means: the closed form's domain
        k = fixed.get("k", 2)
        loc = np.broadcast_to(rng.normal(size=k), (n, k))
        tril = rng.normal(size=(n, k * (k + 1) // 2)) * 0.5
        diag = np.cumsum(np.arange(1, k + 1)) - 1  # positions of the diagonal in the row-major lower triangle
        tril[:, diag] = np.exp(rng.uniform(-1, 1, (n, k)))
        return np.concatenate([loc, tril], -1)
    if name == "mvn_diag":
        k = fixed.get("k", 2)
        return np.concatenate([rng.uniform(-2, 2, (n, k)), np.exp(rng.uniform(-1, 1, (n, k)))], -1)
    raise KeyError(name)


# vonmises is registered but solved numerically (in natural coordinates): tests/test_vonmises_geometry.py
CLOSED_CASES = [(n, {}) for n in closed_distance_names() if n != "vonmises"] + [
    ("binomial", {"total_count": 7}),
    ("categorical", {"k": 4}),
    ("multinomial", {"total_count": 3, "k": 4}),
    ("negativebinomial", {"total_count": 2.5}),
    ("studentt", {"df": 3.0}),
    ("mvn", {"k": 3}),
]


def case_id(case) -> str:
    name, fixed = case
    return name + "".join(f"-{k}{v}" for k, v in fixed.items())


@pytest.mark.parametrize("case", CLOSED_CASES, ids=case_id)
def test_closed_and_numerical_distances_match_the_literature(case):
    name, fixed = case
    if name not in PRESENT:
        pytest.skip(f"family {name!r} not in the catalogue yet")
    model = fisherkl.family(name, **fixed)
    rng = np.random.default_rng(abs(hash(case_id(case))) % 2**32)
    t1, t2 = draw(name, fixed, 4, rng), draw(name, fixed, 4, rng)
    if name == "mvn":  # the closed form needs equal means
        k = fixed.get("k", 2)
        t2[:, :k] = t1[:, :k]
    want = oracle(name, fixed, t1, t2)
    closed = fisher_rao_distance(model, t64(t1), t64(t2), method="closed")
    numerical = fisher_rao_distance(model, t64(t1), t64(t2), method="geodesic")
    np.testing.assert_allclose(closed.numpy(), want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(numerical.numpy(), want, rtol=1e-6, atol=0)


def test_reference_values():
    normal, beta = fisherkl.family("normal"), fisherkl.family("beta")
    for method in ("closed", "geodesic"):
        d = fisher_rao_distance(normal, t64([0.0, 1.0]), t64([1.0, 2.0]), method=method)
        assert abs(float(d) - 1.1893809) < 5e-8
    d = fisher_rao_distance(beta, t64([1.0, 1.0]), t64([2.0, 3.0]))
    assert abs(float(d) - 0.81837) < 5e-6
    with pytest.raises(fisherkl.RouteError, match="no closed-form"):
        fisher_rao_distance(beta, t64([1.0, 1.0]), t64([2.0, 3.0]), method="closed")


def user_models():
    """(model, oracle distance function) for closed forms reached only through user models."""
    r = 3.0
    negbin = fisherkl.Model(
        lambda t: NegativeBinomial(r, probs=t[..., 0]),
        1,
        names=["probs"],
        constraints=[fisherkl.constraints.unit_interval],
    )
    alpha = 2.5
    gamma_rate = fisherkl.Model(
        lambda t: Gamma(alpha, t[..., 0]), 1, names=["rate"], constraints=[fisherkl.constraints.positive]
    )
    weibull = fisherkl.Model(
        lambda t: Weibull(t[..., 0], t[..., 1]),
        2,
        names=["scale", "concentration"],
        constraints=[fisherkl.constraints.positive] * 2,
    )
    return [
        (
            "negbin",
            negbin,
            [[0.2], [0.5]],
            [[0.7], [0.1]],
            lambda a, b: oracle("negativebinomial", {"total_count": r}, a, b),
        ),
        (
            "gamma_rate",
            gamma_rate,
            [[0.5], [2.0]],
            [[3.0], [0.4]],
            lambda a, b: np.sqrt(alpha) * np.abs(np.log(a[:, 0] / b[:, 0])),
        ),
        ("weibull", weibull, [[1.0, 2.0]], [[2.5, 0.7]], lambda a, b: oracle("weibull", {}, a, b)),
    ]


@pytest.mark.parametrize("idx", range(3), ids=["negbin", "gamma_rate", "weibull"])
def test_geodesic_solver_on_user_models_matches_closed_forms(idx):
    _, model, a, b, want = user_models()[idx]
    got = fisher_rao_distance(model, t64(a), t64(b))
    np.testing.assert_allclose(got.numpy(), want(np.array(a), np.array(b)), rtol=1e-6)


def test_batching_and_broadcasting():
    beta = fisherkl.family("beta")
    t1 = t64([[[1.0, 1.0], [2.0, 0.5], [0.7, 3.0]], [[1.5, 1.5], [4.0, 1.0], [1.0, 1.0]]])
    t2 = t64([2.0, 3.0])
    d = fisher_rao_distance(beta, t1, t2)
    assert d.shape == (2, 3) and d.dtype == F64
    one = fisher_rao_distance(beta, t1[1, 2], t2)
    assert abs(float(d[1, 2]) - float(one)) < 1e-9 and abs(float(one) - 0.81837) < 5e-6
    d_same = fisher_rao_distance(beta, t2, t2)
    assert float(d_same) == 0.0


def test_geodesic_path_runs_at_constant_speed_on_the_normal_half_plane():
    normal = fisherkl.family("normal")
    path = geodesic(normal, t64([-1.0, 0.5]), t64([2.0, 1.5]), steps=9).numpy()
    np.testing.assert_allclose(path[0], [-1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(path[-1], [2.0, 1.5], atol=1e-12)
    total = np_location_scale(-1.0, 0.5, 2.0, 1.5, 1, 0, 2)
    pieces = np_location_scale(path[:-1, 0], path[:-1, 1], path[1:, 0], path[1:, 1], 1, 0, 2)
    np.testing.assert_allclose(pieces, total / 8, rtol=1e-8)
    # geodesics of the (μ/√2, σ) half-plane are semicircles centred on the axis σ = 0
    x, s = path[:, 0] / np.sqrt(2), path[:, 1]
    centre = ((x[0] ** 2 + s[0] ** 2) - (x[-1] ** 2 + s[-1] ** 2)) / (2 * (x[0] - x[-1]))
    radius = np.hypot(x - centre, s)
    np.testing.assert_allclose(radius, radius[0], rtol=1e-8)


def test_exp_map_normal_scale_direction_and_round_trip():
    normal, beta = fisherkl.family("normal"), fisherkl.family("beta")
    # pure scale direction from (0, 1): σ(t) = exp(v t) (ds = √2 dσ/σ)
    end = exp_map(normal, t64([0.0, 1.0]), t64([0.0, 0.5]), t=2.0)
    np.testing.assert_allclose(end.numpy(), [0.0, math.exp(1.0)], rtol=1e-8, atol=1e-12)
    # the distance travelled is the velocity's length (closed form for the normal)
    v = t64([0.8, -0.3])
    end = exp_map(normal, t64([0.5, 2.0]), v).numpy()
    length = math.sqrt(0.8**2 / 4 + 2 * 0.3**2 / 4)
    assert abs(np_location_scale(0.5, 2.0, end[0], end[1], 1, 0, 2) - length) < 1e-8
    # log then exp returns the end point; |log map|_I is the distance
    a, b = t64([1.0, 1.0]), t64([2.0, 3.0])
    v = log_map(beta, a, b)
    np.testing.assert_allclose(exp_map(beta, a, v).numpy(), [2.0, 3.0], rtol=1e-7)
    tri = special.polygamma(1, 2.0)
    info = np.array([[special.polygamma(1, 1.0) - tri, -tri], [-tri, special.polygamma(1, 1.0) - tri]])
    assert abs(math.sqrt(v.numpy() @ info @ v.numpy()) - 0.81837) < 5e-6


def test_christoffel_symbols_of_the_normal():
    # g = diag(1, 2)/σ²: Γ^μ_{μσ} = −1/σ, Γ^σ_{μμ} = 1/(2σ), Γ^σ_{σσ} = −1/σ, the rest 0
    sigma = 1.7
    got = christoffel(fisherkl.family("normal"), t64([0.3, sigma])).numpy()
    want = np.zeros((2, 2, 2))
    want[0, 0, 1] = want[0, 1, 0] = -1 / sigma
    want[1, 0, 0] = 1 / (2 * sigma)
    want[1, 1, 1] = -1 / sigma
    np.testing.assert_allclose(got, want, atol=1e-14)


# --- natural gradient and KL steps -------------------------------------------------------------------------------


def test_natural_gradient_and_kl_step_dense():
    f = t64([[2.0, 0.5], [0.5, 1.0]])
    g = t64([1.0, -1.0])
    ng = natural_gradient(f, g)
    np.testing.assert_allclose(ng.numpy(), np.linalg.solve(f.numpy(), g.numpy()), rtol=1e-14)
    np.testing.assert_allclose(
        natural_gradient(f, g, damping=0.3).numpy(), np.linalg.solve(f.numpy() + 0.3 * np.eye(2), g.numpy())
    )
    for damping in (0.0, 0.3):
        step = kl_step(f, g, 0.01, damping=damping).numpy()
        assert abs(0.5 * step @ f.numpy() @ step - 0.01) < 1e-15
        assert step @ g.numpy() < 0
    # the undamped step is −√(2ε/gᵀF⁻¹g)·F⁻¹g
    x = np.linalg.solve(f.numpy(), g.numpy())
    np.testing.assert_allclose(kl_step(f, g, 0.01).numpy(), -np.sqrt(0.02 / (g.numpy() @ x)) * x, rtol=1e-14)
    assert float(kl_step(f, torch.zeros(2, dtype=F64), 0.01).abs().sum()) == 0.0
    batch = kl_step(f.expand(3, 2, 2), t64(np.random.default_rng(0).normal(size=(3, 2))), 0.05)
    assert batch.shape == (3, 2)


def test_singular_fisher_needs_damping():
    f = t64([[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(fisherkl.FisherKLError, match=r"singular.*damping"):
        natural_gradient(f, t64([1.0, 0.0]))
    with pytest.raises(fisherkl.FisherKLError, match="damping"):
        kl_step(f, t64([1.0, 0.0]), 0.1)
    assert torch.isfinite(kl_step(f, t64([1.0, 0.0]), 0.1, damping=1e-3)).all()
    with pytest.raises(fisherkl.ParameterError, match="damping"):
        natural_gradient(f, t64([1.0, 0.0]), damping=-1)


class DiagonalFisher:
    """A minimal stand-in for the matrix representations: only solve and quad."""

    def __init__(self, diag):
        self.diag = diag

    def solve(self, b, damping):
        return [x / (d + damping) for x, d in zip(b, self.diag)]

    def quad(self, v):
        return sum((x * x * d).sum() for x, d in zip(v, self.diag))


def test_kl_step_duck_typed_representation():
    diag = [t64([1.0, 2.0]), t64([[3.0, 4.0]])]
    grad = [t64([0.5, -1.0]), t64([[2.0, 1.0]])]
    step = kl_step(DiagonalFisher(diag), grad, 0.02)
    quad = sum(float((s * s * d).sum()) for s, d in zip(step, diag))
    assert abs(0.5 * quad - 0.02) < 1e-15
    flat_f = torch.cat([d.reshape(-1) for d in diag])
    flat_g = torch.cat([g.reshape(-1) for g in grad])
    want = kl_step(torch.diag(flat_f), flat_g, 0.02)
    np.testing.assert_allclose(torch.cat([s.reshape(-1) for s in step]).numpy(), want.numpy(), rtol=1e-14)
    with pytest.raises(fisherkl.ParameterError, match="solve"):
        natural_gradient(object(), grad)


KL_STEP_CASES = [
    ("normal", [0.3, 1.2], lambda t: Normal(t[0], t[1])),
    ("gamma", [2.5, 1.7], lambda t: Gamma(t[0], t[1])),
    ("beta", [2.0, 3.0], lambda t: torch.distributions.Beta(t[0], t[1])),
    ("poisson", [3.5], lambda t: torch.distributions.Poisson(t[0])),
    ("categorical", [0.2, 0.5], lambda t: torch.distributions.Categorical(torch.cat([t, 1 - t.sum(-1, keepdim=True)]))),
]


@pytest.mark.parametrize("case", KL_STEP_CASES, ids=[c[0] for c in KL_STEP_CASES])
def test_kl_step_exact_kl_is_close_to_the_budget(case):
    name, theta, make = case
    model = fisherkl.family(name)
    theta = t64(theta)
    grad = t64(np.random.default_rng(1).normal(size=theta.shape[0]))
    info = fisherkl.fisher(model, theta)
    for eps in (1e-6, 1e-8):
        step = kl_step(info, grad, eps)
        exact = float(torch.distributions.kl_divergence(make(theta), make(theta + step)))
        assert abs(exact / eps - 1) < 0.01, (name, eps, exact)


# --- Jeffreys priors ---------------------------------------------------------------------------------------------


def test_jeffreys_bernoulli_is_beta_half_half():
    prior = jeffreys_prior(fisherkl.family("bernoulli"))
    assert abs(prior.normalizing_constant() - math.pi) < 1e-9
    p = np.array([0.05, 0.3, 0.5, 0.9])
    got = prior.log_prob(t64(p[:, None]))
    np.testing.assert_allclose(got.numpy(), stats.beta(0.5, 0.5).logpdf(p), rtol=1e-9)


def test_jeffreys_poisson_and_normal_shapes():
    lam = np.array([0.1, 1.0, 4.0, 30.0])
    got = jeffreys_prior(fisherkl.family("poisson")).log_density(t64(lam[:, None])).numpy()
    np.testing.assert_allclose(got - got[1], -0.5 * np.log(lam), atol=1e-13)  # ∝ λ^(−½)
    normal = jeffreys_prior(fisherkl.family("normal"))
    theta = np.array([[0.0, 0.5], [3.0, 0.5], [-1.0, 2.0]])
    got = normal.log_density(t64(theta)).numpy()
    np.testing.assert_allclose(got, 0.5 * np.log(2) - 2 * np.log(theta[:, 1]), atol=1e-13)  # √2·σ⁻²
    # ∫∫ √2/σ² over [0, 1] × [1, 2] = √2·(1 − ½)
    assert abs(normal.normalizing_constant([(0.0, 1.0), (1.0, 2.0)]) - math.sqrt(2) / 2) < 1e-9
    with pytest.raises(fisherkl.ConvergenceError):
        jeffreys_prior(fisherkl.family("poisson")).normalizing_constant()  # ∫₀^∞ λ^(−½) diverges


# --- Cramér–Rao --------------------------------------------------------------------------------------------------


def test_cramer_rao_is_the_inverse_fisher_over_n():
    a, b = 2.5, 1.7
    info = np.array([[special.polygamma(1, a), -1 / b], [-1 / b, a / b**2]])
    got = cramer_rao(fisherkl.family("gamma"), t64([a, b]), n=20).numpy()
    np.testing.assert_allclose(got, np.linalg.inv(info) / 20, rtol=1e-12)


def test_cramer_rao_names_the_unidentifiable_direction():
    model = fisherkl.Model(lambda t: Normal(t[..., 0] + t[..., 1], 1.0), 2, names=["a", "b"])
    with pytest.raises(fisherkl.FisherKLError, match=r"singular.*1·a \+1·b|singular.*-1·a \+1·b") as exc:
        cramer_rao(model, t64([0.0, 0.0]))
    assert "not identifiable" in str(exc.value)
    with pytest.raises(fisherkl.ParameterError, match="positive integer"):
        cramer_rao(fisherkl.family("gamma"), t64([1.0, 1.0]), n=0)


def _weibull_model():
    if "weibull" in PRESENT:
        return fisherkl.family("weibull")
    return fisherkl.Model(
        lambda t: Weibull(t[..., 0], t[..., 1]),
        2,
        names=["scale", "concentration"],
        constraints=[fisherkl.constraints.positive] * 2,
    )


SIM_CASES = ["gamma", "weibull", "beta"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SIM_CASES)
def test_cramer_rao_against_simulated_maximum_likelihood(name):
    """n·Cov(θ̂_MLE) over R replications approaches I(θ)⁻¹.

    Sampling error: for R replications the standard error of a sample covariance entry s_ij is
    ≈ √((Σᵢᵢ Σⱼⱼ + Σᵢⱼ²)/R) (Gaussian θ̂); the finite-n bias of the MLE covariance is O(1/n). We
    require every entry within 4 standard errors + 3/n relative.
    """
    reps, n = 400, 400
    rng = np.random.default_rng(12345)
    if name == "gamma":
        theta, model = np.array([2.5, 1.7]), fisherkl.family("gamma")
        data = rng.gamma(theta[0], 1 / theta[1], size=(reps, n))
        fits = [stats.gamma.fit(x, floc=0) for x in data]
        est = np.array([[a, 1 / scale] for a, _, scale in fits])
    elif name == "weibull":
        theta, model = np.array([1.5, 2.0]), _weibull_model()  # (scale λ, concentration k)
        data = theta[0] * rng.weibull(theta[1], size=(reps, n))
        fits = [stats.weibull_min.fit(x, floc=0) for x in data]
        est = np.array([[scale, c] for c, _, scale in fits])
    else:
        theta, model = np.array([2.0, 3.0]), fisherkl.family("beta")
        data = rng.beta(theta[0], theta[1], size=(reps, n))
        fits = [stats.beta.fit(x, floc=0, fscale=1) for x in data]
        est = np.array([[a, b] for a, b, _, _ in fits])
    bound = cramer_rao(model, t64(theta), n=1).numpy()
    observed = n * np.cov(est.T)
    se = np.sqrt((np.outer(np.diag(bound), np.diag(bound)) + bound**2) / reps)
    tol = 4 * se + 3 / n * np.abs(bound)
    assert np.all(np.abs(observed - bound) <= tol), (name, observed, bound, tol)
