"""Exponential families in natural coordinates η: p(x | η) = h(x)·exp(⟨η, T(x)⟩ − A(η)).

There the geometry is that of the log-partition A (a convex function):

    I(η) = ∇²A(η),     KL[p_η₁ ‖ p_η₂] = A(η₂) − A(η₁) − ⟨η₂ − η₁, ∇A(η₁)⟩  (Bregman divergence of A),
    E[T(x)] = ∇A(η),   Jeffreys = ⟨η₁ − η₂, ∇A(η₁) − ∇A(η₂)⟩,   χ² + 1 = exp(A(2η₂ − η₁) − 2A(η₂) + A(η₁)).

:class:`ExponentialFamily` builds such a model from A (and T, h for the density), and
``family.exponential_family()`` gives the natural-coordinate view of a catalogue family, whose
Fisher pulled back through η(θ) is the family's closed form in its usual coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions import constraints as tc

from .derivatives import hessian_at_zero
from .model import Model

LogPartition = Callable[[Tensor], Tensor]


class NaturalDistribution(Distribution):
    """p(x | η) = exp(⟨η, T(x)⟩ + log h(x) − A(η)) on ``support`` (log-density only; no sampler)."""

    arg_constraints: dict[str, tc.Constraint] = {}

    def __init__(
        self,
        eta: Tensor,
        log_partition: LogPartition,
        sufficient_statistic: Callable[[Tensor], Tensor],
        log_base_measure: Callable[[Tensor], Tensor],
        support: tc.Constraint,
        event_shape: tuple[int, ...] = (),
        center: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    ) -> None:
        self.eta = eta
        self._a, self._t, self._h, self._support = log_partition, sufficient_statistic, log_base_measure, support
        self._center = center
        super().__init__(eta.shape[:-1], torch.Size(event_shape), validate_args=False)

    @property
    def support(self) -> tc.Constraint:  # type: ignore[override]
        return self._support

    @property
    def mean(self) -> Tensor:
        if self._center is None:
            raise NotImplementedError("give ExponentialFamily(center=...) for the mean of x")
        return self._center(self.eta)[0]

    @property
    def stddev(self) -> Tensor:
        if self._center is None:
            raise NotImplementedError("give ExponentialFamily(center=...) for the spread of x")
        return self._center(self.eta)[1]

    def log_prob(self, value: Tensor) -> Tensor:
        t = self._t(value)
        return (self.eta * t).sum(-1) + self._h(value) - self._a(self.eta)


class ExponentialFamily(Model):
    """A model in natural coordinates η ∈ ℝ^dim with log-partition A.

    Parameters
    ----------
    log_partition: A(η) ``[..., dim] → [...]`` (torch ops; convex; differentiable).
    dim: the number of natural parameters.
    sufficient_statistic, log_base_measure, support: T(x) ``[..., dim]``, log h(x) and the support
        constraint, for the density (score/quadrature routes). Optional when ``base`` is given.
    base: optional η ↦ Distribution (e.g. the family's own torch distribution), used instead.
    domain: optional η ↦ bool ``[...]``: where A(η) < ∞ (validated).
    center: optional η ↦ (mean, std) of x, for quadrature.
    """

    def __init__(
        self,
        log_partition: LogPartition,
        dim: int,
        *,
        sufficient_statistic: Callable[[Tensor], Tensor] | None = None,
        log_base_measure: Callable[[Tensor], Tensor] | None = None,
        support: tc.Constraint | None = None,
        base: Callable[[Tensor], Distribution] | None = None,
        domain: Callable[[Tensor], Tensor] | None = None,
        center: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
        names: Sequence[str] | None = None,
        name: str = "exponential family",
    ) -> None:
        if base is None and (sufficient_statistic is None or support is None):
            raise TypeError("ExponentialFamily needs either base=η ↦ Distribution or sufficient_statistic and support")
        self.log_partition = log_partition
        self._domain = domain
        if base is None:
            t, s = sufficient_statistic, support
            h = log_base_measure if log_base_measure is not None else (lambda x: torch.zeros_like(x))

            def base(eta: Tensor) -> Distribution:
                return NaturalDistribution(eta, log_partition, t, h, s, center=center)  # type: ignore[arg-type]

        names = [f"eta[{i}]" for i in range(dim)] if names is None else names
        super().__init__(base, dim, names, name=name)

    def _check_joint(self, eta: Tensor, what: str) -> None:
        if self._domain is not None:
            ok = self._domain(eta)
            if not bool(ok.all()):
                self._raise_at(eta[..., 0], ok, "η must lie in the natural parameter space (A(η) < ∞) (η₀ shown)", what)

    def _check_by_torch(self, theta: Tensor, what: str) -> None:
        """The domain check above is the constraint."""

    def mean_parameters(self, eta: Any) -> Tensor:
        """μ(η) = ∇A(η) = E[T(x)]."""
        e = self.validate(eta)
        keep = e.requires_grad
        leaf = e if keep else e.detach().requires_grad_(True)
        with torch.enable_grad():
            (mu,) = torch.autograd.grad(self.log_partition(leaf).sum(), leaf, create_graph=keep)
        return mu

    def closed_fisher(self, eta: Tensor) -> Tensor:
        """∇²A(η), by autodiff."""
        return hessian_at_zero(lambda d: self.log_partition(eta + d), eta)

    def closed_kl(self, eta_p: Tensor, eta_q: Tensor) -> Tensor:
        """The Bregman divergence of A: A(η_q) − A(η_p) − ⟨η_q − η_p, ∇A(η_p)⟩."""
        keep = eta_p.requires_grad or eta_q.requires_grad
        with torch.enable_grad():
            leaf = eta_p if eta_p.requires_grad else eta_p.detach().requires_grad_(True)
            a_p = self.log_partition(leaf)
            (mu_p,) = torch.autograd.grad(a_p.sum(), leaf, create_graph=True)
        kl = self.log_partition(eta_q) - a_p - ((eta_q - leaf) * mu_p).sum(-1)
        return kl if keep else kl.detach()

    def has_closed_kl(self, eta: Tensor) -> bool:
        return True

    def ratio_moment_finite(self, eta_p: Tensor, eta_q: Tensor, m: int) -> Tensor | None:
        """Whether E_p[(q/p)^m] < ∞: m·η_q − (m − 1)·η_p in the natural domain (None without ``domain``)."""
        return None if self._domain is None else self._domain(m * eta_q - (m - 1) * eta_p)

    def chi2_formula(self, eta_p: Tensor, eta_q: Tensor) -> Tensor:
        """χ² = exp(A(2η_q − η_p) − 2A(η_q) + A(η_p)) − 1, +inf outside the natural domain."""
        star = 2 * eta_q - eta_p
        ok = self._domain(star) if self._domain is not None else torch.ones(star.shape[:-1], dtype=torch.bool)
        safe = torch.where(ok.unsqueeze(-1), star, eta_q)
        log_ratio = self.log_partition(safe) - 2 * self.log_partition(eta_q) + self.log_partition(eta_p)
        return torch.where(ok, torch.expm1(log_ratio), torch.full_like(log_ratio, float("inf")))
