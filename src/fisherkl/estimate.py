"""A numerical result with a stated error."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class Estimate:
    """``value`` with an absolute ``error`` (same shape) and how it was obtained.

    ``error`` is a standard error for Monte Carlo (``method`` ends in ``/mc``), an estimated bound
    for quadrature (difference of successive tanh-sinh levels plus lost mass) and for truncated
    series (tail mass times the integrand's size), and zero for closed forms and finite sums.
    """

    value: Tensor
    error: Tensor
    method: str
    n_samples: int | None = None

    @property
    def exact(self) -> bool:
        """True unless the value is a Monte Carlo estimate."""
        return self.method.split("/")[-1] != "mc"
