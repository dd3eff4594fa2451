"""Families on the positive half-line (one observation each; formulas from DESIGN.md)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, Exponential, HalfNormal, Pareto

from ..constraints import positive
from ..model import Param
from ..special import lgamma, trigamma
from .base import Family, Fixed, register, scale_symmetry, split, sym2
from .closed_divergences import (
    gamma_chi2,
    gamma_kl,
    reciprocal_square_chi2,
    scale_kl,
    square_ratio_minus_one,
    weibull_type_kl,
)
from .distributions import AccurateChi2, AccurateGamma, AccurateInverseGamma, AccurateWeibull

EULER_GAMMA = 0.5772156649015329


@register
class HalfNormalFamily(Family):
    name = "halfnormal"
    torch_name = "HalfNormal"
    description = "|X|, X ~ Normal(0, scale)"
    typical_theta = (1.5,)

    def param_spec(self) -> list[Param]:
        return [Param("scale", positive)]

    def make(self, theta: Tensor) -> Distribution:
        return HalfNormal(theta[..., 0], validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return -0.5 / theta.square()

    def from_natural(self, eta: Tensor) -> Tensor:
        return (-0.5 / eta).sqrt()

    def log_partition(self, eta: Tensor) -> Tensor:
        return -0.5 * torch.log(-2 * eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return (2 / theta.square()).unsqueeze(-1)

    def standard_point(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return scale_symmetry(theta, 0)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # log(σq/σp) + σp²/(2σq²) − ½ = ½·g((σp/σq)² − 1)
        return 0.5 * scale_kl(square_ratio_minus_one(theta_p[..., 0], theta_q[..., 0]))

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        eps = square_ratio_minus_one(theta_q[..., 0], theta_p[..., 0])
        return torch.expm1(reciprocal_square_chi2(eps, 0.5))


@register
class ExponentialRateFamily(Family):
    name = "exponential"
    torch_name = "Exponential"
    description = "Exponential(rate λ)"
    typical_theta = (1.7,)

    def param_spec(self) -> list[Param]:
        return [Param("rate", positive)]

    def make(self, theta: Tensor) -> Distribution:
        return Exponential(theta[..., 0], validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return -theta

    def from_natural(self, eta: Tensor) -> Tensor:
        return -eta

    def log_partition(self, eta: Tensor) -> Tensor:
        return -torch.log(-eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return (1 / theta.square()).unsqueeze(-1)

    def standard_point(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return scale_symmetry(theta, 0)  # λx ~ Exponential(1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return rate_kl(theta_p[..., 0], theta_q[..., 0])

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return rate_chi2(theta_p[..., 0], theta_q[..., 0])


def rate_kl(lp: Tensor, lq: Tensor) -> Tensor:
    """KL for p(x) ∝ λ e^{−λ t(x)}: log(λp/λq) + λq/λp − 1 = g((λq − λp)/λp)."""
    return scale_kl((lq - lp) / lp)


def rate_chi2(lp: Tensor, lq: Tensor) -> Tensor:
    """χ² for p(x) ∝ λ e^{−λ t(x)}: λq²/(λp(2λq − λp)) − 1 = 1/(1 − e²) − 1, e = (λq − λp)/λq."""
    return torch.expm1(reciprocal_square_chi2((lq - lp) / lq, 1.0))


@register
class GammaFamily(Family):
    name = "gamma"
    torch_name = "Gamma"
    description = "Gamma(concentration α, rate β)"
    typical_theta = (2.5, 1.7)

    def param_spec(self) -> list[Param]:
        return [Param("concentration", positive), Param("rate", positive)]

    def make(self, theta: Tensor) -> Distribution:
        a, b = split(theta)
        return AccurateGamma(a, b, validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        a, b = split(theta)
        return torch.stack([a - 1, -b], -1)

    def from_natural(self, eta: Tensor) -> Tensor:
        return torch.stack([eta[..., 0] + 1, -eta[..., 1]], -1)

    def log_partition(self, eta: Tensor) -> Tensor:
        e1, e2 = split(eta)
        return lgamma(e1 + 1) - (e1 + 1) * torch.log(-e2)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return (eta[..., 0] > -1) & (eta[..., 1] < 0)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        a, b = split(theta)
        return sym2(trigamma(a), -1 / b, a / b / b)  # a/b², without overflowing b² (b = 1e276)

    def standard_point(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return scale_symmetry(theta, 1)  # βx ~ Gamma(α, 1) (InverseGamma: x/β ~ InverseGamma(α, 1))

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return gamma_kl(*split(theta_p), *split(theta_q))

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return gamma_chi2(*split(theta_p), *split(theta_q))


@register
class InverseGammaFamily(GammaFamily):
    """1/X ~ Gamma(α, β): a bijection of x, so the Fisher information, KL and χ² are the Gamma's."""

    name = "inversegamma"
    torch_name = "InverseGamma"
    description = "InverseGamma(concentration α, rate β): 1/X ~ Gamma(α, β)"
    typical_theta = (3.0, 2.0)

    def make(self, theta: Tensor) -> Distribution:
        a, b = split(theta)
        return AccurateInverseGamma(a, b, validate_args=False)


