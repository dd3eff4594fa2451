"""The catalogue of ready-made families: ``fisherkl.family(name, **fixed)``."""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError

# isort: off
# imported for their registrations, in the order `names()` lists them
from . import location_scale, positive, unit_interval, circular  # noqa: F401
from . import discrete, multivariate, gaussian, mixture, nonregular  # noqa: F401

# isort: on
from .base import _REGISTRY, Family, Fixed, register


def names() -> list[str]:
    """Names of every family in the catalogue, in registration order."""
    return list(_REGISTRY)


def family(name: str, **fixed: Any) -> Family:
    """The family called ``name``, with fixed arguments (e.g. ``total_count=20``, ``k=4``)."""
    if not isinstance(name, str):
        raise ParameterError(f"family name must be a string, got {name!r}; known families: {', '.join(names())}")
    try:
        cls = _REGISTRY[name.lower()]
    except KeyError:
        raise ParameterError(f"unknown family {name!r}; known families: {', '.join(names())}") from None
    return cls(**fixed)


__all__ = ["Family", "Fixed", "family", "names", "register"]
