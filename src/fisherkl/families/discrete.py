"""Discrete families: counts, trials and categories (one observation each)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Geometric, Poisson

from ..constraints import count, positive, unit_interval
from ..model import Param
from .base import Family, Fixed, register
from .distributions import AccurateBernoulli, AccurateBinomial, AccurateNegativeBinomial, bernoulli_kl, log1mexp


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
        # in p directly: torch's formula goes through clamped logits, flat (zero derivatives) below eps
        return bernoulli_kl(theta_p[..., 0], theta_q[..., 0])


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
        # KL = log(p/q) + ((1 − p)/p)·log((1 − p)/(1 − q)), written with log1p so that it stays exact
        # for small p (torch's form subtracts O(1/p) terms: KL(θ, θ) = 3e-3 at p = 1e-12)
        p, q = theta_p[..., 0], theta_q[..., 0]
        return torch.log(p) - torch.log(q) + (1 - p) / p * (torch.log1p(-p) - torch.log1p(-q))


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
        return self.bregman_kl(theta_p, theta_q)

    def natural(self, theta: Tensor) -> Tensor:
        return torch.log(theta)

    def from_natural(self, eta: Tensor) -> Tensor:
        return torch.exp(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return -self.fixed_values["total_count"] * log1mexp(eta[..., 0])

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return eta[..., 0] < 0
