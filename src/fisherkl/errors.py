"""Exceptions raised by fisherkl.

Every error a user can cause is one of these, with a message that names the parameter, the
constraint and the value that broke it.
"""

from __future__ import annotations


class FisherKLError(Exception):
    """Base class of fisherkl's own exceptions."""


class ParameterError(FisherKLError, ValueError):
    """A parameter value (θ, δ, a fixed argument) violates its constraint or has the wrong shape."""


class NonRegularModelError(FisherKLError, ValueError):
    """The Fisher information does not exist: the model's support depends on its parameters."""


class RouteError(FisherKLError, ValueError):
    """A requested route (method) is not available for this model, with the reason."""


class ConvergenceError(FisherKLError, RuntimeError):
    """A numerical expectation (series or quadrature) did not reach its tolerance."""


class NumericalError(FisherKLError, ArithmeticError):
    """A result that mathematics fixes (finite, a Fisher diagonal ≥ 0, a symmetric positive
    semi-definite matrix, a KL ≥ 0) came out violating it, or a numerical scheme cannot resolve the
    distribution at these parameters. The message names the quantity, θ and what to do instead."""


class SingularFisherWarning(UserWarning):
    """The Fisher information is singular at θ (a direction of θ is not identifiable there)."""


class UnreliableEstimateWarning(UserWarning):
    """A stated error does not mean what it says (e.g. a Monte Carlo standard error whose variance is
    infinite); the warning names the quantity and what to do instead."""
