"""Location–scale families p(x | μ, σ) = f((x − μ)/σ)/σ on the real line (and LogNormal).

Their Fisher information is σ⁻²[[a, c], [c, e]] with a, c, e depending on f alone; the same
coefficients give their Fisher–Rao distances in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Cauchy, Distribution, Gumbel, Laplace, LogNormal, Normal, StudentT

from ..constraints import positive, real
from ..model import Param
from ..special import expm1mx_over_square, log1pmx
from .base import Family, Fixed, register, split
from .closed_divergences import normal_kl, normal_log_chi2, weibull_type_kl
from .distributions import Logistic

EULER_GAMMA = 0.5772156649015329


def exponential_tails_moment(theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
    """E_p[(q/p)^m] < ∞ for densities with tails ∝ e^{−|x|/σ}: m/σq > (m − 1)/σp."""
    return m * theta_p[..., 1] > (m - 1) * theta_q[..., 1]


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

    def standard_point(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(0, 1) and J = I/σ: the Fisher information of (μ, σ) is that of (0, 1) divided by σ²."""
        sigma = theta[..., 1]
        standard = torch.stack([torch.zeros_like(sigma), torch.ones_like(sigma)], -1).detach()
        inv = (1 / sigma)[..., None, None]
        return standard, inv * torch.eye(2, dtype=theta.dtype, device=theta.device)


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

    def from_natural(self, eta: Tensor) -> Tensor:
        var = -0.5 / eta[..., 1]
        return torch.stack([eta[..., 0] * var, var.sqrt()], -1)

    def log_partition(self, eta: Tensor) -> Tensor:
        e1, e2 = split(eta)
        return -e1.square() / (4 * e2) - 0.5 * torch.log(-2 * e2)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 1] < 0

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return normal_kl(*split(theta_p), *split(theta_q))

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return torch.expm1(normal_log_chi2(*split(theta_p), *split(theta_q)))


@register
class LogNormalFamily(NormalFamily):
    """log X ~ Normal(loc, scale): a bijection of the normal, so Fisher, KL and χ² are the normal's."""

    name = "lognormal"
    torch_name = "LogNormal"
    description = "log X ~ Normal(loc, scale)"

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return LogNormal(loc, scale, validate_args=False)


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
        # KL = log(σq/σp) + (σp/σq)(1 + e^{−z} − 1 + z) − 1, z = |μp − μq|/σp
        #    = g(r − 1) + r·(e^{−z} − 1 + z), r = σp/σq: two nonnegative terms. The second is
        # z²/2 − z³/6 + … by its series near 0, so autodiff gives the true second derivative at
        # Δ = 0 (torch's form, via |Δ|, gives 0 there).
        mp, sp = split(theta_p)
        mq, sq = split(theta_q)
        u = (mp - mq) / sp
        return log1pmx((sp - sq) / sq) + (sp / sq) * u.square() * expm1mx_over_square(-u.abs())

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        return exponential_tails_moment(theta_p, theta_q, m)


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
        #    = log(1 + [(σp − σq)² + (μp − μq)²] / (4 σp σq))
        mp, sp = split(theta_p)
        mq, sq = split(theta_q)
        return torch.log1p(((sp - sq).square() + (mp - mq).square()) / (4 * sp * sq))

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # two Cauchy densities have a bounded ratio
        return torch.ones(torch.broadcast_shapes(theta_p.shape, theta_q.shape)[:-1], dtype=torch.bool)


@register
class LogisticFamily(LocationScale):
    name = "logistic"
    torch_name = "Logistic (fisherkl)"
    description = "Logistic(loc, scale)"
    a, c, e = 1 / 3, 0.0, (math.pi**2 + 3) / 9

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return Logistic(loc, scale, validate_args=False)

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        return exponential_tails_moment(theta_p, theta_q, m)


@register
class GumbelFamily(LocationScale):
    name = "gumbel"
    torch_name = "Gumbel"
    description = "Gumbel (maximum) with loc, scale"
    a, c, e = 1.0, EULER_GAMMA - 1, (1 - EULER_GAMMA) ** 2 + math.pi**2 / 6

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return Gumbel(loc, scale, validate_args=False)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # KL = −log r − (μq − μp)/σq + γr + exp((μq − μp)/σq + log Γ(1 + r)) − (1 + γ), r = σp/σq
        # (torch's formula), rearranged into two nonnegative terms (see weibull_type_kl)
        mp, sp = split(theta_p)
        mq, sq = split(theta_q)
        return weibull_type_kl((sp - sq) / sq, (mq - mp) / sq)

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # right tail ∝ e^{−x/σ}: m/σq > (m−1)/σp; left tail ∝ exp(−e^{−(x−μ)/σ}): q's must fall faster
        mp, sp = split(theta_p)
        mq, sq = split(theta_q)
        right = m * sp > (m - 1) * sq
        same = (sq == sp) & (mq - mp > sp * math.log((m - 1) / m))
        return right & ((sq < sp) | same)


@register
class StudentTFamily(LocationScale):
    name = "studentt"
    torch_name = "StudentT"
    description = "Student's t with fixed df ν, loc, scale"
    fixed = {"df": Fixed(positive, 5.0, "degrees of freedom ν", cast=float)}

    @property
    def a(self) -> float:  # type: ignore[override]
        nu = self.fixed_values["df"]
        return (nu + 1) / (nu + 3)

    @property
    def e(self) -> float:  # type: ignore[override]
        nu = self.fixed_values["df"]
        return 2 * nu / (nu + 3)

    def make(self, theta: Tensor) -> Distribution:
        loc, scale = split(theta)
        return StudentT(self.fixed_values["df"], loc, scale, validate_args=False)

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # the same polynomial tails: the ratio of the densities is bounded
        return torch.ones(torch.broadcast_shapes(theta_p.shape, theta_q.shape)[:-1], dtype=torch.bool)
