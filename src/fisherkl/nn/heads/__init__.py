"""Heads: the distribution p(y | outputs) a network's outputs parametrise, one file per head.

See :mod:`fisherkl.nn.heads.base` for the protocol (outputs ``[n, *P, C]``, the head applied per
position). Built-in heads have closed forms; :class:`CallableHead` wraps any ``outputs ↦ Distribution``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.distributions import Distribution

from ...errors import ParameterError
from .base import Head
from .bernoulli import Bernoulli
from .callable import CallableHead
from .categorical import Categorical
from .gaussian import Gaussian, GaussianVar
from .poisson import Poisson

HEADS: dict[str, type[Head]] = {
    "categorical": Categorical,
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian_var": GaussianVar,
    "poisson": Poisson,
}


def get_head(head: str | Head | Callable[[Tensor], Distribution], **kwargs: Any) -> Head:
    """A :class:`Head` from a name (``"categorical"``, ``"bernoulli"``, ``"gaussian"`` (``sigma=``),
    ``"gaussian_var"``, ``"poisson"``), a Head, or a callable outputs ↦ Distribution."""
    if isinstance(head, Head):
        return head
    if isinstance(head, str):
        if head not in HEADS:
            raise ParameterError(f"unknown head {head!r}; choose one of {', '.join(HEADS)} or pass a callable")
        return HEADS[head](**kwargs)
    return CallableHead(head, **kwargs)


__all__ = [
    "HEADS",
    "Bernoulli",
    "CallableHead",
    "Categorical",
    "Gaussian",
    "GaussianVar",
    "Head",
    "Poisson",
    "get_head",
]
