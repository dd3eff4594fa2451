"""Discrete families: counts, trials and categories (one observation each)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Geometric, Poisson

from ..constraints import count, positive, unit_interval
from ..model import Param
from ..special import poisson_kl
from .base import Family, Fixed, register
from .closed_divergences import bernoulli_kl
from .distributions import AccurateBernoulli, AccurateBinomial, AccurateNegativeBinomial, log1mexp

INF = float("inf")


def bernoulli_chi2(p: Tensor, q: Tensor) -> Tensor:
    """Σ (qᵢ − pᵢ)²/pᵢ over the two outcomes = (q − p)²/(p(1 − p))."""
    return (q - p).square() / (p * (1 - p))


class OneProbability(Family):
    """Families with a single success probability ``probs`` in (0, 1)."""

    typical_theta = (0.3,)

    def param_spec(self) -> list[Param]:
        return [Param("probs", unit_interval)]


@register
class BernoulliFamily(OneProbability):
    name = "bernoulli"
    torch_name = "Bernoulli"
    description = "Bernoulli(probs p)"

    def make(self, theta: Tensor) -> Distribution:
        return AccurateBernoulli(probs=theta[..., 0], validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return torch.logit(theta)

    def from_natural(self, eta: Tensor) -> Tensor:
        return torch.sigmoid(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return torch.nn.functional.softplus(eta[..., 0])

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return 1 / (theta * (1 - theta)).unsqueeze(-1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # in p and q directly (torch's formula goes through clamped logits, flat below eps), from q − p
        return bernoulli_kl(theta_p[..., 0], theta_q[..., 0])

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return bernoulli_chi2(theta_p[..., 0], theta_q[..., 0])


@register
class BinomialFamily(OneProbability):
    name = "binomial"
    torch_name = "Binomial"
    description = "Binomial(total_count n fixed, probs p)"
    fixed = {"total_count": Fixed(count, 10, "number of trials n")}

    def make(self, theta: Tensor) -> Distribution:
        n = self.fixed_values["total_count"]
        return AccurateBinomial(n, probs=theta[..., 0], validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return torch.logit(theta)

    def from_natural(self, eta: Tensor) -> Tensor:
        return torch.sigmoid(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return self.fixed_values["total_count"] * torch.nn.functional.softplus(eta[..., 0])

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return self.fixed_values["total_count"] / (theta * (1 - theta)).unsqueeze(-1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return self.fixed_values["total_count"] * bernoulli_kl(theta_p[..., 0], theta_q[..., 0])

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        one = bernoulli_chi2(theta_p[..., 0], theta_q[..., 0])
        return torch.expm1(self.fixed_values["total_count"] * torch.log1p(one))


@register
class GeometricFamily(OneProbability):
    name = "geometric"
    torch_name = "Geometric"
    description = "failures before the first success, success probability p"

    def make(self, theta: Tensor) -> Distribution:
        return Geometric(probs=theta[..., 0], validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return torch.log1p(-theta)

    def from_natural(self, eta: Tensor) -> Tensor:
        return -torch.expm1(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return -log1mexp(eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return 1 / (theta.square() * (1 - theta)).unsqueeze(-1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # KL = log(p/q) + ((1 − p)/p)·log((1 − p)/(1 − q)) = KL[Bern(p) ‖ Bern(q)]/p (one Bernoulli
        # KL per trial, 1/p trials on average), a sum of nonnegative terms
        p, q = theta_p[..., 0], theta_q[..., 0]
        return bernoulli_kl(p, q) / p

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # Σ_k q²(1−q)^{2k}/(p(1−p)^k) − 1 = d²/(p[(1 − p)(p + 2d) − d²]), d = q − p; +inf where the
        # series diverges ((1 − q)² ≥ 1 − p ⟺ the bracket ≤ 0)
        p, q = theta_p[..., 0], theta_q[..., 0]
        d = q - p
        den = p * ((1 - p) * (p + 2 * d) - d.square())
        ok = den > 0
        return torch.where(ok, d.square() / torch.where(ok, den, torch.ones_like(den)), torch.full_like(den, INF))


@register
class PoissonFamily(Family):
    name = "poisson"
    torch_name = "Poisson"
    description = "Poisson(rate λ)"
    typical_theta = (3.5,)

    def param_spec(self) -> list[Param]:
        return [Param("rate", positive)]

    def make(self, theta: Tensor) -> Distribution:
        return Poisson(theta[..., 0], validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return torch.log(theta)

    def from_natural(self, eta: Tensor) -> Tensor:
        return torch.exp(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return torch.exp(eta[..., 0])

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return (1 / theta).unsqueeze(-1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # λp log(λp/λq) − λp + λq = λp·g((λq − λp)/λp)
        return poisson_kl(theta_p[..., 0], theta_q[..., 0] - theta_p[..., 0])

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # Σ q²/p = exp((λq − λp)²/λp)
        return torch.expm1((theta_q[..., 0] - theta_p[..., 0]).square() / theta_p[..., 0])


@register
class NegativeBinomialFamily(Family):
    """Successes before the r-th failure, success probability p (torch's convention):
    I(p) = r/(p(1 − p)²) (= r/(q²(1 − q)) in the failure probability q = 1 − p)."""

    name = "negativebinomial"
    torch_name = "NegativeBinomial"
    description = "NegativeBinomial(total_count r fixed, probs p): successes before r failures"
    fixed = {"total_count": Fixed(positive, 5.0, "number of failures r", cast=float)}
    typical_theta = (0.4,)

    def param_spec(self) -> list[Param]:
        return [Param("probs", unit_interval)]

    def make(self, theta: Tensor) -> Distribution:
        r = torch.as_tensor(self.fixed_values["total_count"], dtype=theta.dtype, device=theta.device)
        return AccurateNegativeBinomial(r, probs=theta[..., 0], validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        r = self.fixed_values["total_count"]
        return (r / (theta * (1 - theta).square())).unsqueeze(-1)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # r·[−log((1−q)/(1−p)) − (p/(1−p))·log(q/p)] = r·KL[Bern(p) ‖ Bern(q)]/(1 − p)
        p, q = theta_p[..., 0], theta_q[..., 0]
        return self.fixed_values["total_count"] * bernoulli_kl(p, q) / (1 - p)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # Σ q²/p = [(1−q)²/(1−p)]^r (1 − q²/p)^{−r} = (1 − d²/(p(1−q)²))^{−r}, d = q − p; +inf for q² ≥ p
        p, q = theta_p[..., 0], theta_q[..., 0]
        x = (q - p).square() / (p * (1 - q).square())
        ok = x < 1
        value = torch.expm1(-self.fixed_values["total_count"] * torch.log1p(-torch.where(ok, x, torch.zeros_like(x))))
        return torch.where(ok, value, torch.full_like(value, INF))

    def natural(self, theta: Tensor) -> Tensor:
        return torch.log(theta)

    def from_natural(self, eta: Tensor) -> Tensor:
        return torch.exp(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return -self.fixed_values["total_count"] * log1mexp(eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0
