"""Univariate continuous families (one observation each; formulas from DESIGN.md)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import (
    Cauchy,
    Distribution,
    Exponential,
    HalfNormal,
    Laplace,
    LogNormal,
    Normal,
)

from ..constraints import positive, real
from ..model import Param
from ..special import trigamma
from .accurate import AccurateBeta, AccurateGamma, dirichlet_kl, gamma_kl
from .base import Family, register, split, sym2


def _psi(z: Tensor) -> Tensor:
    """ψ(z) = 2(z + e^{−z} − 1)/z² for z ≥ 0 (ψ(0) = 1), by its series below 0.05."""
    small = z < 0.05
    zs = torch.where(small, torch.ones_like(z), z)
    direct = 2 * (zs + torch.expm1(-zs)) / zs.square()
    series = 1 - z / 3 + z.square() / 12 - z.pow(3) / 60 + z.pow(4) / 360 - z.pow(5) / 2520
    return torch.where(small, series, direct)


class LocationScale(Family):
    """p(x | μ, σ) = f((x − μ)/σ)/σ, with Fisher σ⁻²[[a, c], [c, e]] (a, c, e from f alone)."""

    a: float = 1.0
    c: float = 0.0
    e: float = 1.0
    typical_theta = (0.5, 1.5)

    def param_spec(self) -> list[Param]:
        return [Param("loc", real), Param("scale", positive)]

    def fisher_formula(self, theta: Tensor) -> Tensor:
        unit = torch.tensor([[self.a, self.c], [self.c, self.e]], dtype=theta.dtype, device=theta.device)
        return unit / theta[..., 1, None, None].square()


@register
class NormalFamily(LocationScale):
    name = "normal"
    torch_name = "Normal"
    description = "Normal(loc μ, scale σ)"
    a, c, e = 1.0, 0.0, 2.0

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return Normal(loc, scale, validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        loc, scale = split(theta)
        v = scale.square()
        return torch.stack([loc / v, -0.5 / v], -1)

    def log_partition(self, eta: Tensor) -> Tensor:
        e1, e2 = split(eta)
        return -e1.square() / (4 * e2) - 0.5 * torch.log(-2 * e2)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 1] < 0


@register
class LogNormalFamily(LocationScale):
    name = "lognormal"
    torch_name = "LogNormal"
    description = "log X ~ Normal(loc, scale)"
    a, c, e = 1.0, 0.0, 2.0

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return LogNormal(loc, scale, validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        loc, scale = split(theta)
        v = scale.square()
        return torch.stack([loc / v, -0.5 / v], -1)

    def log_partition(self, eta: Tensor) -> Tensor:
        e1, e2 = split(eta)
        return -e1.square() / (4 * e2) - 0.5 * torch.log(-2 * e2)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 1] < 0


@register
class LaplaceFamily(LocationScale):
    name = "laplace"
    torch_name = "Laplace"
    description = "Laplace(loc, scale)"
    twice_differentiable = False
    why_not_twice_differentiable = (
        "log p = −|x − loc|/scale has a kink at x = loc, so ∂²log p/∂loc² is a point mass that a "
        "pointwise Hessian misses; use method='score', 'closed' or 'kl_hessian'"
    )

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return Laplace(loc, scale, validate_args=False)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # KL = log(σq/σp) + (σp/σq)(1 + g(z)) − 1, z = |μp − μq|/σp, g(z) = z + e^{−z} − 1.
        # g is written as (Δ/σp)²/2 · ψ(z) with ψ(z) = 2g(z)/z², smooth at 0, so that autodiff
        # gives the true second derivative at Δ = 0 (torch's form, via |Δ|, gives 0 there).
        mp, sp = split(theta_p)
        mq, sq = split(theta_q)
        u = (mp - mq) / sp
        g = 0.5 * u.square() * _psi(u.abs())
        return torch.log(sq / sp) + (sp / sq) * (1 + g) - 1


@register
class CauchyFamily(LocationScale):
    name = "cauchy"
    torch_name = "Cauchy"
    description = "Cauchy(loc, scale)"
    a, c, e = 0.5, 0.0, 0.5

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return Cauchy(loc, scale, validate_args=False)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # KL = log[((σp + σq)² + (μp − μq)²) / (4 σp σq)]  (Chyzak & Nielsen 2019)
        mp, sp = split(theta_p)
        mq, sq = split(theta_q)
        return torch.log(((sp + sq).square() + (mp - mq).square()) / (4 * sp * sq))


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

    def log_partition(self, eta: Tensor) -> Tensor:
        return -0.5 * torch.log(-2 * eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return (2 / theta.square()).unsqueeze(-1)


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

    def log_partition(self, eta: Tensor) -> Tensor:
        return -torch.log(-eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return (1 / theta.square()).unsqueeze(-1)


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

    def log_partition(self, eta: Tensor) -> Tensor:
        e1, e2 = split(eta)
        return torch.lgamma(e1 + 1) - (e1 + 1) * torch.log(-e2)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return (eta[..., 0] > -1) & (eta[..., 1] < 0)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        a, b = split(theta)
        return sym2(trigamma(a), -1 / b, a / b.square())

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return gamma_kl(*split(theta_p), *split(theta_q))


@register
class BetaFamily(Family):
    name = "beta"
    torch_name = "Beta"
    description = "Beta(concentration1 a, concentration0 b)"
    typical_theta = (2.0, 3.0)

    def param_spec(self) -> list[Param]:
        return [Param("concentration1", positive), Param("concentration0", positive)]

    def make(self, theta: Tensor) -> Distribution:
        a, b = split(theta)
        return AccurateBeta(a, b, validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return theta - 1

    def log_partition(self, eta: Tensor) -> Tensor:
        a, b = split(eta + 1)
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        a, b = split(theta)
        t = trigamma(a + b)
        return sym2(trigamma(a) - t, -t, trigamma(b) - t)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return dirichlet_kl(theta_p, theta_q)
