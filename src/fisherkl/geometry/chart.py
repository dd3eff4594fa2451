"""Unconstrained coordinates φ for a model's parameters θ, and the Fisher metric pulled back to them.

The geodesic solver and the exponential map work in φ ∈ ℝ^d, where every point is a valid
parameter, so no iterate can leave the model's domain. The Fisher–Rao distance does not depend on
the coordinates: with θ = T(φ) and J = ∂θ/∂φ the metric becomes g_φ = Jᵀ g_θ J (the pull-back).

* :class:`ElementwiseChart`: each coordinate mapped by ``torch.distributions.biject_to`` of its
  constraint (exp for σ > 0, a sigmoid for p ∈ (0, 1), …); J is diagonal.
* :class:`SimplexChart`: categorical/multinomial θ = (p₁..p_{k−1}) with p_k = 1 − Σθ > 0, by
  torch's stick-breaking transform ℝ^{k−1} → simplex; J is full and taken by autodiff.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import biject_to
from torch.distributions.transforms import StickBreakingTransform

from ..families import Family
from ..families.base import one_minus_sum
from ..fisher import fisher
from ..model import Model, no_argument_validation

MetricFn = Callable[[Tensor], Tensor]


def fisher_metric(model: Model) -> MetricFn:
    """θ ``[..., d]`` ↦ I(θ) ``[..., d, d]``, differentiable in θ, without re-validating θ.

    Uses the family's closed form where it has one, else ``fisher(model, θ)`` (its exact routes keep
    the graph when θ requires grad).
    """

    def metric(theta: Tensor) -> Tensor:
        with no_argument_validation():
            closed = model.closed_fisher(theta)
        return closed if closed is not None else fisher(model, theta)  # type: ignore[return-value]

    return metric


class Chart:
    """θ = T(φ) with φ unconstrained; subclasses provide ``forward``, ``inverse`` and ``jacobian``."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.theta_metric = fisher_metric(model)

    def forward(self, phi: Tensor) -> Tensor:
        raise NotImplementedError

    def inverse(self, theta: Tensor) -> Tensor:
        raise NotImplementedError

    def jacobian(self, phi: Tensor) -> Tensor:
        """J = ∂θ/∂φ, ``[..., d, d]``, differentiable in φ."""
        raise NotImplementedError

    def metric(self, phi: Tensor) -> Tensor:
        """g_φ = Jᵀ I(T(φ)) J, ``[..., d, d]``."""
        jac = self.jacobian(phi)
        return jac.transpose(-1, -2) @ self.theta_metric(self.forward(phi)) @ jac

    def to_theta_velocity(self, phi: Tensor, v_phi: Tensor) -> Tensor:
        return (self.jacobian(phi) @ v_phi.unsqueeze(-1)).squeeze(-1)

    def to_phi_velocity(self, phi: Tensor, v_theta: Tensor) -> Tensor:
        return torch.linalg.solve(self.jacobian(phi), v_theta.unsqueeze(-1)).squeeze(-1)


class ElementwiseChart(Chart):
    """Coordinate i mapped by ``biject_to(model.constraints[i].to_torch())``."""

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self.transforms = [biject_to(c.to_torch()) for c in model.constraints]

    def forward(self, phi: Tensor) -> Tensor:
        return torch.stack([t(phi[..., i]) for i, t in enumerate(self.transforms)], -1)

    def inverse(self, theta: Tensor) -> Tensor:
        return torch.stack([t.inv(theta[..., i]) for i, t in enumerate(self.transforms)], -1)

    def diag_jacobian(self, phi: Tensor) -> Tensor:
        cols = []
        for i, t in enumerate(self.transforms):
            x = phi[..., i]
            cols.append(torch.exp(t.log_abs_det_jacobian(x, t(x))).expand_as(x))
        return torch.stack(cols, -1)

    def jacobian(self, phi: Tensor) -> Tensor:
        return torch.diag_embed(self.diag_jacobian(phi))

    def metric(self, phi: Tensor) -> Tensor:
        j = self.diag_jacobian(phi)
        return self.theta_metric(self.forward(phi)) * j.unsqueeze(-1) * j.unsqueeze(-2)

    def to_theta_velocity(self, phi: Tensor, v_phi: Tensor) -> Tensor:
        return self.diag_jacobian(phi) * v_phi

    def to_phi_velocity(self, phi: Tensor, v_theta: Tensor) -> Tensor:
        return v_theta / self.diag_jacobian(phi)


class SimplexChart(Chart):
    """θ = first k−1 coordinates of stick-breaking(φ), φ ∈ ℝ^{k−1}: every φ gives Σθ < 1."""

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self.transform = StickBreakingTransform()

    def forward(self, phi: Tensor) -> Tensor:
        return self.transform(phi)[..., :-1]

    def inverse(self, theta: Tensor) -> Tensor:
        full = torch.cat([theta, one_minus_sum(theta).unsqueeze(-1)], -1)
        return self.transform.inv(full)

    def jacobian(self, phi: Tensor) -> Tensor:
        keep = phi.requires_grad
        with torch.enable_grad():
            x = phi if keep else phi.detach().requires_grad_(True)
            theta = self.forward(x)
            rows = [
                torch.autograd.grad(theta[..., i].sum(), x, retain_graph=True, create_graph=keep)[0]
                for i in range(theta.shape[-1])
            ]
        return torch.stack(rows, -2)


_SIMPLEX_FAMILIES = ("categorical", "multinomial")


def chart_for(model: Model) -> Chart:
    """The unconstrained chart for ``model``: stick-breaking for categorical/multinomial families,
    else one ``biject_to`` per coordinate constraint."""
    if isinstance(model, Family) and model.name in _SIMPLEX_FAMILIES:
        return SimplexChart(model)
    return ElementwiseChart(model)
