"""Reparametrisation: KL is invariant, the Fisher information is a pull-back JᵀI(θ)J.

J is computed here by 4th-order central finite differences of the transform (not by autodiff,
which is what fisherkl uses), and a few coordinate systems with a known constant Fisher anchor
the whole chain to numbers computed by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import fisherkl
from helpers import rel_err, t64

F64 = torch.float64
HYPOTHESIS = settings(max_examples=5, deadline=None, derandomize=True, phases=[Phase.generate])


def fd_jacobian(fn, phi, h: float = 1e-3) -> np.ndarray:
    """∂θ/∂φ ``[d_θ, d_φ]`` by 4th-order central differences of ``fn`` (float64 tensors in and out)."""
    phi = np.asarray(phi, dtype=float)

    def at(x):
        return fn(t64(x)).detach().numpy()

    cols = []
    for i in range(phi.size):
        step = h * max(1.0, abs(phi[i]))
        e = np.zeros_like(phi)
        e[i] = step
        cols.append((-at(phi + 2 * e) + 8 * at(phi + e) - 8 * at(phi - e) + at(phi - 2 * e)) / (12 * step))
    return np.stack(cols, axis=-1)


def fl(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def _softmax_first(phi: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(phi[..., :1])
    return torch.softmax(torch.cat([phi, zero], -1), -1)[..., :-1]


def _exp_cols(*cols: int):
    def transform(phi: torch.Tensor) -> torch.Tensor:
        parts = [phi[..., i].exp() if i in cols else phi[..., i] for i in range(phi.shape[-1])]
        return torch.stack(parts, -1)

    return transform


def _mixture(phi: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.sigmoid(phi[..., :1]), phi[..., 1:3], phi[..., 3:].exp()], -1)


# (label, family name, fixed, transform φ ↦ θ, strategy for φ)
CASES = [
    ("normal-log-scale", "normal", {}, _exp_cols(1), st.tuples(fl(-2, 2), fl(-1.5, 1.5))),
    ("gamma-log", "gamma", {}, _exp_cols(0, 1), st.tuples(fl(-0.3, 2.5), fl(-1.5, 1.5))),
    ("beta-log", "beta", {}, _exp_cols(0, 1), st.tuples(fl(-0.3, 2.5), fl(-0.3, 2.5))),
    ("weibull-log", "weibull", {}, _exp_cols(0, 1), st.tuples(fl(-1, 1.5), fl(-0.5, 1.8))),
    ("vonmises-log-kappa", "vonmises", {}, _exp_cols(1), st.tuples(fl(-3, 3), fl(-2, 3))),
    ("studentt-log-scale", "studentt", {}, _exp_cols(1), st.tuples(fl(-2, 2), fl(-1, 1))),
    ("poisson-sqrt", "poisson", {}, lambda p: p.square(), st.tuples(fl(0.3, 6))),
    ("negativebinomial-logit", "negativebinomial", {}, torch.sigmoid, st.tuples(fl(-2.5, 2))),
    ("categorical-logits", "categorical", {"k": 3}, _softmax_first, st.tuples(fl(-2, 2), fl(-2, 2))),
    (
        "mvn-log-diagonal",
        "mvn",
        {"k": 2},
        _exp_cols(2, 4),
        st.tuples(fl(-1, 1), fl(-1, 1), fl(-1, 1), fl(-1, 1), fl(-1, 1)),
    ),
    (
        "mixture-logit-log",
        "mixture_normal",
        {},
        _mixture,
        st.tuples(fl(-1.5, 1.5), fl(-3, -0.5), fl(0.5, 3), fl(-0.7, 0.7), fl(-0.7, 0.7)),
    ),
]


@pytest.mark.parametrize(("label", "name", "fixed", "transform", "strategy"), CASES, ids=[c[0] for c in CASES])
@HYPOTHESIS
@given(data=st.data())
def test_kl_is_invariant_and_fisher_is_the_pull_back(label, name, fixed, transform, strategy, data):
    base = fisherkl.family(name, **fixed)
    model = fisherkl.reparametrize(base, transform)
    phi1 = t64(data.draw(strategy, label="phi1"))
    phi2 = t64(data.draw(strategy, label="phi2"))
    theta1, theta2 = transform(phi1), transform(phi2)
    # KL and Jeffreys do not depend on the coordinates
    for div in (fisherkl.kl, fisherkl.jeffreys):
        in_phi, in_theta = div(model, phi1, phi2), div(base, theta1, theta2)
        assert float(in_phi) == pytest.approx(float(in_theta), rel=1e-12, abs=1e-15), div.__name__
    # the Fisher information is Jᵀ I(θ) J, with J by finite differences
    jac = fd_jacobian(transform, phi1.numpy())
    info = fisherkl.fisher(base, theta1).numpy()
    expected = jac.T @ info @ jac
    # the same routes as the base model
    assert fisherkl.available_routes(model, phi1) == fisherkl.available_routes(base, theta1)
    routes = [r for r in fisherkl.available_routes(model, phi1) if "(mc)" not in r]
    for route in routes:
        kwargs = {"expectation": "exact"} if route in ("score", "neg_hessian") else {}
        got = fisherkl.fisher(model, phi1, route, **kwargs)
        assert got.shape == (model.dim, model.dim)
        assert rel_err(got, expected) <= 1e-8, (route, phi1.tolist())


def test_pull_back_anchors_with_constant_fisher():
    """Coordinates in which the Fisher information is known by hand."""
    # Normal in (μ, log σ): diag(1/σ², 2)
    normal = fisherkl.reparametrize(fisherkl.family("normal"), _exp_cols(1), names=["loc", "log_scale"])
    assert normal.names == ("loc", "log_scale")
    got = fisherkl.fisher(normal, t64([0.3, math.log(0.5)]))
    np.testing.assert_allclose(got.numpy(), np.diag([4.0, 2.0]), rtol=1e-13)
    # Poisson in φ = √λ: I = 4 for every λ; Bernoulli in φ = arcsin √p: I = 4
    poisson = fisherkl.reparametrize(fisherkl.family("poisson"), lambda p: p.square())
    bernoulli = fisherkl.reparametrize(fisherkl.family("bernoulli"), lambda p: torch.sin(p).square())
    for phi in (0.3, 1.0, 4.0):
        assert float(fisherkl.fisher(poisson, t64([phi]))) == pytest.approx(4.0, rel=1e-12)
    for phi in (0.2, 0.7, 1.3):
        for route in ("closed", "kl_hessian", "score"):
            assert float(fisherkl.fisher(bernoulli, t64([phi]), route)) == pytest.approx(4.0, rel=1e-12), route
    # Exponential in log-rate: I = 1; Rayleigh in log-scale: I = 4
    exponential = fisherkl.reparametrize(fisherkl.family("exponential"), torch.exp)
    rayleigh = fisherkl.reparametrize(fisherkl.family("rayleigh"), torch.exp)
    for phi in (-2.0, 0.0, 1.5):
        assert float(fisherkl.fisher(exponential, t64([phi]), "score")) == pytest.approx(1.0, rel=1e-10)
        assert float(fisherkl.fisher(rayleigh, t64([phi]), "kl_hessian")) == pytest.approx(4.0, rel=1e-12)


def test_reparametrisation_may_change_the_dimension():
    """A one-parameter sub-model of the normal: θ = (0.3, e^φ), I(φ) = 2."""
    sub = fisherkl.reparametrize(
        fisherkl.family("normal"), lambda p: torch.stack([torch.full_like(p[..., 0], 0.3), p[..., 0].exp()], -1), dim=1
    )
    assert sub.dim == 1
    for route in ("closed", "kl_hessian", "score"):
        assert float(fisherkl.fisher(sub, t64([0.7]), route)) == pytest.approx(2.0, rel=1e-12), route
    # KL between N(0.3, e^{2a}) and N(0.3, e^{2b}) = b − a + e^{2(a−b)}/2 − ½
    a, b = 0.7, -0.2
    assert float(fisherkl.kl(sub, t64([a]), t64([b]))) == pytest.approx(b - a + math.exp(2 * (a - b)) / 2 - 0.5)


def test_reparametrized_fisher_is_batched():
    model = fisherkl.reparametrize(fisherkl.family("gamma"), _exp_cols(0, 1))
    phis = t64([[0.1, -0.3], [1.2, 0.4], [-0.2, 1.1]])
    batched = fisherkl.fisher(model, phis)
    assert batched.shape == (3, 2, 2)
    for i in range(3):
        assert rel_err(batched[i], fisherkl.fisher(model, phis[i])) <= 1e-14
        jac = fd_jacobian(_exp_cols(0, 1), phis[i].numpy())
        theta = _exp_cols(0, 1)(phis[i])
        assert rel_err(batched[i], jac.T @ fisherkl.fisher(fisherkl.family("gamma"), theta).numpy() @ jac) <= 1e-8


def test_reparametrized_model_rejects_phi_that_maps_outside():
    model = fisherkl.reparametrize(fisherkl.family("normal"), lambda p: p, names=["m", "s"])
    with pytest.raises(fisherkl.ParameterError, match="scale"):
        fisherkl.fisher(model, t64([0.0, -1.0]))
    with pytest.raises(fisherkl.ParameterError):
        fisherkl.kl(model, t64([0.0, 1.0]), t64([0.0, math.nan]))
    with pytest.raises(fisherkl.ParameterError, match="last dimension 2"):
        fisherkl.fisher(model, t64([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError):
        fisherkl.reparametrize(fisherkl.family("normal"), "not callable")  # type: ignore[arg-type]


def test_non_regular_stays_non_regular():
    model = fisherkl.reparametrize(fisherkl.family("uniform"), _exp_cols())
    with pytest.raises(fisherkl.NonRegularModelError, match="support"):
        fisherkl.fisher(model, t64([0.0, 1.0]))


# --------------------------------------------------------------------------------------------------
# model.unconstrained(): ℝ^d onto the valid θ, with an inverse, and the pulled-back Fisher
# --------------------------------------------------------------------------------------------------

UNCONSTRAINED = [(name, {}) for name in fisherkl.families.names()] + [
    ("categorical", {"k": 5}),
    ("multinomial", {"total_count": 4, "k": 4}),
    ("dirichlet", {"k": 4}),
    ("mvn", {"k": 3}),
    ("lowrank_mvn", {"k": 3, "rank": 2}),
    ("mixture_normal", {"k": 3}),
    ("pareto", {"scale": None}),
]


@pytest.mark.parametrize(("name", "fixed"), UNCONSTRAINED, ids=[f"{n}{f or ''}" for n, f in UNCONSTRAINED])
def test_unconstrained_maps_the_reals_onto_valid_theta(name, fixed):
    fam = fisherkl.family(name, **fixed)
    model = fam.unconstrained()
    assert model.dim == fam.dim
    assert model.names == tuple(f"u({n})" for n in fam.names)
    rng = np.random.default_rng(len(name) * 7 + fam.dim)
    u = t64(rng.normal(scale=1.5, size=(6, fam.dim)))
    theta = model.to_base(u)
    assert theta.shape == (6, fam.dim)
    fam.validate(theta)  # every image is a valid θ
    # inverse ∘ to_base = id on ℝ^d, to_base ∘ inverse = id on valid θ
    np.testing.assert_allclose(model.inverse(theta).numpy(), u.numpy(), rtol=1e-9, atol=1e-9)
    typical = fam.typical()
    np.testing.assert_allclose(model.to_base(model.inverse(typical)).numpy(), typical.numpy(), rtol=1e-12, atol=1e-14)
    # KL is the base model's at the images (near the typical θ)
    u0 = model.inverse(typical)
    u1 = u0 + 0.1 * t64(rng.normal(size=fam.dim))
    expected_kl = fisherkl.kl(fam, model.to_base(u0), model.to_base(u1))
    assert float(fisherkl.kl(model, u0, u1)) == pytest.approx(float(expected_kl), rel=1e-12)
    if not fam.regular:
        with pytest.raises(fisherkl.NonRegularModelError, match="support"):
            fisherkl.fisher(model, u[0])
        return
    # the Fisher information in u is the pull-back through the (finite-difference) Jacobian
    jac = fd_jacobian(model.to_base, u0.numpy())
    expected = jac.T @ fisherkl.fisher(fam, typical).numpy() @ jac
    got = fisherkl.fisher(model, u0)
    assert got.shape == (fam.dim, fam.dim)
    assert rel_err(got, expected) <= 1e-8


def test_unconstrained_categorical_is_stick_breaking():
    """u ↦ p by torch's stick-breaking (p_i = σ(u_i − log(k − 1 − i)) of what is left), checked by hand."""
    model = fisherkl.family("categorical", k=3).unconstrained()
    u = np.array([0.3, -1.2])
    z0 = 1 / (1 + math.exp(-(u[0] - math.log(2))))
    z1 = 1 / (1 + math.exp(-(u[1] - math.log(1))))
    p = [z0, (1 - z0) * z1]
    np.testing.assert_allclose(model.to_base(t64(u)).numpy(), p, rtol=1e-14)
    # u = 0 is the uniform distribution
    np.testing.assert_allclose(model.to_base(t64([0.0, 0.0])).numpy(), [1 / 3, 1 / 3], rtol=1e-14)


def test_unconstrained_uniform_keeps_low_below_high():
    model = fisherkl.family("uniform").unconstrained()
    theta = model.to_base(t64([[-3.0, -5.0], [2.0, 3.0]])).numpy()
    np.testing.assert_allclose(theta, [[-3.0, -3.0 + math.exp(-5.0)], [2.0, 2.0 + math.exp(3.0)]], rtol=1e-14)
    # exact KL between uniforms still works in u: KL[U(a,b) ‖ U(c,d)] = log((d − c)/(b − a)) when nested
    u_p, u_q = t64([0.2, 0.0]), t64([0.0, 1.0])  # U(0.2, 1.2) inside U(0, e)
    assert float(fisherkl.kl(model, u_p, u_q)) == pytest.approx(math.log(math.e / 1.0), rel=1e-12)


def test_unconstrained_inverse_rejects_invalid_theta():
    model = fisherkl.family("gamma").unconstrained()
    with pytest.raises(fisherkl.ParameterError, match="concentration"):
        model.inverse(t64([-1.0, 1.0]))
    with pytest.raises(fisherkl.ParameterError, match="sum"):
        fisherkl.family("categorical").unconstrained().inverse(t64([0.7, 0.6]))
