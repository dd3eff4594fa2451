"""Information geometry: the Fisher information as a Riemannian metric, measured and moved in.

* :func:`fisher_rao_distance`, :func:`geodesic`, :func:`log_map`, :func:`exp_map`, :func:`christoffel`
  (closed forms in :mod:`.closed`, a batched spectral boundary-value solver in :mod:`.solver`,
  unconstrained coordinates in :mod:`.chart`);
* :func:`natural_gradient`, :func:`kl_step` (:mod:`.natural`);
* :func:`jeffreys_prior` (:mod:`.priors`); :func:`cramer_rao` (:mod:`.bounds`).
"""

from __future__ import annotations

from .bounds import cramer_rao
from .closed import closed_distance_names, gamma_fixed_shape, location_scale_distance, mvn_equal_means
from .geodesic import christoffel, exp_map, fisher_rao_distance, geodesic, log_map
from .natural import kl_step, natural_gradient
from .priors import JeffreysPrior, jeffreys_prior

__all__ = [
    "JeffreysPrior",
    "christoffel",
    "closed_distance_names",
    "cramer_rao",
    "exp_map",
    "fisher_rao_distance",
    "gamma_fixed_shape",
    "geodesic",
    "jeffreys_prior",
    "kl_step",
    "location_scale_distance",
    "log_map",
    "mvn_equal_means",
    "natural_gradient",
]
