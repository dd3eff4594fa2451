"""Non-regular families: the support moves with θ, so no Fisher information exists."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Uniform

from ..constraints import real
from ..model import Param
from .base import Family, register


@register
class UniformFamily(Family):
    name = "uniform"
    torch_name = "Uniform"
    description = "Uniform(low, high) — non-regular: no Fisher information"
    typical_theta = (0.0, 1.0)
    regular = False
    why_not_regular = (
        "its support [low, high] depends on the parameters, so log p is not differentiable in θ "
        "at the support's edges and E[score] ≠ 0: the Fisher information (and the quadratic "
        "approximation of KL) does not exist; KL between two uniforms is still exact via fisherkl.kl"
    )

    def param_spec(self) -> list[Param]:
        return [Param("low", real), Param("high", real)]

    def _check_joint(self, theta: Tensor, what: str) -> None:
        ok = theta[..., 0] < theta[..., 1]
        if not bool(ok.all()):
            self._raise_at(
                theta[..., 1] - theta[..., 0],
                ok,
                "parameter 'high' must be greater than 'low' (high − low shown)",
                what,
            )

    def unconstraining_transform(self) -> Callable[[Tensor], Tensor]:
        """(u₀, u₁) ↦ (low, high) = (u₀, u₀ + exp(u₁))."""
        return lambda u: torch.stack([u[..., 0], u[..., 0] + torch.exp(u[..., 1])], -1)

    def unconstraining_inverse(self) -> Callable[[Tensor], Tensor]:
        return lambda t: torch.stack([t[..., 0], torch.log(t[..., 1] - t[..., 0])], -1)

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # q/p is a constant (or 0) on p's support
        return torch.ones(torch.broadcast_shapes(theta_p.shape, theta_q.shape)[:-1], dtype=torch.bool)

    def make(self, theta: Tensor) -> Distribution:
        return Uniform(theta[..., 0], theta[..., 1], validate_args=False)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        """Pearson χ² = ∫(q − p)²/p for p = U(a, b), q = U(c, d): (b − a)/(d − c) − 1 when
        [c, d] ⊆ [a, b], and +inf otherwise (q puts mass where p has none)."""
        a, b = theta_p[..., 0], theta_p[..., 1]
        c, d = theta_q[..., 0], theta_q[..., 1]
        inside = (c >= a) & (d <= b)
        return torch.where(inside, (b - a) / (d - c) - 1, torch.full_like(a, float("inf")))
