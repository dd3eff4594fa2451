"""Reparametrisation: the same model in new coordinates φ, with θ = transform(φ).

The Fisher information transforms as a metric (a pull-back):  I_φ(φ) = Jᵀ I_θ(θ(φ)) J with
J = ∂θ/∂φ ``[..., d_θ, d_φ]`` (by autodiff, batched), while KL between two points is unchanged:
KL_φ(φ₁, φ₂) = KL_θ(θ(φ₁), θ(φ₂)). The same pull-back gives the neural-network Fisher
(fisherkl.nn) through the network's Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, biject_to

from .constraints import Constraint, real
from .derivatives import rows_of_jacobian
from .errors import ParameterError
from .model import Model, as_parameter_tensor, require_model

Transform = Callable[[Tensor], Tensor]


def jacobian(transform: Transform, phi: Tensor) -> tuple[Tensor, Tensor]:
    """θ = transform(φ) and J = ∂θ/∂φ ``[..., d_θ, d_φ]`` for a transform acting per batch element."""
    keep = phi.requires_grad
    leaf = phi if keep else phi.detach().requires_grad_(True)
    with torch.enable_grad():
        theta = transform(leaf)
        jac = rows_of_jacobian(theta, leaf, keep)
    return (theta if keep else theta.detach()), jac


def pull_back(info: Tensor, jac: Tensor) -> Tensor:
    """Jᵀ I J: the metric ``info`` [..., d_θ, d_θ] in the coordinates of ``jac`` [..., d_θ, d_φ]."""
    return jac.transpose(-1, -2) @ info @ jac


class Reparametrized(Model):
    """``base`` seen in coordinates φ with θ = ``transform(φ)`` (see :func:`reparametrize`)."""

    def __init__(
        self,
        base: Model,
        transform: Transform,
        dim: int | None = None,
        names: Sequence[str] | None = None,
        constraints: Sequence[Constraint] | None = None,
        name: str | None = None,
    ) -> None:
        dim = base.dim if dim is None else dim
        names = [f"phi[{i}]" for i in range(dim)] if names is None else list(names)
        super().__init__(self._dist, dim, names, constraints, name=name or f"{base.name} (reparametrized)")
        self.base = base
        self.transform = transform
        self.regular = base.regular
        self.twice_differentiable = base.twice_differentiable
        why = getattr(base, "why_not_regular", None)
        if why is not None:
            self.why_not_regular = why

    def _dist(self, phi: Tensor) -> Distribution:
        return self.base.distribution(self.transform(phi))

    def _check_joint(self, phi: Tensor, what: str) -> None:
        theta = self.transform(phi.detach())
        try:
            self.base.validate(theta, f"transform({what})")
        except ParameterError as exc:
            raise ParameterError(f"{self.name}: {what} maps outside the base model: {exc}") from None

    def _check_by_torch(self, phi: Tensor, what: str) -> None:
        """The base model already checked θ = transform(φ)."""

    def closed_fisher(self, phi: Tensor) -> Tensor | None:
        theta, jac = jacobian(self.transform, phi)
        info = self.base.closed_fisher(theta)
        return None if info is None else pull_back(info, jac)

    def closed_kl(self, phi_p: Tensor, phi_q: Tensor) -> Tensor | None:
        return self.base.closed_kl(self.transform(phi_p), self.transform(phi_q))

    def has_closed_kl(self, phi: Tensor) -> bool:
        return self.base.has_closed_kl(self.transform(phi.detach()))

    def diagnose(self, phi: Tensor, info: Tensor) -> None:
        self.base.diagnose(self.transform(phi.detach()), info)

    def to_base(self, phi: Any) -> Tensor:
        """θ = transform(φ) for a valid φ."""
        return self.transform(self.validate(phi))


def reparametrize(
    model: Model,
    transform: Transform,
    names: Sequence[str] | None = None,
    *,
    dim: int | None = None,
    constraints: Sequence[Constraint] | None = None,
) -> Reparametrized:
    """``model`` in coordinates φ with θ = ``transform(φ)``; Fisher = Jᵀ I(θ) J, KL unchanged.

    ``transform`` maps ``[..., dim]`` to ``[..., model.dim]`` acting on each batch element alone
    (torch ops, differentiable). Example: Normal in (μ, log σ):

    >>> m = fisherkl.reparametrize(fisherkl.family("normal"), lambda p: torch.stack([p[..., 0], p[..., 1].exp()], -1),
    ...                            names=["loc", "log_scale"])
    """
    require_model(model, "reparametrize")
    if not callable(transform):
        raise TypeError(f"reparametrize: transform must be callable, got {type(transform).__name__}")
    return Reparametrized(model, transform, dim, names, constraints)


def unconstrained(model: Model) -> Reparametrized:
    """``model`` over ℝ^d: each coordinate mapped onto its constraint by ``torch.distributions.biject_to``.

    Families with joint constraints (probabilities summing to less than 1, ``low < high``) provide
    their own bijection through ``unconstraining_transform()``.
    """
    own = getattr(model, "unconstraining_transform", None)
    transform = own() if own is not None else None
    if transform is None:
        bijections = [biject_to(c.to_torch()) for c in model.constraints]

        def transform(u: Tensor) -> Tensor:
            return torch.stack([b(u[..., i]) for i, b in enumerate(bijections)], -1)

    names = [f"u({n})" for n in model.names]
    out = Reparametrized(model, transform, model.dim, names, [real] * model.dim, name=f"{model.name} (unconstrained)")
    out.inverse = _inverse_of(model)  # type: ignore[attr-defined]
    return out


def _inverse_of(model: Model) -> Callable[[Any], Tensor]:
    """θ ↦ u for the coordinate-wise bijection (for starting optimisers from a known θ)."""
    own = getattr(model, "unconstraining_inverse", None)
    if own is not None:
        inv = own()
        if inv is not None:
            return lambda theta: inv(model.validate(theta))  # type: ignore[no-any-return]
    bijections = [biject_to(c.to_torch()) for c in model.constraints]

    def inverse(theta: Any) -> Tensor:
        t = model.validate(as_parameter_tensor(theta))
        return torch.stack([b.inv(t[..., i]) for i, b in enumerate(bijections)], -1)

    return inverse
