"""Checks for the secondary arguments of the public API (counts, seeds, tolerances, step sizes).

Each returns the value in its canonical Python type or raises :class:`~fisherkl.errors.ParameterError`
(a ValueError) naming the argument, the constraint and the value given, so that a wrong kind of
argument (a string, None, a float where an integer belongs) never surfaces as Python's own message.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from .errors import ParameterError


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(value: Any, name: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; booleans and non-integral floats are refused."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"{name} must be an integer, got {_shown(value)} ({type(value).__name__})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            kind = "a positive integer (>= 1)" if low == 1 else f"an integer >= {low}"
            raise ParameterError(f"{name} must be {kind}, got {value}")
        if low is None:
            raise ParameterError(f"{name} must be an integer <= {high}, got {value}")
        raise ParameterError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return value


def real(
    value: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
) -> float:
    """``value`` as a float (NaN refused; ±inf refused when ``finite``) within the given bounds."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ParameterError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ParameterError(f"{name} must be a number, got {_shown(value)} ({type(value).__name__})")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf if value > 0 else -math.inf
    if math.isnan(x) or (finite and math.isinf(x)):
        raise ParameterError(f"{name} must be a finite number, got {x}")
    bad_low = low is not None and (x <= low if low_open else x < low)
    bad_high = high is not None and (x >= high if high_open else x > high)
    if bad_low or bad_high:
        parts = []
        if low is not None:
            parts.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            parts.append(f"{'<' if high_open else '<='} {high:g}")
        raise ParameterError(f"{name} must be {' and '.join(parts)}, got {x:g}")
    return x


def optional_real(value: Any, name: str, **bounds: Any) -> float | None:
    """None, or :func:`real` of ``value``."""
    return None if value is None else real(value, name, **bounds)


def seed(value: Any, name: str = "seed") -> int | None:
    """None or an integer in [0, 2⁶⁴ − 1] (torch.manual_seed's range)."""
    return None if value is None else integer(value, name, 0, 2**64 - 1)


def generator(value: Any, name: str = "generator") -> torch.Generator | None:
    """None or a ``torch.Generator``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise ParameterError(f"{name} must be a torch.Generator or None, got {_shown(value)} ({type(value).__name__})")
    return value


def flag(value: Any, name: str) -> bool:
    """A bool (Python or numpy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterError(f"{name} must be True or False, got {_shown(value)} ({type(value).__name__})")
    return bool(value)


def choice(value: Any, name: str, options: tuple[str, ...]) -> str:
    """One of ``options`` (strings)."""
    if not isinstance(value, str) or value not in options:
        raise ParameterError(f"{name} must be one of {', '.join(map(repr, options))}, got {_shown(value)}")
    return value
