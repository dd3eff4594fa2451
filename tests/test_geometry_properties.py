"""Metric properties of the numerical Fisher–Rao distance (hypothesis): symmetry, the triangle
inequality, invariance under reparametrisation, and the small-separation limit d² ≈ δᵀIδ ≈ Jeffreys.

Oracles: the normal's closed-form distance written out in numpy, the Beta/Gamma Fisher information and
Jeffreys divergence from scipy.special — never values produced by fisherkl.geometry itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import special
from torch.distributions import Gamma, Normal

import fisherkl
from fisherkl.geometry import fisher_rao_distance

F64 = torch.float64
SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
positive = st.floats(0.3, 8.0)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


@SETTINGS
@given(st.sampled_from(["beta", "gamma"]), st.lists(positive, min_size=6, max_size=6))
def test_symmetric_and_triangle_inequality(name, xs):
    model = fisherkl.family(name)
    a, b, c = t64(xs[0:2]), t64(xs[2:4]), t64(xs[4:6])
    pts1 = torch.stack([a, b, a, b])
    pts2 = torch.stack([b, a, c, c])
    d_ab, d_ba, d_ac, d_bc = fisher_rao_distance(model, pts1, pts2, method="geodesic").tolist()
    assert abs(d_ab - d_ba) <= 1e-9 * max(d_ab, 1e-12)
    assert d_ac <= d_ab + d_bc + 1e-9
    assert d_ab >= 0


def np_normal(m1, s1, m2, s2):
    return math.sqrt(2) * math.acosh(1 + ((m1 - m2) ** 2 + 2 * (s1 - s2) ** 2) / (4 * s1 * s2))


NORMAL_LOG = fisherkl.Model(
    lambda t: Normal(t[..., 0], t[..., 1].exp()), 2, names=["mu", "log_sigma"], name="normal_log"
)


@SETTINGS
@given(st.floats(-3, 3), st.floats(-1.5, 1.5), st.floats(-3, 3), st.floats(-1.5, 1.5))
def test_invariant_under_reparametrisation_normal_log_scale(m1, l1, m2, l2):
    """A user model (μ, log σ), Fisher by its own routes, against the closed form in (μ, σ)."""
    got = float(fisher_rao_distance(NORMAL_LOG, t64([m1, l1]), t64([m2, l2])))
    assert abs(got - np_normal(m1, math.exp(l1), m2, math.exp(l2))) <= 1e-6 * max(got, 1e-3)


GAMMA_MEAN = fisherkl.Model(  # Gamma in (log shape, log mean): α = e^u, β = α / e^w
    lambda t: Gamma(t[..., 0].exp(), t[..., 0].exp() / t[..., 1].exp()), 2, names=["log_shape", "log_mean"]
)


@settings(max_examples=3, deadline=None)
@given(st.lists(st.floats(0.5, 5.0), min_size=4, max_size=4))
def test_invariant_under_reparametrisation_gamma(xs):
    a1, b1, a2, b2 = xs
    direct = float(fisher_rao_distance(fisherkl.family("gamma"), t64([a1, b1]), t64([a2, b2])))
    other = t64([[math.log(a1), math.log(a1 / b1)], [math.log(a2), math.log(a2 / b2)]])
    reparam = float(fisher_rao_distance(GAMMA_MEAN, other[0], other[1]))
    assert abs(direct - reparam) <= 1e-6 * direct


def beta_fisher(a, b):
    t = special.polygamma(1, a + b)
    return np.array([[special.polygamma(1, a) - t, -t], [-t, special.polygamma(1, b) - t]])


def beta_jeffreys(p, q):
    """J = ⟨η_p − η_q, μ_p − μ_q⟩ with η = (a−1, b−1), μ = (ψ(a) − ψ(a+b), ψ(b) − ψ(a+b))."""

    def mu(t):
        s = special.digamma(t.sum())
        return np.array([special.digamma(t[0]) - s, special.digamma(t[1]) - s])

    return float((p - q) @ (mu(p) - mu(q)))


@SETTINGS
@given(st.floats(0.5, 6), st.floats(0.5, 6), st.floats(0, 2 * math.pi))
def test_small_separation_distance_squared_is_quadratic_form_and_jeffreys(a, b, angle):
    centre = np.array([a, b])
    direction = np.array([math.cos(angle), math.sin(angle)])
    info = beta_fisher(a, b)
    for scale, tol in ((1e-2, 2e-3), (1e-3, 2e-5)):
        delta = scale * direction * min(a, b)
        lo, hi = centre - delta / 2, centre + delta / 2
        d2 = float(fisher_rao_distance(fisherkl.family("beta"), t64(lo), t64(hi))) ** 2
        quad = float(delta @ info @ delta)
        jeff = beta_jeffreys(hi, lo)
        # midpoint expansions: d² and J both equal δᵀI(θ)δ up to O(|δ|⁴) (relative O(|δ|²))
        assert abs(d2 / quad - 1) < tol
        assert abs(jeff / quad - 1) < tol
