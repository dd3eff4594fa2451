"""Parameter constraints: readable, checkable, and mapped to torch's constraint registry.

Each constraint checks a tensor elementwise, describes itself in words for error messages, and
names the matching ``torch.distributions.constraints`` object (used by ``biject_to``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import constraints as tc


@dataclass(frozen=True)
class Constraint:
    """An interval ``(low, high)`` with open or closed ends; ``integer`` restricts to integers."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True
    integer: bool = False

    def check(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean tensor: which entries of ``x`` satisfy it (NaN and ±inf never do).

        Two comparisons suffice: NaN fails every comparison, and ±inf fails the finite-side one
        (an infinite bound is compared strictly).
        """
        ok = (x > self.low) if (self.low_open or math.isinf(self.low)) else (x >= self.low)
        ok &= (x < self.high) if (self.high_open or math.isinf(self.high)) else (x <= self.high)
        if self.integer:
            ok = ok & (x == torch.round(x))
        return ok

    def __str__(self) -> str:
        prefix = "an integer " if self.integer else ""
        if math.isinf(self.low) and math.isinf(self.high):
            return "an integer" if self.integer else "real (finite)"
        if math.isinf(self.high):
            return f"{prefix}{'>' if self.low_open else '>='} {_fmt(self.low)}"
        if math.isinf(self.low):
            return f"{prefix}{'<' if self.high_open else '<='} {_fmt(self.high)}"
        lo = "(" if self.low_open else "["
        hi = ")" if self.high_open else "]"
        return f"{prefix}in {lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"

    def to_torch(self) -> tc.Constraint:
        """The torch constraint with the same set (for ``torch.distributions.biject_to``)."""
        if math.isinf(self.low) and math.isinf(self.high):
            return tc.real
        if math.isinf(self.high):
            return tc.greater_than(self.low)
        if math.isinf(self.low):
            return tc.less_than(self.high)
        return tc.interval(self.low, self.high)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


real = Constraint()
positive = Constraint(low=0.0)
unit_interval = Constraint(low=0.0, high=1.0)
positive_integer = Constraint(low=1.0, low_open=False, integer=True)
#: a count that float64 holds exactly (n ≤ 2^53): larger ones cannot enter a log-density without rounding
count = Constraint(low=1.0, high=2.0**53, low_open=False, high_open=False, integer=True)


def integer_in(low: int, high: int) -> Constraint:
    """An integer in [low, high] (sizes: numbers of categories, dimensions, components)."""
    return Constraint(low=float(low), high=float(high), low_open=False, high_open=False, integer=True)


def greater_than(low: float) -> Constraint:
    return Constraint(low=low)


def interval(low: float, high: float) -> Constraint:
    return Constraint(low=low, high=high)
