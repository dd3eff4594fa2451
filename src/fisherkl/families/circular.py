"""Circular families: the von Mises distribution on [−π, π)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..constraints import positive, real
from ..model import Param
from .base import Family, diag_matrix, register, split
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
        # KL = log I₀(κq) − log I₀(κp) + A(κp)(κp − κq cos Δ), Δ = μp − μq, rearranged without
        # cancellation for large κ: log i0e(κq) − log i0e(κp) + (κq − κp)(1 − A) + 2Aκq sin²(Δ/2)
        mp, kp = split(theta_p)
        mq, kq = split(theta_q)
        c = bessel_ratio_complement(kp)
        return log_i0e(kq) - log_i0e(kp) + (kq - kp) * c + 2 * (1 - c) * kq * torch.sin((mp - mq) / 2).square()
