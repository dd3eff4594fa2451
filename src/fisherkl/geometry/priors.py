"""The Jeffreys prior π(θ) ∝ √det I(θ): the Riemannian volume of the Fisher metric.

It is invariant under reparametrisation (√det I picks up |det J|, as a density must). Known cases:
Bernoulli → Beta(½, ½) (normalising constant π), Poisson ∝ λ^(−½), Normal(μ, σ) ∝ σ⁻² (improper).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConvergenceError, ParameterError
from ..fisher import fisher, require_regular
from ..model import Model

Bounds = Sequence[tuple[float, float]]


@dataclass
class JeffreysPrior:
    """The Jeffreys prior of ``model``: ``log_density`` (unnormalised), ``normalizing_constant`` over a
    box by scipy quadrature (d = 1: ``quad``; d = 2: ``dblquad``), and the normalised ``log_prob``."""

    model: Model

    def log_density(self, theta: Any) -> Tensor:
        """log √det I(θ) ``[...]`` (unnormalised)."""
        i = fisher(self.model, theta)
        sign, logdet = torch.linalg.slogdet(i)
        return torch.where(sign > 0, 0.5 * logdet, torch.full_like(logdet, -math.inf))

    def _density(self, *coords: float) -> float:
        theta = torch.tensor(coords, dtype=torch.float64)
        return math.exp(float(self.log_density(theta)))

    def normalizing_constant(
        self, bounds: Bounds | None = None, *, epsabs: float = 1e-11, epsrel: float = 1e-10
    ) -> float:
        """Z = ∫ √det I(θ) dθ over the box ``bounds`` = [(low, high)] per coordinate (default: the
        constraints' own bounds, which must then be finite). Raises for d > 2 or a divergent integral."""
        d = self.model.dim
        if d > 2:
            raise ParameterError(f"{self.model.name}: normalizing_constant supports d = 1 or 2, the model has d = {d}")
        if bounds is None:
            bounds = [(c.low, c.high) for c in self.model.constraints]
        bounds = [(float(lo), float(hi)) for lo, hi in bounds]
        if len(bounds) != d or any(not lo < hi for lo, hi in bounds):
            raise ParameterError(
                f"{self.model.name}: bounds must be {d} pairs (low, high) with low < high, got {bounds}"
            )
        import warnings

        from scipy import integrate  # here, not at import: scipy.integrate costs ~0.4 s of `import fisherkl`

        with warnings.catch_warnings():
            warnings.simplefilter("error", integrate.IntegrationWarning)
            try:
                if d == 1:
                    ((lo, hi),) = bounds
                    value, _ = integrate.quad(self._density, lo, hi, epsabs=epsabs, epsrel=epsrel, limit=200)
                else:
                    (lo0, hi0), (lo1, hi1) = bounds
                    # dblquad integrates func(y, x) with x the outer variable: x = θ₀, y = θ₁
                    value, _ = integrate.dblquad(
                        lambda y, x: self._density(x, y), lo0, hi0, lo1, hi1, epsabs=epsabs, epsrel=epsrel
                    )
            except integrate.IntegrationWarning as exc:
                raise ConvergenceError(
                    f"{self.model.name}: the Jeffreys prior's integral over {bounds} did not converge "
                    f"(it may be improper there): {exc}"
                ) from None
        if not np.isfinite(value) or value <= 0:
            raise ConvergenceError(
                f"{self.model.name}: the Jeffreys prior is improper over {bounds} (integral {value})"
            )
        return float(value)

    def log_prob(self, theta: Any, bounds: Bounds | None = None) -> Tensor:
        """The normalised log density on the box ``bounds``: log √det I(θ) − log Z."""
        return self.log_density(theta) - math.log(self.normalizing_constant(bounds))


def jeffreys_prior(model: Model) -> JeffreysPrior:
    """The Jeffreys prior √det I(θ) of ``model`` (see :class:`JeffreysPrior`)."""
    require_regular(model)
    return JeffreysPrior(model)
