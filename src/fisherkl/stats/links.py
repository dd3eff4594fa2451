"""Link functions of regression models, and maps from ℝ onto a parameter's constraint.

A link g maps a parameter value to the linear predictor, η = g(θ); fisherkl uses its inverse
θ = g⁻¹(η), elementwise. Names follow statsmodels: ``identity``, ``log``, ``logit``, ``probit``,
``cloglog``, ``sqrt``, ``inverse``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..constraints import Constraint
from ..errors import ParameterError

InverseLink = Callable[[Tensor], Tensor]


def _probit_inverse(eta: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-eta / math.sqrt(2.0))


INVERSE_LINKS: dict[str, InverseLink] = {
    "identity": lambda eta: eta,
    "log": torch.exp,
    "logit": torch.sigmoid,
    "probit": _probit_inverse,
    "cloglog": lambda eta: -torch.expm1(-torch.exp(eta)),
    "sqrt": lambda eta: eta * eta,
    "inverse": lambda eta: 1.0 / eta,
}


def inverse_link(link: str | InverseLink) -> tuple[str, InverseLink]:
    """(name, g⁻¹) for a link name or a callable inverse link η ↦ θ."""
    if callable(link):
        return getattr(link, "__name__", "custom"), link
    if not isinstance(link, str) or link not in INVERSE_LINKS:
        raise ParameterError(f"link must be one of {', '.join(INVERSE_LINKS)} or a callable η ↦ θ, got {link!r}")
    return link, INVERSE_LINKS[link]


def default_link(constraint: Constraint) -> str:
    """The usual link for a parameter with this constraint: identity on ℝ, log on (0, ∞), logit on (0, 1)."""
    if math.isinf(constraint.low) and math.isinf(constraint.high):
        return "identity"
    if constraint.low == 0 and math.isinf(constraint.high):
        return "log"
    if constraint.low == 0 and constraint.high == 1:
        return "logit"
    raise ParameterError(f"no default link for a parameter that must be {constraint}; pass link=")


def onto(constraint: Constraint) -> tuple[str, InverseLink, Callable[[Tensor], Tensor]]:
    """(prefix for the name, u ↦ θ from ℝ onto the constraint's interval, θ ↦ u)."""
    lo, hi = constraint.low, constraint.high
    if constraint.integer:
        raise ParameterError(f"an integer parameter ({constraint}) cannot be estimated; fix it (fixed=...)")
    if math.isinf(lo) and math.isinf(hi):
        return "", (lambda u: u), (lambda t: t)
    if math.isinf(hi):
        return "log_", (lambda u: lo + torch.exp(u)), (lambda t: torch.log(t - lo))
    if math.isinf(lo):
        return "log_neg_", (lambda u: hi - torch.exp(u)), (lambda t: torch.log(hi - t))
    width = hi - lo
    return (
        "logit_",
        (lambda u: lo + width * torch.sigmoid(u)),
        (lambda t: torch.logit((t - lo) / width)),
    )
