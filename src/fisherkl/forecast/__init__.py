"""Fisher forecasts: Gaussian data models, and what a Fisher matrix says an experiment can measure.

* :func:`gaussian_model` — d ~ N(μ(θ), C(θ)) with the closed-form Fisher ∂μᵀC⁻¹∂μ + ½tr(C⁻¹∂C C⁻¹∂C);
* :class:`Forecast` — marginalised / conditional errors, fixing and marginalising parameters,
  Gaussian priors, combining experiments, confidence ellipses;
* :func:`triangle` — a triangle plot in the parameters' own units (matplotlib).
"""

from __future__ import annotations

from .forecast import LEVELS_2D, Forecast, delta_chi2
from .gaussian import GaussianModel, gaussian_model
from .plot import triangle

__all__ = ["LEVELS_2D", "Forecast", "GaussianModel", "delta_chi2", "gaussian_model", "triangle"]
