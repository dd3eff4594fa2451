"""Circular families: the von Mises distribution on [−π, π)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..constraints import positive, real
from ..model import Param
from .base import Family, diag_matrix, register, split
from .closed_divergences import log_i0_bregman
from .distributions import (
    AccurateVonMises,
    bessel_ratio,
    bessel_ratio_complement,
    bessel_ratio_derivative,
    log_i0e,
)


@register
class VonMisesFamily(Family):
    """VonMises(loc μ, concentration κ): I = diag(κA, 1 − A/κ − A²), A = I₁(κ)/I₀(κ)."""

    name = "vonmises"
    torch_name = "VonMises"
    description = "VonMises(loc μ, concentration κ) on the circle"
    typical_theta = (0.3, 2.0)

    def param_spec(self) -> list[Param]:
        return [Param("loc", real), Param("concentration", positive)]

    def make(self, theta: Tensor) -> Distribution:
        loc, kappa = split(theta)
        return AccurateVonMises(loc, kappa, validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        _, kappa = split(theta)
        return diag_matrix(kappa * bessel_ratio(kappa), bessel_ratio_derivative(kappa))

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # KL = log I₀(κq) − log I₀(κp) + A(κp)(κp − κq cos Δ), Δ = μp − μq
        #    = [log I₀(κq) − log I₀(κp) − (κq − κp)A(κp)] + 2Aκq sin²(Δ/2): the Bregman divergence of
        # the convex log I₀ (by Gauss–Legendre on A′ near κp) plus a nonnegative location term
        mp, kp = split(theta_p)
        mq, kq = split(theta_q)
        bregman = log_i0_bregman(kp, kq - kp, log_i0e, bessel_ratio_complement, bessel_ratio_derivative)
        return bregman + 2 * bessel_ratio(kp) * kq * torch.sin((mp - mq) / 2).square()

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # two von Mises densities have a bounded ratio on the circle
        return torch.ones(torch.broadcast_shapes(theta_p.shape, theta_q.shape)[:-1], dtype=torch.bool)
