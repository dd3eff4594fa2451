"""Information at data: observed information, per-observation scores, and the sandwich covariance.

For a model p(x | θ) and data x₁ … x_n (independent draws, ``data`` ``[n, *event]``; a
:class:`~fisherkl.stats.regression.Regression` takes its response ``[n]``, one value per row):

* expected information  n·I(θ)  (a regression's Fisher is already over its rows);
* observed information  J(θ) = −∇²_θ Σᵢ log p(xᵢ | θ)  ``[d, d]``;
* scores  sᵢ = ∇_θ log p(xᵢ | θ)  ``[n, d]`` (Σᵢ sᵢ = 0 at the maximum-likelihood estimate);
* sandwich covariance  A⁻¹ (Σᵢ sᵢsᵢᵀ) A⁻¹  with bread A the observed (default) or expected
  information: the covariance of the estimate that stays valid when the model is misspecified
  (Huber 1967, White 1982; statsmodels' ``cov_type="HC0"``).

θ is one parameter vector ``[d]`` here (no batch).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..derivatives import rows_of_jacobian
from ..errors import FisherKLError, ParameterError
from ..fisher import fisher
from ..model import Model, require_model
from .regression import Regression


def _theta(model: Any, theta: Any, where: str) -> Tensor:
    t = require_model(model, where).validate(theta)
    if t.ndim != 1:
        raise ParameterError(f"{where}: theta must be one parameter vector [{model.dim}], got shape {tuple(t.shape)}")
    return t.detach()


def observations(model: Model, theta: Tensor, data: Any) -> Tensor:
    """``data`` as a tensor of observations ``[n, *event]`` (a regression's response ``[n]``)."""
    if isinstance(model, Regression):
        return model.check_response(theta, data)
    t = torch.as_tensor(np.array(data.to_numpy()) if hasattr(data, "to_numpy") else data)
    if not t.is_floating_point():
        t = t.to(theta.dtype)
    dist = model.distribution(theta)
    event = tuple(dist.event_shape)
    if t.ndim == len(event):
        t = t.unsqueeze(0)
    if tuple(t.shape[1:]) != event or t.shape[0] == 0:
        raise ParameterError(
            f"{model.name}: data must be observations [n, {', '.join(map(str, event))}]"
            f" (event shape {event}), got shape {tuple(t.shape)}"
        )
    ok = dist.support.check(t)
    if not bool(ok.all()):
        i = int((~ok).reshape(t.shape[0], -1).any(-1).nonzero()[0])
        raise ParameterError(f"{model.name}: data[{i}] = {t[i].tolist()} is outside the support")
    return t


def n_observations(model: Model, data: Tensor) -> int:
    """How many times the model's Fisher counts: n for independent draws, 1 for a regression."""
    return 1 if isinstance(model, Regression) else int(data.shape[0])


def log_likelihood_terms(model: Model, theta: Tensor, data: Tensor) -> Tensor:
    """log p(xᵢ | θ) ``[n]``, differentiable in θ."""
    if isinstance(model, Regression):
        return model.row_log_prob(theta, data)
    return model.distribution(theta).log_prob(data)


def log_likelihood(model: Model, theta: Any, data: Any) -> Tensor:
    """Σᵢ log p(xᵢ | θ) (a scalar)."""
    t = _theta(model, theta, "log_likelihood")
    return log_likelihood_terms(model, t, observations(model, t, data)).sum()


def expected_information(model: Model, theta: Any, data: Any) -> Tensor:
    """n·I(θ) ``[d, d]``: the Fisher information of the whole data set."""
    t = _theta(model, theta, "expected_information")
    x = observations(model, t, data)
    info = fisher(model, t)
    assert isinstance(info, Tensor)
    return n_observations(model, x) * info


def observed_information(model: Model, theta: Any, data: Any) -> Tensor:
    """J(θ) = −∇²_θ Σᵢ log p(xᵢ | θ) ``[d, d]`` at the data (symmetrised)."""
    t = _theta(model, theta, "observed_information")
    x = observations(model, t, data)
    with torch.enable_grad():
        leaf = t.clone().requires_grad_(True)
        total = log_likelihood_terms(model, leaf, x).sum()
        (g,) = torch.autograd.grad(total, leaf, create_graph=True)
        h = rows_of_jacobian(g, leaf, False)
    out = -0.5 * (h + h.T)
    if not bool(torch.isfinite(out).all()):
        raise FisherKLError(f"{model.name}: the observed information is not finite at theta = {t.tolist()}")
    return out.detach()


def scores(model: Model, theta: Any, data: Any) -> Tensor:
    """Per-observation scores sᵢ = ∇_θ log p(xᵢ | θ) ``[n, d]``."""
    t = _theta(model, theta, "scores")
    x = observations(model, t, data)
    if isinstance(model, Regression):
        return model.row_scores(t, x)
    with torch.enable_grad():
        rep = t.expand(x.shape[0], -1).clone().requires_grad_(True)
        logp = model.distribution(rep).log_prob(x)
        (s,) = torch.autograd.grad(logp.sum(), rep)
    return s


def _inverse(a: Tensor, what: str) -> Tensor:
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise FisherKLError(
            f"{what} is not positive definite (a parameter is not identified by these data, or θ is not a maximum)"
        )
    return torch.cholesky_inverse(chol)


def sandwich_covariance(model: Model, theta: Any, data: Any, *, bread: str = "observed") -> Tensor:
    """A⁻¹ (Σᵢ sᵢsᵢᵀ) A⁻¹ ``[d, d]``, A the ``"observed"`` or ``"expected"`` information."""
    if bread not in ("observed", "expected"):
        raise ParameterError(f"sandwich_covariance: bread must be 'observed' or 'expected', got {bread!r}")
    a = observed_information(model, theta, data) if bread == "observed" else expected_information(model, theta, data)
    s = scores(model, theta, data)
    a_inv = _inverse(a, f"the {bread} information")
    return a_inv @ (s.T @ s) @ a_inv
