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
from .distributions import AccurateChi2, AccurateGamma, AccurateInverseGamma, AccurateWeibull, gamma_kl

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
        l1, k1 = split(theta_p)
        l2, k2 = split(theta_q)
        return (
            torch.log(k1 / k2)
            - k1 * torch.log(l1)
            + k2 * torch.log(l2)
            + (k1 - k2) * (torch.log(l1) - EULER_GAMMA / k1)
            + torch.exp(k2 * (torch.log(l1) - torch.log(l2)) + lgamma(k2 / k1 + 1))
            - 1
        )


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
        r = theta_p[..., 0] / theta_q[..., 0]
        return r.square() - 1 - 2 * torch.log(r)

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
        # same support: KL = log(α₁/α₂) + α₂/α₁ − 1
        r = theta_q[..., 0] / theta_p[..., 0]
        return r - 1 - torch.log(r)

    def natural(self, theta: Tensor) -> Tensor | None:
        return None if self.free_scale else -theta - 1

    def from_natural(self, eta: Tensor) -> Tensor:
        return -eta - 1

    def log_partition(self, eta: Tensor) -> Tensor:
        alpha = -eta[..., 0] - 1
        return -torch.log(alpha) - alpha * math.log(self.fixed_values["scale"])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < -1
