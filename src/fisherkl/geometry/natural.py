"""Natural-gradient steps and KL trust-region steps.

For a loss with gradient g at θ and Fisher F, the natural gradient is F⁻¹g (the steepest-descent
direction when distance is measured by KL ≈ ½δᵀFδ), and the step

    δ = −√(2ε / gᵀF⁻¹g) · F⁻¹g

is the steepest descent under the constraint ½δᵀFδ = ε (predicted KL exactly ε).

``fisher`` is either a dense tensor ``[..., d, d]`` (with ``grad`` ``[..., d]``) or any object with
``solve(b, damping)`` → (F + damping·I)⁻¹b and ``quad(v)`` → vᵀFv (fisherkl's matrix representations:
dense, diagonal, block-diagonal, K-FAC, low-rank, implicit). With damping λ > 0 the direction is
(F + λI)⁻¹g and the length is still set so that ½δᵀFδ = ε under the undamped F.

Given the model and θ instead of a matrix, ``kl_step(model, θ, g, ε)`` sets the length by the exact
KL (a root find along the same direction, :mod:`.exact_step`): the quadratic form is only the first guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import torch
from torch import Tensor

from .. import arguments
from ..errors import FisherKLError, ParameterError
from ..model import Model

Vector = Tensor | Sequence[Tensor]


def _is_dense(fisher: Any) -> bool:
    return isinstance(fisher, Tensor)


def _check_damping(damping: float) -> float:
    return arguments.real(damping, "damping", low=0.0)


def _dense_solve(fisher: Tensor, grad: Tensor, damping: float) -> Tensor:
    if fisher.dtype not in (torch.float32, torch.float64):
        raise ParameterError(
            f"fisher must be a float32 or float64 matrix, got {fisher.dtype} (convert it, e.g. fisher.double())"
        )
    if fisher.ndim < 2 or fisher.shape[-1] != fisher.shape[-2]:
        raise ParameterError(f"fisher must be a square matrix [..., d, d], got shape {tuple(fisher.shape)}")
    d = fisher.shape[-1]
    if grad.shape[-1:] != (d,):
        raise ParameterError(
            f"grad must have last dimension {d} to match fisher [..., {d}, {d}], got {tuple(grad.shape)}"
        )
    if not bool(torch.isfinite(fisher).all()) or not bool(torch.isfinite(grad).all()):
        raise ParameterError("fisher and grad must be finite (found NaN or inf)")
    mat = fisher
    if damping > 0:
        mat = fisher + damping * torch.eye(d, dtype=fisher.dtype, device=fisher.device)
    # refuse numerically singular matrices (a solve would return huge, meaningless numbers)
    eig = torch.linalg.eigvalsh(0.5 * (mat + mat.transpose(-1, -2)))
    top = eig[..., -1:].abs().clamp(min=torch.finfo(mat.dtype).tiny)
    if bool((eig[..., :1] <= d * torch.finfo(mat.dtype).eps * top).any()):
        smallest = float(eig[..., 0].min())
        raise FisherKLError(
            f"the Fisher matrix is singular or not positive definite (smallest eigenvalue {smallest:.3g}, "
            f"largest {float(top.max()):.3g}); pass damping > 0 to solve (F + damping·I) instead"
        )
    return torch.linalg.solve(mat, grad.unsqueeze(-1)).squeeze(-1)


def _dot(a: Vector, b: Vector) -> Tensor:
    if isinstance(a, Tensor):
        return (a * b).sum(-1) if a.ndim else a * b  # type: ignore[operator]
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]


def _scale(v: Vector, s: Tensor) -> Vector:
    if isinstance(v, Tensor):
        return v * s.unsqueeze(-1) if s.ndim else v * s
    return [x * s for x in v]


def natural_gradient(fisher: Any, grad: Vector, damping: float = 0.0) -> Vector:
    """(F + damping·I)⁻¹ g: ``[..., d]`` for a dense F ``[..., d, d]``, else ``fisher.solve(grad, damping)``.

    Raises :class:`FisherKLError` for a singular (or indefinite) dense F without damping.
    """
    damping = _check_damping(damping)
    if _is_dense(fisher):
        try:
            g = torch.as_tensor(grad, dtype=fisher.dtype, device=fisher.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ParameterError(f"grad must be a numeric tensor [..., d], got {type(grad).__name__}: {exc}") from None
        return _dense_solve(fisher, g, damping)
    if not (hasattr(fisher, "solve") and hasattr(fisher, "quad")):
        raise ParameterError(
            f"fisher must be a tensor [..., d, d] or have solve(b, damping) and quad(v) methods, "
            f"got {type(fisher).__name__}"
        )
    return fisher.solve(grad, damping)  # type: ignore[no-any-return]


def _quad(fisher: Any, v: Vector) -> Tensor:
    if _is_dense(fisher):
        return torch.einsum("...i,...ij,...j->...", v, fisher, v)
    return torch.as_tensor(fisher.quad(v))


@overload
def kl_step(fisher: Any, grad: Vector, max_kl: float, damping: float = 0.0) -> Vector: ...


@overload
def kl_step(
    fisher: Model, theta: Any, grad: Any, max_kl: float, damping: float = 0.0, *, rtol: float = ..., max_iter: int = ...
) -> Tensor: ...


def kl_step(fisher: Any, *args: Any, **kwargs: Any) -> Any:
    """A KL trust-region step along the natural gradient, in one of two forms.

    * ``kl_step(fisher, grad, max_kl, damping=0)`` — from a Fisher matrix alone: the step
      δ = −√(2ε / xᵀFx)·x, x = (F + damping·I)⁻¹g, whose **predicted** KL ½δᵀFδ is exactly ε = ``max_kl``
      (without damping δ = −√(2ε / gᵀF⁻¹g)·F⁻¹g). A zero gradient gives a zero step. Batched over
      leading dims for a dense F.
    * ``kl_step(model, theta, grad, max_kl, damping=0, *, rtol=1e-10, max_iter=60)`` — from the model:
      the step along the same direction whose **exact** KL[p_θ ‖ p_{θ+δ}] equals ε to relative ``rtol``
      (a 1-D root find, :func:`fisherkl.geometry.exact_step.exact_kl_step`). The quadratic form can be
      far off at large ε; this one is not.
    """
    if isinstance(fisher, Model):
        from .exact_step import exact_kl_step

        return exact_kl_step(fisher, *args, **kwargs)
    return _quadratic_kl_step(fisher, *args, **kwargs)


def _quadratic_kl_step(fisher: Any, grad: Vector, max_kl: float, damping: float = 0.0) -> Vector:
    """δ = −√(2ε / xᵀFx)·x, x = (F + damping·I)⁻¹g: predicted KL ½δᵀFδ exactly ε = ``max_kl``."""
    eps = arguments.real(max_kl, "max_kl", low=0.0)
    x = natural_gradient(fisher, grad, damping)
    curvature = _quad(fisher, x)
    if bool((curvature < 0).any()):
        raise FisherKLError(
            f"xᵀFx = {float(curvature.min()):.3g} < 0 for x = (F + damping·I)⁻¹g: the Fisher matrix is not positive "
            "semi-definite, or too ill-conditioned for this solve; pass damping > 0"
        )
    safe = torch.where(curvature > 0, curvature, torch.ones_like(curvature))
    coeff = torch.where(curvature > 0, -torch.sqrt(2 * eps / safe), torch.zeros_like(curvature))
    return _scale(x, coeff)


__all__ = ["kl_step", "natural_gradient"]
