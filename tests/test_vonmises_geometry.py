"""Von Mises Fisher–Rao distances (issue 17, item 9), against independent oracles.

Oracles: the radial distance ∫√A′(κ)dκ for equal locations (scipy quadrature of scipy's Bessel
functions), the flat limit near κ = 0 (ds² → ½(dκ² + κ²dμ²), polar coordinates of a Euclidean
plane), the audit's boundary-value solution 1.266488566785 (scipy solve_bvp), and the period 2π of
the location.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, special

import fisherkl as fk

VM = fk.family("vonmises")


def t64(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


def radial(k1: float, k2: float) -> float:
    """∫ √A′(κ) dκ, A = I₁/I₀, A′ = 1 − A/κ − A² (scipy)."""

    def speed(k: float) -> float:
        a = special.i1e(k) / special.i0e(k)
        return math.sqrt(1 - a / k - a * a)

    value, _ = integrate.quad(speed, k1, k2, epsabs=0, epsrel=1e-13, limit=200)
    return abs(value)


def test_audit_value_and_locations_two_pi_apart() -> None:
    assert abs(float(fk.fisher_rao_distance(VM, t64(0, 1), t64(2.5, 1))) - 1.266488566785) < 1e-11
    assert float(fk.fisher_rao_distance(VM, t64(0, 1), t64(2 * math.pi, 1))) == 0.0
    assert float(fk.fisher_rao_distance(VM, t64(0.3, 2.0), t64(0.3 - 4 * math.pi, 2.0))) == 0.0


@pytest.mark.parametrize(("k1", "k2"), [(0.5, 2.0), (1.0, 30.0), (3.0, 3.5)])
def test_equal_locations_give_the_radial_integral(k1: float, k2: float) -> None:
    for shift in (0.0, 2 * math.pi):
        got = float(fk.fisher_rao_distance(VM, t64(0.7, k1), t64(0.7 + shift, k2)))
        assert abs(got - radial(k1, k2)) <= 1e-10 * radial(k1, k2)


def test_flat_near_the_uniform_distribution_and_periodic() -> None:
    k1, k2, mu1, mu2 = 1e-3, 2e-3, 0.2, 2.9
    euclid = math.hypot(k1 * math.cos(mu1) - k2 * math.cos(mu2), k1 * math.sin(mu1) - k2 * math.sin(mu2))
    got = float(fk.fisher_rao_distance(VM, t64(mu1, k1), t64(mu2, k2)))
    assert abs(got - euclid / math.sqrt(2)) <= 1e-5 * got  # relative error O(κ²)
    # the distance depends on the location difference modulo 2π only, and is symmetric
    d = float(fk.fisher_rao_distance(VM, t64(0.1, 1.5), t64(2.0, 0.8)))
    for shift in (-2 * math.pi, 6 * math.pi):
        assert abs(float(fk.fisher_rao_distance(VM, t64(0.1, 1.5), t64(2.0 + shift, 0.8))) - d) <= 1e-12 * d
    assert abs(float(fk.fisher_rao_distance(VM, t64(2.0, 0.8), t64(0.1, 1.5))) - d) <= 1e-12 * d
