"""Families on the unit interval."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..constraints import positive, unit_interval
from ..model import Param
from ..special import lgamma, trigamma
from .base import Family, register, split, sym2
from .closed_divergences import cb_kl_delta, dirichlet_chi2, dirichlet_kl
from .distributions import (
    AccurateBeta,
    AccurateContinuousBernoulli,
    AccurateKumaraswamy,
    cb_log_partition,
    cb_log_partition_d1,
    cb_log_partition_d2,
)


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

    def from_natural(self, eta: Tensor) -> Tensor:
        return eta + 1

    def log_partition(self, eta: Tensor) -> Tensor:
        a, b = split(eta + 1)
        return lgamma(a) + lgamma(b) - lgamma(a + b)

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        return (eta > -1).all(-1)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        a, b = split(theta)
        t = trigamma(a + b)
        return sym2(trigamma(a) - t, -t, trigamma(b) - t)

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return dirichlet_kl(theta_p, theta_q)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return dirichlet_chi2(theta_p, theta_q)


@register
class KumaraswamyFamily(Family):
    """Kumaraswamy(a, b): p(x) = a b x^{a−1} (1 − x^a)^{b−1}; no closed-form Fisher (quadrature)."""

    name = "kumaraswamy"
    torch_name = "Kumaraswamy"
    description = "Kumaraswamy(concentration1 a, concentration0 b)"
    typical_theta = (2.0, 3.0)

    def param_spec(self) -> list[Param]:
        return [Param("concentration1", positive), Param("concentration0", positive)]

    def make(self, theta: Tensor) -> Distribution:
        a, b = split(theta)
        return AccurateKumaraswamy(a, b, validate_args=False)

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # p ∝ x^{a−1} near 0 and ∝ (1 − x)^{b−1} near 1: ∫ q^m p^{1−m} converges iff m·aq > (m−1)·ap
        # and m·bq > (m−1)·bp
        return (m * theta_q > (m - 1) * theta_p).all(-1)


@register
class ContinuousBernoulliFamily(Family):
    """p(x | λ) ∝ λ^x (1 − λ)^{1−x} on [0, 1]; in η = logit λ, p = exp(ηx − A(η)), A = log((e^η − 1)/η)."""

    name = "continuousbernoulli"
    torch_name = "ContinuousBernoulli"
    description = "ContinuousBernoulli(probs λ) on [0, 1]"
    typical_theta = (0.3,)

    def param_spec(self) -> list[Param]:
        return [Param("probs", unit_interval)]

    def make(self, theta: Tensor) -> Distribution:
        return AccurateContinuousBernoulli(probs=theta[..., 0], validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        lam = theta[..., 0]
        eta = torch.logit(lam)
        return (cb_log_partition_d2(eta) / (lam * (1 - lam)).square())[..., None, None]

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        eta, d = self._eta_and_difference(theta_p, theta_q)
        return cb_kl_delta(eta, d, cb_log_partition, cb_log_partition_d1, cb_log_partition_d2)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        # log(1 + χ²) = KL[q ‖ p] + KL[q ‖ r], η_r = 2η_q − η_p (always a continuous Bernoulli)
        eta_q, d = self._eta_and_difference(theta_q, theta_p)
        parts = (cb_kl_delta(eta_q, s * d, cb_log_partition, cb_log_partition_d1, cb_log_partition_d2) for s in (1, -1))
        return torch.expm1(sum(parts))

    @staticmethod
    def _eta_and_difference(theta_a: Tensor, theta_b: Tensor) -> tuple[Tensor, Tensor]:
        """η_a = logit λ_a and η_b − η_a = log(1 + Δ/λ_a) − log(1 − Δ/(1 − λ_a)), Δ = λ_b − λ_a."""
        la, lb = theta_a[..., 0], theta_b[..., 0]
        d = lb - la
        return torch.logit(la), torch.log1p(d / la) - torch.log1p(-d / (1 - la))

    def natural(self, theta: Tensor) -> Tensor:
        return torch.logit(theta)

    def from_natural(self, eta: Tensor) -> Tensor:
        return torch.sigmoid(eta)

    def log_partition(self, eta: Tensor) -> Tensor:
        return cb_log_partition(eta[..., 0])
