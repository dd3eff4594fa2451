"""Divergences between two members of a model, and their quadratic approximations.

* ``kl(model, θp, θq)`` = KL[p ‖ q] = E_p[log p − log q]
* ``jeffreys(model, θp, θq)`` = KL[p ‖ q] + KL[q ‖ p]
* ``chi2(model, θp, θq)`` = Pearson χ²(q ‖ p) = ∫ (q − p)²/p = E_p[(q/p − 1)²], the intermediate
  form between KL and the Fisher: χ² = δᵀIδ + O(|δ|³) for q = p_{θ+δ}.
* ``kl_quadratic(model, θ, δ)`` = ½ δᵀ I(θ) δ  ≈ KL[p_θ ‖ p_{θ+δ}]
* ``jeffreys_quadratic(model, θ, δ)`` = δᵀ I(θ) δ ≈ Jeffreys(θ, θ+δ) ≈ χ²

``method``: ``"closed"`` (a closed form), ``"exact"`` (finite sum, truncated series or quadrature),
``"mc"`` (Monte Carlo over p with a standard error) or ``"auto"`` (the first of these that
exists). θp and θq broadcast against each other; results have their common batch shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from .errors import ParameterError, RouteError
from .estimate import Estimate
from .expectation import LogScaled, exact_scheme, expect_exact, expect_mc
from .fisher import Method, fisher
from .model import Model, as_parameter_tensor, check_not_nan, no_argument_validation

DivMethod = Literal["auto", "closed", "exact", "mc"]
Pointwise = Callable[[Tensor, Tensor], "Tensor | LogScaled"]  # (log p, log q) at the nodes -> integrand


def _pair(model: Model, theta_p: Any, theta_q: Any) -> tuple[Tensor, Tensor]:
    tp = model.validate(theta_p, "theta_p")
    tq = model.validate(theta_q, "theta_q")
    dtype = torch.promote_types(tp.dtype, tq.dtype)
    tp, tq = tp.to(dtype), tq.to(dtype=dtype, device=tp.device)
    try:
        return torch.broadcast_tensors(tp, tq)  # type: ignore[return-value]
    except RuntimeError:
        raise ParameterError(
            f"{model.name}: theta_p {tuple(tp.shape)} and theta_q {tuple(tq.shape)} do not broadcast"
        ) from None


def _divergence(*args: Any) -> Estimate:
    est = _divergence_unchecked(*args)
    check_not_nan(args[0], est.value, f"the {args[5]} ({est.method})")
    return est


def _divergence_unchecked(
    model: Model,
    tp: Tensor,
    tq: Tensor,
    closed: Callable[[Tensor, Tensor], Tensor | None],
    pointwise: Pointwise,
    what: str,
    method: str,
    n_samples: int,
    seed: int | None,
    generator: torch.Generator | None,
) -> Estimate:
    if method not in ("auto", "closed", "exact", "mc"):
        raise RouteError(f"unknown method {method!r}; choose 'auto', 'closed', 'exact' or 'mc'")
    with no_argument_validation():
        if method in ("auto", "closed"):
            value = closed(tp, tq)
            if value is not None:
                return Estimate(value, torch.zeros_like(value), "closed")
            if method == "closed":
                raise RouteError(f"{model.name}: no closed-form {what}; use method='exact' or 'mc'")
        p = model.distribution(tp)

        def integrand(x: Tensor) -> tuple[Tensor, Tensor]:
            n = x.shape[0]
            logp = model.distribution(tp.expand((n, *tp.shape))).log_prob(x)
            logq = model.distribution(tq.expand((n, *tq.shape))).log_prob(x)
            return logp, pointwise(logp, logq)

        scheme = exact_scheme(p)
        if method == "exact" and scheme is None:
            raise RouteError(f"{model.name}: no exact expectation for {type(p).__name__}; use method='mc'")
        if method != "mc" and scheme is not None:
            value, error, scheme = expect_exact(p, integrand, others=(model.distribution(tq),))
            return Estimate(value, error, f"{scheme}")
        value, se = expect_mc(p, integrand, n_samples=n_samples, seed=seed, generator=generator)
        return Estimate(value, se, "mc", n_samples)


def _log_ratio(logp: Tensor, logq: Tensor) -> Tensor:
    # p = 0 nodes carry zero weight; q = 0 where p > 0 gives +inf, as it should
    return torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp - logq)


def _pearson(logp: Tensor, logq: Tensor) -> LogScaled:
    # (q/p − 1)² = exp(2·log|expm1(Δ)|), Δ = log q − log p, written so that it never overflows
    delta = logq - logp
    log_abs = torch.where(delta > 0, delta + torch.log(-torch.expm1(-delta)), torch.log(-torch.expm1(delta)))
    return LogScaled(torch.ones_like(delta), 2 * log_abs)


def kl(
    model: Model,
    theta_p: Any,
    theta_q: Any,
    *,
    method: DivMethod = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """KL[p_θp ‖ p_θq] = E_p[log p − log q] ≥ 0, shape = the broadcast batch shape."""
    tp, tq = _pair(model, theta_p, theta_q)
    est = _divergence(model, tp, tq, model.closed_kl, _log_ratio, "KL", method, n_samples, seed, generator)
    return est if return_error else est.value


def jeffreys(
    model: Model,
    theta_p: Any,
    theta_q: Any,
    *,
    method: DivMethod = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """Jeffreys divergence KL[p‖q] + KL[q‖p] (symmetric), with errors added."""
    tp, tq = _pair(model, theta_p, theta_q)
    a = _divergence(model, tp, tq, model.closed_kl, _log_ratio, "KL", method, n_samples, seed, generator)
    seed2 = None if seed is None else seed + 1
    b = _divergence(model, tq, tp, model.closed_kl, _log_ratio, "KL", method, n_samples, seed2, generator)
    est = Estimate(
        a.value + b.value,
        a.error + b.error,
        a.method if a.method == b.method else f"{a.method}+{b.method}",
        a.n_samples,
    )
    return est if return_error else est.value


def chi2(
    model: Model,
    theta_p: Any,
    theta_q: Any,
    *,
    method: DivMethod = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """Pearson χ² = ∫ (q − p)²/p dx = E_p[(q/p − 1)²] (may be +inf for wide q)."""
    tp, tq = _pair(model, theta_p, theta_q)
    closed = getattr(model, "chi2_formula", lambda a, b: None)
    est = _divergence(model, tp, tq, closed, _pearson, "chi-squared divergence", method, n_samples, seed, generator)
    return est if return_error else est.value


def _quadratic(model: Model, theta: Any, delta: Any, method: Method) -> Tensor:
    t = model.validate(theta)
    d = as_parameter_tensor(delta, "delta", like=t)
    if d.ndim == 0 and model.dim == 1:
        d = d.reshape(1)
    if d.ndim == 0 or d.shape[-1] != model.dim:
        raise ParameterError(f"{model.name}: delta must have last dimension {model.dim}, got shape {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise ParameterError(f"{model.name}: delta must be finite, got {d.tolist()}")
    info = fisher(model, t, method)
    assert isinstance(info, Tensor)
    return torch.einsum("...i,...ij,...j->...", d, info, d)


def kl_quadratic(model: Model, theta: Any, delta: Any, *, method: Method = "auto") -> Tensor:
    """½ δᵀ I(θ) δ, the second-order approximation of KL[p_θ ‖ p_{θ+δ}]."""
    return 0.5 * _quadratic(model, theta, delta, method)


def jeffreys_quadratic(model: Model, theta: Any, delta: Any, *, method: Method = "auto") -> Tensor:
    """δᵀ I(θ) δ, the second-order approximation of Jeffreys(θ, θ+δ) and of χ²."""
    return _quadratic(model, theta, delta, method)
