"""fisherkl: the Fisher information of any model, and the KL divergences it predicts.

For a parametric model p(x|θ), KL[p_θ ‖ p_θ+δ] ≈ ½ δᵀ I(θ) δ, with I(θ) = E[∇log p ∇log pᵀ].
"""

from __future__ import annotations

from . import families, forecast, geometry, matrix, nn, stats
from ._version import __version__
from .constraints import Constraint
from .convergence import check
from .divergence import chi2, jeffreys, jeffreys_quadratic, kl, kl_quadratic
from .errors import (
    ConvergenceError,
    FisherKLError,
    NonRegularModelError,
    NumericalError,
    ParameterError,
    RouteError,
    SingularFisherWarning,
    UnreliableEstimateWarning,
)
from .estimate import Estimate
from .expfamily import ExponentialFamily
from .families import Family, family
from .fisher import METHODS, available_routes, fisher
from .forecast import Forecast, gaussian_model
from .geometry import (
    christoffel,
    cramer_rao,
    exp_map,
    fisher_rao_distance,
    geodesic,
    jeffreys_prior,
    kl_step,
    log_map,
    natural_gradient,
)
from .io import FileFormatError, load, save
from .model import Model, Param
from .reparam import Reparametrized, reparametrize
from .stats import fit, observed_information, regression, sandwich_covariance
from .taylor import kl_taylor, kl_taylor_terms
from .validity import ValidityRadius, validity_radius

__all__ = [
    "METHODS",
    "Constraint",
    "ConvergenceError",
    "Estimate",
    "ExponentialFamily",
    "Family",
    "FileFormatError",
    "FisherKLError",
    "Forecast",
    "Model",
    "NonRegularModelError",
    "NumericalError",
    "Param",
    "ParameterError",
    "Reparametrized",
    "RouteError",
    "SingularFisherWarning",
    "UnreliableEstimateWarning",
    "ValidityRadius",
    "__version__",
    "available_routes",
    "check",
    "chi2",
    "christoffel",
    "cramer_rao",
    "exp_map",
    "families",
    "family",
    "fisher",
    "fisher_rao_distance",
    "fit",
    "forecast",
    "gaussian_model",
    "geodesic",
    "geometry",
    "jeffreys",
    "jeffreys_prior",
    "jeffreys_quadratic",
    "kl",
    "kl_quadratic",
    "kl_step",
    "kl_taylor",
    "kl_taylor_terms",
    "load",
    "log_map",
    "matrix",
    "natural_gradient",
    "nn",
    "observed_information",
    "regression",
    "reparametrize",
    "sandwich_covariance",
    "save",
    "stats",
    "validity_radius",
]
