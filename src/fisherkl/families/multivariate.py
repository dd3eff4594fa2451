"""Families over categories and the simplex: categorical and Dirichlet."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions.transforms import StickBreakingTransform

from ..constraints import count, integer_in, positive, unit_interval
from ..model import Param
from ..special import lgamma, poisson_kl, trigamma
from .base import Family, Fixed, one_minus_sum, register
from .closed_divergences import dirichlet_chi2, dirichlet_kl
from .distributions import AccurateCategorical, AccurateDirichlet, EnumerableMultinomial

categories = integer_in(2, 2**20)  # a k − 1 parameter model: beyond a million categories, refused


@register
class CategoricalFamily(Family):
    """θ = (p₁, …, p_{k−1}); p_k = 1 − Σθ. Fisher I_ij = δ_ij/p_i + 1/p_k."""

    name = "categorical"
    torch_name = "Categorical"
    description = "Categorical over k categories; θ = the first k−1 probabilities"
    fixed = {"k": Fixed(categories, 3, "number of categories")}

    @property
    def typical_theta(self) -> tuple[float, ...]:  # type: ignore[override]
        k = self.fixed_values["k"]
        return tuple(float(i + 1) / (k * (k + 1) / 2) for i in range(k - 1))

    def param_spec(self) -> list[Param]:
        return [Param("probs", unit_interval, self.fixed_values["k"] - 1)]

    def _check_joint(self, theta: Tensor, what: str) -> None:
        total = theta.sum(-1)
        ok = one_minus_sum(theta) > 0
        if not bool(ok.all()):
            self._raise_at(
                total, ok, "the probabilities 'probs' must sum to less than 1 (the last one is 1 − sum)", what
            )

    def unconstraining_transform(self) -> Callable[[Tensor], Tensor]:
        """ℝ^{k−1} → the first k−1 probabilities, by torch's stick-breaking bijection."""
        stick = StickBreakingTransform()
        return lambda u: stick(u)[..., :-1]

    def unconstraining_inverse(self) -> Callable[[Tensor], Tensor]:
        stick = StickBreakingTransform()
        return lambda theta: stick.inv(self.full_probs(theta))

    @staticmethod
    def full_probs(theta: Tensor) -> Tensor:
        return torch.cat([theta, one_minus_sum(theta).unsqueeze(-1)], -1)

    def make(self, theta: Tensor) -> Distribution:
        return AccurateCategorical(probs=self.full_probs(theta), validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return torch.log(theta) - torch.log1p(-theta.sum(-1, keepdim=True))

    def from_natural(self, eta: Tensor) -> Tensor:
        zero = torch.zeros_like(eta[..., :1])
        return torch.softmax(torch.cat([eta, zero], -1), -1)[..., :-1]

    def log_partition(self, eta: Tensor) -> Tensor:
        zero = torch.zeros_like(eta[..., :1])
        return torch.logsumexp(torch.cat([eta, zero], -1), -1)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        last = one_minus_sum(theta)
        k1 = theta.shape[-1]
        ones = torch.ones(k1, k1, dtype=theta.dtype, device=theta.device)
        return torch.diag_embed(1 / theta) + ones / last[..., None, None]

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # Σ p_i log(p_i/q_i) = Σ p_i·g((q_i − p_i)/p_i) (the Σ(q_i − p_i) = 0 added), each term ≥ 0
        # and computed from the differences (the last one is −Σ of the others)
        p = self.full_probs(theta_p)
        d = theta_q - theta_p
        d = torch.cat([d, -d.sum(-1, keepdim=True)], -1)
        return poisson_kl(p, d).sum(-1)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        p = self.full_probs(theta_p)
        d = theta_q - theta_p
        d = torch.cat([d, -d.sum(-1, keepdim=True)], -1)
        return (d.square() / p).sum(-1)


@register
class MultinomialFamily(CategoricalFamily):
    """Counts of n draws over k categories; θ = the first k−1 probabilities. I = n × categorical's."""

    name = "multinomial"
    torch_name = "Multinomial"
    description = "Multinomial(total_count n fixed, k categories); θ = the first k−1 probabilities"
    fixed = {
        "total_count": Fixed(count, 10, "number of draws n"),
        "k": Fixed(categories, 3, "number of categories"),
    }

    @property
    def n(self) -> int:
        return int(self.fixed_values["total_count"])

    def make(self, theta: Tensor) -> Distribution:
        return EnumerableMultinomial(self.n, probs=self.full_probs(theta), validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        return self.n * super().fisher_formula(theta)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return self.n * super().kl_formula(theta_p, theta_q)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return torch.expm1(self.n * torch.log1p(super().chi2_formula(theta_p, theta_q)))

    def log_partition(self, eta: Tensor) -> Tensor:
        return self.n * super().log_partition(eta)


@register
class DirichletFamily(Family):
    name = "dirichlet"
    torch_name = "Dirichlet"
    description = "Dirichlet(concentration α₁..α_k)"
    fixed = {"k": Fixed(categories, 3, "number of categories")}

    @property
    def typical_theta(self) -> tuple[float, ...]:  # type: ignore[override]
        return tuple(1.5 + 0.5 * i for i in range(self.fixed_values["k"]))

    def param_spec(self) -> list[Param]:
        return [Param("concentration", positive, self.fixed_values["k"])]

    def make(self, theta: Tensor) -> Distribution:
        return AccurateDirichlet(theta, validate_args=False)

    def natural(self, theta: Tensor) -> Tensor:
        return theta - 1

    def from_natural(self, eta: Tensor) -> Tensor:
        return eta + 1

    def log_partition(self, eta: Tensor) -> Tensor:
        a = eta + 1
        return lgamma(a).sum(-1) - lgamma(a.sum(-1))

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        k = theta.shape[-1]
        ones = torch.ones(k, k, dtype=theta.dtype, device=theta.device)
        total = trigamma(theta.sum(-1))[..., None, None]
        return torch.diag_embed(trigamma(theta)) - total * ones

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return dirichlet_kl(theta_p, theta_q)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return dirichlet_chi2(theta_p, theta_q)
