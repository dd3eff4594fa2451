"""Statistics with the Fisher information: regressions, information at data, fits and summaries.

* :func:`regression` — a family regressed on a design matrix, with per-row closed-form Fisher;
* :func:`observed_information`, :func:`expected_information`, :func:`scores`,
  :func:`sandwich_covariance`, :func:`log_likelihood` — at data;
* :func:`fit` — maximum likelihood by Fisher scoring, :class:`Fit` with three covariances and a
  statsmodels-like :meth:`Fit.summary`.
"""

from __future__ import annotations

from .fit import Fit, Summary, fit
from .information import (
    expected_information,
    log_likelihood,
    observed_information,
    sandwich_covariance,
    scores,
)
from .links import INVERSE_LINKS
from .regression import Regression, regression

__all__ = [
    "INVERSE_LINKS",
    "Fit",
    "Regression",
    "Summary",
    "expected_information",
    "fit",
    "log_likelihood",
    "observed_information",
    "regression",
    "sandwich_covariance",
    "scores",
]
