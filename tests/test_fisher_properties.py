"""Properties of the Fisher information: batching, dtype, symmetry and positive semi-definiteness,
reparametrisation covariance, and user models (with and without closed forms).

Reference values are computed here with numpy / scipy.special, never by fisherkl.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from torch.distributions import Categorical, Gamma, Gumbel, Normal, StudentT, Weibull

import fisherkl

F64 = torch.float64
EULER = 0.5772156649015329

# (name, fixed arguments): every regular family, some with non-default fixed arguments
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


def sample_theta(name: str, fixed: dict, rng: np.random.Generator) -> list[float]:
    """One θ in a sensible range (numpy RNG, for batches)."""
    k = fixed.get("k", 3)
    if name in ("normal", "lognormal", "laplace", "cauchy"):
        return [rng.uniform(-3, 3), rng.uniform(0.2, 5)]
    if name in ("halfnormal", "exponential"):
        return [rng.uniform(0.2, 5)]
    if name == "gamma":
        return [rng.uniform(0.7, 20), rng.uniform(0.2, 5)]
    if name == "beta":
        # concentration0 ≥ 1 here: Beta score quadrature with concentration0 < 1 is tested in test_fisher_routes
        return [rng.uniform(0.7, 20), rng.uniform(1.0, 20)]
    if name in ("bernoulli", "binomial", "geometric"):
        return [rng.uniform(0.05, 0.95)]
    if name == "poisson":
        return [rng.uniform(0.1, 50)]
    if name == "categorical":
        w = rng.uniform(0.05, 1.0, size=k)
        return list(w[:-1] / w.sum())
    if name == "dirichlet":
        return list(rng.uniform(0.7, 20, size=k))
    raise KeyError(name)


def fl(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def theta_strategy(name: str, fixed: dict):
    k = fixed.get("k", 3)
    if name in ("normal", "lognormal", "laplace", "cauchy"):
        return st.tuples(fl(-3, 3), fl(0.2, 5))
    if name in ("halfnormal", "exponential"):
        return st.tuples(fl(0.2, 5))
    if name == "gamma":
        return st.tuples(fl(0.7, 20), fl(0.2, 5))
    if name == "beta":
        return st.tuples(fl(0.7, 20), fl(1.0, 20))
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


def exact_routes(fam, theta) -> list[str]:
    """Every route of ``fam`` at θ that is not Monte Carlo."""
    return [r for r in fisherkl.available_routes(fam, theta) if "(mc)" not in r]


def run(fam, theta, route):
    kwargs = {"expectation": "exact"} if route in ("score", "neg_hessian") else {}
    return fisherkl.fisher(fam, theta, route, **kwargs)


def rel_err(a, b) -> float:
    a = a.detach().double().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().double().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def normal_fisher(sigma: float) -> np.ndarray:
    return np.diag([1 / sigma**2, 2 / sigma**2])


def gamma_fisher(a: float, b: float) -> np.ndarray:
    return np.array([[special.polygamma(1, a), -1 / b], [-1 / b, a / b**2]])


# --------------------------------------------------------------------------------------------------
# 5. batching and dtype
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_batched_theta_matches_loop(cfg):
    name, fixed = cfg
    fam = fisherkl.family(name, **fixed)
    rng = np.random.default_rng(zlib.crc32(config_id(cfg).encode()))
    thetas = torch.tensor([sample_theta(name, fixed, rng) for _ in range(6)], dtype=F64)
    d = fam.dim
    for route in exact_routes(fam, thetas[0]):
        singles = torch.stack([run(fam, t, route) for t in thetas])
        assert singles.shape == (6, d, d)
        flat = run(fam, thetas[:5], route)
        assert flat.shape == (5, d, d), route
        assert flat.dtype == F64
        assert rel_err(flat, singles[:5]) <= 1e-10, route
        grid = run(fam, thetas.reshape(2, 3, d), route)
        assert grid.shape == (2, 3, d, d), route
        assert rel_err(grid, singles.reshape(2, 3, d, d)) <= 1e-10, route
        # the entries of a batch are not all the same (the batch really was used)
        assert not torch.allclose(flat[0], flat[1])


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_float32_in_float32_out_closed_and_kl_routes(cfg):
    name, fixed = cfg
    fam = fisherkl.family(name, **fixed)
    rng = np.random.default_rng(7)
    theta64 = torch.tensor([sample_theta(name, fixed, rng) for _ in range(3)], dtype=F64)
    theta32 = theta64.float()
    reference = fisherkl.fisher(fam, theta64, "closed")
    for route in ("closed", "kl_hessian", "jeffreys_hessian"):
        got = fisherkl.fisher(fam, theta32, route)
        assert got.dtype == torch.float32, route
        assert got.shape == reference.shape
        for i in range(3):
            assert rel_err(got[i], reference[i]) <= 1e-5, (route, i)


def test_float32_in_float32_out_expectation_routes():
    """score / neg_hessian with an exact expectation take float32 θ and give float32, ≈ the float64 value."""
    failures = []
    for name, fixed in CONFIGS:
        fam = fisherkl.family(name, **fixed)
        theta64 = fam.typical()
        reference = fisherkl.fisher(fam, theta64, "closed")
        for route in exact_routes(fam, theta64):
            if route not in ("score", "neg_hessian"):
                continue
            try:
                est = fisherkl.fisher(fam, theta64.float(), route, expectation="exact", return_error=True)
            except fisherkl.FisherKLError as exc:
                failures.append(f"{config_id((name, fixed))}/{route}: {type(exc).__name__}: {str(exc)[:60]}")
                continue
            if est.value.dtype != torch.float32 or rel_err(est.value, reference) > 1e-5:
                failures.append(
                    f"{config_id((name, fixed))}/{route}: {est.value.dtype}, {rel_err(est.value, reference)}"
                )
    assert not failures, "float32 expectation routes failed:\n" + "\n".join(failures)


def test_result_does_not_require_grad_when_theta_does_not():
    """A Fisher of a plain θ must be a plain tensor (e.g. ``.numpy()`` must work)."""
    offenders = []
    for name, fixed in CONFIGS:
        fam = fisherkl.family(name, **fixed)
        theta = fam.typical()
        for route in exact_routes(fam, theta):
            value = run(fam, theta, route)
            if value.requires_grad:
                offenders.append(f"{config_id((name, fixed))}/{route}")
    assert not offenders, "results that require grad for a θ without grad: " + ", ".join(offenders)


def test_fisher_is_differentiable_in_theta():
    """With θ requiring grad, the exact routes stay differentiable: d/dσ of I_μμ = 1/σ² is −2/σ³."""
    fam = fisherkl.family("normal")
    for route in exact_routes(fam, fam.typical()):
        theta = torch.tensor([0.3, 1.7], dtype=F64, requires_grad=True)
        value = run(fam, theta, route)
        (grad,) = torch.autograd.grad(value[0, 0], theta)
        np.testing.assert_allclose(grad.numpy(), [0.0, -2 / 1.7**3], rtol=1e-8, atol=1e-10, err_msg=route)


# --------------------------------------------------------------------------------------------------
# 6. symmetric and positive semi-definite; reparametrisation covariance
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_fisher_is_symmetric_positive_semidefinite(cfg, data):
    name, fixed = cfg
    fam = fisherkl.family(name, **fixed)
    theta = torch.tensor(data.draw(theta_strategy(name, fixed), label="theta"), dtype=F64)
    for route in exact_routes(fam, theta):
        value = run(fam, theta, route).detach().numpy()
        scale = np.max(np.abs(value))
        assert np.isfinite(value).all() and scale > 0, route
        assert np.max(np.abs(value - value.T)) <= 1e-12 * scale, route
        eig = np.linalg.eigvalsh(value)
        assert eig.min() >= -1e-10 * scale, (route, eig)


def test_psd_check_holds_for_a_singular_fisher():
    """Categorical in logits is over-parametrised: I = diag(p) − ppᵀ has a zero eigenvalue along 1."""
    model = fisherkl.Model(lambda t: Categorical(logits=t), 3, name="categorical-logits")
    theta = torch.tensor([0.4, -1.1, 0.9], dtype=F64)
    p = np.exp(theta.numpy()) / np.exp(theta.numpy()).sum()
    expected = np.diag(p) - np.outer(p, p)
    for route in ("auto", "kl_hessian", "score", "neg_hessian"):
        value = fisherkl.fisher(model, theta, route).detach().numpy()
        np.testing.assert_allclose(value, expected, rtol=1e-10, atol=1e-14, err_msg=route)
        eig = np.linalg.eigvalsh(value)
        assert eig.min() >= -1e-10 * eig.max()
        assert abs(eig.min()) <= 1e-12
        np.testing.assert_allclose(value @ np.ones(3), 0.0, atol=1e-14)


def normal_log_sigma_model() -> fisherkl.Model:
    return fisherkl.Model(
        lambda t: Normal(t[..., 0], t[..., 1].exp()), 2, names=["mu", "log_sigma"], name="normal-log-sigma"
    )


@settings(max_examples=15, deadline=None)
@given(mu=fl(-3, 3), log_sigma=fl(math.log(0.2), math.log(5)))
def test_reparametrisation_normal_log_sigma(mu, log_sigma):
    model = normal_log_sigma_model()
    theta = torch.tensor([mu, log_sigma], dtype=F64)
    sigma = math.exp(log_sigma)
    jac = np.diag([1.0, sigma])  # ∂(μ, σ)/∂(μ, log σ)
    expected = jac.T @ normal_fisher(sigma) @ jac  # = diag(1/σ², 2)
    est = fisherkl.fisher(model, theta, "score", expectation="exact", return_error=True)
    assert est.method == "score/quadrature"
    assert rel_err(est.value, expected) <= 1e-8
    assert float(est.error.max()) <= 1e-8 * float(np.max(np.abs(expected)))
    for route in ("auto", "kl_hessian", "jeffreys_hessian", "neg_hessian"):
        assert rel_err(fisherkl.fisher(model, theta, route), expected) <= 1e-8, route


@settings(max_examples=10, deadline=None)
@given(log_a=fl(math.log(0.7), math.log(20)), log_b=fl(math.log(0.2), math.log(5)))
def test_reparametrisation_gamma_log_coordinates(log_a, log_b):
    model = fisherkl.Model(lambda t: Gamma(t[..., 0].exp(), t[..., 1].exp()), 2, name="gamma-log")
    theta = torch.tensor([log_a, log_b], dtype=F64)
    a, b = math.exp(log_a), math.exp(log_b)
    jac = np.diag([a, b])
    expected = jac.T @ gamma_fisher(a, b) @ jac
    for route in ("auto", "kl_hessian", "score", "neg_hessian"):
        kwargs = {"expectation": "exact"} if route in ("score", "neg_hessian") else {}
        assert rel_err(fisherkl.fisher(model, theta, route, **kwargs), expected) <= 1e-8, route


# --------------------------------------------------------------------------------------------------
# 7. user models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("theta", [(2.5, 1.7), (0.8, 0.3), (15.0, 4.0)])
def test_user_gamma_model_matches_family(theta):
    model = fisherkl.Model(lambda t: Gamma(t[..., 0], t[..., 1]), 2, name="my-gamma")
    t = torch.tensor(theta, dtype=F64)
    expected = gamma_fisher(*theta)
    family_value = fisherkl.fisher(fisherkl.family("gamma"), t)
    assert rel_err(family_value, expected) <= 1e-12
    auto = fisherkl.fisher(model, t, return_error=True)
    assert auto.method in ("kl_hessian", "score/quadrature")
    assert rel_err(auto.value, family_value) <= 1e-8
    score = fisherkl.fisher(model, t, "score", return_error=True)
    assert score.method == "score/quadrature"
    assert rel_err(score.value, family_value) <= 1e-9
    assert rel_err(fisherkl.fisher(model, t, "neg_hessian"), family_value) <= 1e-8


def location_scale_fisher(a: float, c: float, e: float, sigma: float) -> np.ndarray:
    return np.array([[a, c], [c, e]]) / sigma**2


@pytest.mark.parametrize("theta", [(0.0, 1.0), (1.2, 0.4), (-2.0, 3.0)])
def test_user_student_t_model_without_closed_kl(theta):
    """StudentT(ν=4) has no KL in torch: auto takes the score by quadrature (DESIGN: a=(ν+1)/(ν+3), e=2ν/(ν+3)),
    and kl_hessian differentiates the KL computed by quadrature."""
    nu = 4.0
    model = fisherkl.Model(lambda t: StudentT(nu, t[..., 0], t[..., 1]), 2, name="student-t")
    t = torch.tensor(theta, dtype=F64)
    assert fisherkl.available_routes(model, t) == ["kl_hessian", "jeffreys_hessian", "score", "neg_hessian"]
    est = fisherkl.fisher(model, t, return_error=True)
    assert est.method == "score/quadrature"
    expected = location_scale_fisher((nu + 1) / (nu + 3), 0.0, 2 * nu / (nu + 3), theta[1])
    assert rel_err(est.value, expected) <= 1e-8
    assert rel_err(fisherkl.fisher(model, t, "neg_hessian"), expected) <= 1e-8
    with pytest.raises(fisherkl.RouteError):
        fisherkl.fisher(model, t, "closed")
    for route in ("kl_hessian", "jeffreys_hessian"):
        est = fisherkl.fisher(model, t, route, return_error=True)
        assert est.method == f"{route}/quadrature"
        assert rel_err(est.value, expected) <= 1e-8


@pytest.mark.parametrize("theta", [(0.0, 1.0), (1.2, 0.4), (-2.0, 3.0)])
def test_user_gumbel_model(theta):
    """Gumbel(μ, σ): σ⁻²[[1, γ−1], [γ−1, (1−γ)² + π²/6]] (DESIGN.md)."""
    model = fisherkl.Model(lambda t: Gumbel(t[..., 0], t[..., 1]), 2, name="gumbel")
    t = torch.tensor(theta, dtype=F64)
    expected = location_scale_fisher(1.0, EULER - 1, (1 - EULER) ** 2 + math.pi**2 / 6, theta[1])
    for route in ("auto", "score", "neg_hessian"):
        kwargs = {"expectation": "exact"} if route != "auto" else {}
        assert rel_err(fisherkl.fisher(model, t, route, **kwargs), expected) <= 1e-8, route


def weibull_fisher(lam: float, k: float) -> np.ndarray:
    """Weibull(scale λ, shape k), DESIGN.md."""
    off = -(1 - EULER) / lam
    return np.array([[k**2 / lam**2, off], [off, ((1 - EULER) ** 2 + math.pi**2 / 6) / k**2]])


def weibull_model() -> fisherkl.Model:
    return fisherkl.Model(lambda t: Weibull(t[..., 0], t[..., 1]), 2, names=["scale", "concentration"], name="weibull")


def test_user_weibull_model_auto_route():
    """torch has no Weibull–Weibull KL (only a TransformedDistribution fallback that needs equal transforms)."""
    t = torch.tensor([1.3, 2.1], dtype=F64)
    value = fisherkl.fisher(weibull_model(), t)
    assert rel_err(value, weibull_fisher(1.3, 2.1)) <= 1e-8


def test_user_weibull_model_score_by_quadrature():
    t = torch.tensor([1.3, 2.1], dtype=F64)
    value = fisherkl.fisher(weibull_model(), t, "score", expectation="exact")
    assert rel_err(value, weibull_fisher(1.3, 2.1)) <= 1e-8


def test_user_weibull_model_monte_carlo():
    t = torch.tensor([1.3, 2.1], dtype=F64)
    est = fisherkl.fisher(weibull_model(), t, "score", expectation="mc", n_samples=40_000, seed=2, return_error=True)
    expected = weibull_fisher(1.3, 2.1)
    assert np.all(np.abs(est.value.detach().numpy() - expected) <= 4 * est.error.numpy())


@pytest.mark.parametrize("k", [2, 3, 5])
def test_user_categorical_model_enumerates_exactly(k):
    rng = np.random.default_rng(k)
    w = rng.uniform(0.1, 1.0, size=k)
    probs = w / w.sum()
    theta = torch.tensor(probs[:-1], dtype=F64)
    model = fisherkl.Model(
        lambda t: Categorical(probs=torch.cat([t, 1 - t.sum(-1, keepdim=True)], -1)), k - 1, name="my-categorical"
    )
    expected = np.diag(1 / probs[:-1]) + 1 / probs[-1]
    for route in ("score", "neg_hessian"):
        est = fisherkl.fisher(model, theta, route, return_error=True)
        assert est.method == f"{route}/finite"
        assert torch.all(est.error == 0)
        assert rel_err(est.value, expected) <= 1e-12, route
    auto = fisherkl.fisher(model, theta)
    assert rel_err(auto, expected) <= 1e-12
    fam_value = fisherkl.fisher(fisherkl.family("categorical", k=k), theta)
    assert rel_err(fam_value, expected) <= 1e-12
