"""Higher-order Taylor terms of KL[p_θ ‖ p_θ+δ] in δ: how far ½δᵀIδ can be trusted.

Along a step δ, write g(t) = KL[p_θ ‖ p_θ+tδ]. Then g(0) = g′(0) = 0 and

    KL(θ, θ+δ) = Σ_k c_k,   c_k = g⁽ᵏ⁾(0)/k!,   c₂ = ½δᵀI(θ)δ,
    c₃ = −(1/6) E_θ[∂ᵢⱼₖ log p] δᵢδⱼδₖ,   c₄ = −(1/24) E_θ[∂ᵢⱼₖₗ log p] δᵢδⱼδₖδₗ.

With a closed-form KL the c_k come from autodiff of g in t at 0 (exact). Without one, g⁽ᵏ⁾(0) =
−E_θ[dᵏ/dtᵏ log p(x | θ + tδ)] at t = 0 is an expectation, taken exactly (sum, series,
quadrature) or by Monte Carlo with a standard error.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import arguments
from .errors import NumericalError, ParameterError, RouteError
from .estimate import Estimate
from .expectation import exact_scheme, expect_exact, expect_mc
from .fisher import require_regular
from .guard import finite_or_raise, shown_theta
from .model import Model, as_parameter_tensor, no_argument_validation, require_model


def _delta(model: Model, theta: Tensor, delta: Any) -> Tensor:
    d = as_parameter_tensor(delta, "delta", like=theta)
    if d.ndim == 0 and model.dim == 1:
        d = d.reshape(1)
    if d.ndim == 0 or d.shape[-1] != model.dim:
        raise ParameterError(f"{model.name}: delta must have last dimension {model.dim}, got shape {tuple(d.shape)}")
    if not bool(torch.isfinite(d).all()):
        raise ParameterError(f"{model.name}: delta must be finite")
    return d


def _nested_t_derivatives(values_of_t: Any, t: Tensor, order: int) -> list[Tensor]:
    """[dᵏ/dtᵏ f(t) for k = 1..order], f acting elementwise on t (the sum trick)."""
    out, cur = [], values_of_t
    for _ in range(order):
        (cur,) = torch.autograd.grad(cur.sum(), t, create_graph=True)
        out.append(cur)
    return out


def kl_taylor_terms(
    model: Model,
    theta: Any,
    delta: Any,
    order: int = 3,
    *,
    method: str = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """The Taylor coefficients c_k = g⁽ᵏ⁾(0)/k!, k = 0..order, of g(t) = KL[p_θ ‖ p_θ+tδ].

    Shape ``[..., order + 1]`` (c₀ = c₁ = 0). ``method``: 'closed' (autodiff of the closed-form
    KL), 'exact' or 'mc' (expectations of t-derivatives of log p), or 'auto'.
    """
    if not isinstance(order, int) or isinstance(order, bool) or order < 2 or order > 6:
        raise ParameterError(f"order must be an integer between 2 and 6, got {order!r}")
    n_samples = arguments.integer(n_samples, "n_samples", 2)
    seed = arguments.seed(seed)
    return_error = arguments.flag(return_error, "return_error")
    t0 = require_model(model, "kl_taylor").validate(theta)
    require_regular(model)
    if order > 2 and not model.twice_differentiable:
        why = getattr(model, "why_not_twice_differentiable", "log p is not smooth in θ")
        raise RouteError(
            f"{model.name}: KL is not three times differentiable here ({why}); beyond ½δᵀIδ it grows like "
            "|δ|³ one-sidedly, so there is no Taylor polynomial of order > 2"
        )
    d = _delta(model, t0, delta)
    t0, d = torch.broadcast_tensors(t0, d)
    batch = t0.shape[:-1]
    given = t0
    standard = model.standard_point(t0.detach())
    if standard is not None:  # KL(θ, θ + tδ) = KL(θ₀, θ₀ + tJδ): the same coefficients, at a moderate θ₀
        t0, d = standard[0], (standard[1] @ d.unsqueeze(-1)).squeeze(-1)
    if not isinstance(method, str) or method not in ("auto", "closed", "exact", "mc"):
        raise RouteError(f"unknown method {method!r}; choose 'auto', 'closed', 'exact' or 'mc'")
    factorials = torch.tensor([math.factorial(k) for k in range(order + 1)], dtype=t0.dtype, device=t0.device)
    with no_argument_validation():
        closed = method in ("auto", "closed") and model.has_closed_kl(t0)
        if method == "closed" and not closed:
            raise RouteError(f"{model.name}: no closed-form KL; use method='exact' or 'mc'")
        if closed:
            t = torch.zeros(batch, dtype=t0.dtype, device=t0.device, requires_grad=True)
            with torch.enable_grad():
                value = model.closed_kl(t0, t0 + t.unsqueeze(-1) * d)
                assert value is not None
                derivs = _nested_t_derivatives(value, t, order)
            zero = torch.zeros_like(t0[..., 0])
            terms = torch.stack([zero, zero, *[g.detach() for g in derivs[1:]]], -1) / factorials
            est = Estimate(terms, torch.zeros_like(terms), "closed")
            _check_terms(model, given, est)
            return est if return_error else est.value
        if not model.twice_differentiable:
            why = getattr(model, "why_not_twice_differentiable", "log p is not smooth in θ")
            raise RouteError(f"{model.name}: the expectation route needs a smooth log p ({why}); use method='closed'")
        dist = model.distribution(t0)

        def integrand(x: Tensor) -> tuple[Tensor, Tensor]:
            n = x.shape[0]
            t = torch.zeros((n, *batch), dtype=t0.dtype, device=t0.device, requires_grad=True)
            with torch.enable_grad():
                logp = model.distribution(t0 + t.unsqueeze(-1) * d).log_prob(x)
                derivs = _nested_t_derivatives(logp, t, order)
            # g^(k)(0) = −E[dᵏ log p/dtᵏ]; g(0) = 0 and g′(0) = −E[score·δ] = 0 exactly (not estimated:
            # its Monte Carlo noise would swamp c₂ at small steps)
            zero = torch.zeros_like(logp)
            g = torch.stack([zero, zero, *[-v for v in derivs[1:]]], -1).detach()
            return logp.detach(), g

        scheme = exact_scheme(dist)
        if method == "exact" and scheme is None:
            raise RouteError(f"{model.name}: no exact expectation; use method='mc'")
        if method != "mc" and scheme is not None:
            value, error, scheme = expect_exact(dist, integrand)
            est = Estimate(value / factorials, error / factorials, scheme)
        else:
            value, se = expect_mc(dist, integrand, n_samples=n_samples, seed=seed)
            est = Estimate(value / factorials, se / factorials, "mc", n_samples)
    _check_terms(model, given, est)
    return est if return_error else est.value


def _check_terms(model: Model, theta: Tensor, est: Estimate) -> None:
    """The Taylor coefficients of a KL are finite, and c₂ = ½δᵀIδ ≥ 0: refuse anything else by name."""
    finite_or_raise(
        model.name,
        theta,
        est.value,
        "the Taylor coefficients of the KL",
        "θ or θ + δ is too close to the edge of the parameter space (or the dtype's range) for its derivatives; "
        "use float64, or rescale the parameters",
    )
    c2 = est.value[..., 2]
    slack = 64 * torch.finfo(c2.dtype).eps * est.value.abs().amax(-1) + est.error[..., 2]
    if bool((c2 < -slack).any()):
        raise NumericalError(
            f"{model.name}: the quadratic Taylor coefficient ½δᵀIδ came out negative ({float(c2.min()):.6g}) "
            f"at theta = {shown_theta(theta)}: the computation lost its accuracy; use float64 or method='exact'"
        )


def kl_taylor(
    model: Model,
    theta: Any,
    delta: Any,
    order: int = 2,
    *,
    method: str = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """The Taylor polynomial of KL[p_θ ‖ p_θ+δ] in δ up to ``order`` (2, 3, 4, …), shape ``[...]``.

    ``order=2`` is ½δᵀI(θ)δ; ``order=3`` adds −(1/6)E[∂ᵢⱼₖ log p]δᵢδⱼδₖ, which typically cuts the
    error of the quadratic form by a factor ~|δ| more.
    """
    est = kl_taylor_terms(model, theta, delta, order, method=method, n_samples=n_samples, seed=seed, return_error=True)
    assert isinstance(est, Estimate)
    out = Estimate(est.value.sum(-1), est.error.sum(-1), est.method, est.n_samples)
    return out if return_error else out.value