@register
class Chi2Family(Family):
    name = "chi2"
    torch_name = "Chi2"
    description = "Chi-squared with df degrees of freedom (Gamma(df/2, ½))"
    typical_theta = (3.0,)

    def param_spec(self) -> list[Param]:
        return [Param("df", positive)]

    def make(self, theta: Tensor) -> Distribution:
        return AccurateChi2(theta[..., 0], validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return (trigamma(theta / 2) / 4).unsqueeze(-1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        half = torch.full_like(theta_p[..., 0], 0.5)
        return gamma_kl(theta_p[..., 0] / 2, half, theta_q[..., 0] / 2, half)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        half = torch.full_like(theta_p[..., 0], 0.5)
        return gamma_chi2(theta_p[..., 0] / 2, half, theta_q[..., 0] / 2, half)

    def natural(self, theta: Tensor) -> Tensor:
        return theta / 2 - 1

    def from_natural(self, eta: Tensor) -> Tensor:
        return 2 * (eta + 1)

    def log_partition(self, eta: Tensor) -> Tensor:
        a = eta[..., 0] + 1
        return lgamma(a) + a * math.log(2.0)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] > -1


@register
class WeibullFamily(Family):
    name = "weibull"
    torch_name = "Weibull"
    description = "Weibull(scale λ, concentration k)"
    typical_theta = (1.3, 2.2)

    def param_spec(self) -> list[Param]:
        return [Param("scale", positive), Param("concentration", positive)]

    def make(self, theta: Tensor) -> Distribution:
        lam, k = split(theta)
        return AccurateWeibull(lam, k, validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        lam, k = split(theta)
        g = 1 - EULER_GAMMA
        return sym2((k / lam).square(), -g / lam, (g**2 + math.pi**2 / 6) / k.square())

    def standard_point(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return scale_symmetry(theta, 0)  # x/λ ~ Weibull(1, k)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # Bauckhage (2013): KL = log(k₁/λ₁^k₁) − log(k₂/λ₂^k₂) + (k₁ − k₂)(log λ₁ − γ/k₁)
        #                        + (λ₁/λ₂)^k₂ Γ(k₂/k₁ + 1) − 1
        #   = −log r − s − γ(1 − r) + exp(s + log Γ(1 + r)) − 1, r = k₂/k₁, s = k₂ log(λ₁/λ₂),
        # rearranged into two nonnegative terms (see weibull_type_kl)
        l1, k1 = split(theta_p)
        l2, k2 = split(theta_q)
        return weibull_type_kl((k2 - k1) / k1, k2 * torch.log1p((l1 - l2) / l2))

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # near 0: x^{m(kq−1) − (m−1)(kp−1)} integrable iff m kq > (m−1) kp; at ∞: exp(−m(x/λq)^kq +
        # (m−1)(x/λp)^kp) decays iff kq > kp, or kq = kp and m λp^k > (m−1) λq^k
        l1, k1 = split(theta_p)
        l2, k2 = split(theta_q)
        zero = m * k2 > (m - 1) * k1
        tail = (k2 > k1) | ((k2 == k1) & (math.log(m / (m - 1)) > k1 * (torch.log(l2) - torch.log(l1))))
        return zero & tail


@register
class RayleighFamily(Family):
    name = "rayleigh"
    torch_name = "Weibull(σ√2, 2)"
    description = "Rayleigh(scale σ): density (x/σ²) exp(−x²/2σ²)"
    typical_theta = (1.5,)

    def param_spec(self) -> list[Param]:
        return [Param("scale", positive)]

    def make(self, theta: Tensor) -> Distribution:
        sigma = theta[..., 0]
        return AccurateWeibull(sigma * math.sqrt(2), torch.full_like(sigma, 2.0), validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return (4 / theta.square()).unsqueeze(-1)

    def standard_point(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        return scale_symmetry(theta, 0)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # r² − 1 − 2 log r = g(r² − 1), r = σp/σq
        return scale_kl(square_ratio_minus_one(theta_p[..., 0], theta_q[..., 0]))

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # ∫q²/p = σp⁴/(σq²(2σp² − σq²)) = 1/(1 − ε²), ε = σq²/σp² − 1
        eps = square_ratio_minus_one(theta_q[..., 0], theta_p[..., 0])
        return torch.expm1(reciprocal_square_chi2(eps, 1.0))

    def natural(self, theta: Tensor) -> Tensor:
        return -0.5 / theta.square()

    def from_natural(self, eta: Tensor) -> Tensor:
        return (-0.5 / eta).sqrt()

    def log_partition(self, eta: Tensor) -> Tensor:
        return -torch.log(-2 * eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0


@register
class ParetoFamily(Family):
    """Pareto with fixed scale x_m and shape α: log p = log α + α log x_m − (α + 1) log x, x ≥ x_m.

    ``family("pareto", scale=None)`` makes the scale a parameter too; that model is non-regular
    (the support [x_m, ∞) moves with it) and its Fisher raises NonRegularModelError.
    """

    name = "pareto"
    torch_name = "Pareto"
    description = "Pareto(alpha α) with fixed scale x_m (scale=None: non-regular)"
    fixed = {"scale": Fixed(positive, 1.0, "scale x_m, where the support starts (None: a parameter)", cast=float)}
    why_not_regular = (
        "the Pareto scale x_m is where the support [x_m, ∞) starts, so the support depends on it: "
        "log p is not differentiable in x_m there, E[score] ≠ 0 and no Fisher information exists; "
        "fix the scale (family('pareto', scale=1.0)) to get the Fisher information of the shape"
    )

    def __init__(self, **fixed: object) -> None:
        self.free_scale = "scale" in fixed and fixed["scale"] is None
        if self.free_scale:
            fixed = {k: v for k, v in fixed.items() if k != "scale"}
        super().__init__(**fixed)
        if self.free_scale:
            self.fixed_values.pop("scale")
            self.regular = False

    @property
    def typical_theta(self) -> tuple[float, ...]:  # type: ignore[override]
        return (1.0, 2.5) if self.free_scale else (2.5,)

    def param_spec(self) -> list[Param]:
        if self.free_scale:
            return [Param("scale", positive), Param("alpha", positive)]
        return [Param("alpha", positive)]

    def make(self, theta: Tensor) -> Distribution:
        if self.free_scale:
            return Pareto(theta[..., 0], theta[..., 1], validate_args=False)
        alpha = theta[..., 0]
        return Pareto(torch.full_like(alpha, self.fixed_values["scale"]), alpha, validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor | None:
        return None if self.free_scale else (1 / theta.square()).unsqueeze(-1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        if self.free_scale:
            return Family.kl_formula(self, theta_p, theta_q)
        # same support: KL = log(α₁/α₂) + α₂/α₁ − 1 = g((α₂ − α₁)/α₁)
        return rate_kl(theta_p[..., 0], theta_q[..., 0])

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        if self.free_scale:
            return None
        return rate_chi2(theta_p[..., 0], theta_q[..., 0])

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # tails x^{−α−1}: ∫ q^m p^{1−m} converges iff m αq > (m − 1) αp (with a free scale too)
        return m * theta_q[..., -1] > (m - 1) * theta_p[..., -1]

    def natural(self, theta: Tensor) -> Tensor | None:
        return None if self.free_scale else -theta - 1

    def from_natural(self, eta: Tensor) -> Tensor:
        return -eta - 1

    def log_partition(self, eta: Tensor) -> Tensor:
        alpha = -eta[..., 0] - 1
        return -torch.log(alpha) - alpha * math.log(self.fixed_values["scale"])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < -1
