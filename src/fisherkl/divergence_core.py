"""Expectation-based divergences: E_p[g(log p, log q)] by exact sums, quadrature or Monte Carlo.

The engine behind :mod:`fisherkl.divergence` and behind the Hessian-of-KL routes of
:mod:`fisherkl.fisher` for models without a closed-form KL. θp and θq must already be valid
and broadcast; gradients flow to both through log p, log q and the weights exp(log p).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from .errors import ConvergenceError, RouteError, UnreliableEstimateWarning
from .estimate import Estimate
from .expectation import LogScaled, exact_scheme, expect_exact, expect_mc
from .model import Model, check_not_nan, no_argument_validation
from .special import expm1mx

Pointwise = Callable[[Tensor, Tensor], "Tensor | LogScaled"]  # (log p, log q) at the nodes -> integrand


def divergence(
    model: Model,
    tp: Tensor,
    tq: Tensor,
    closed: Callable[[Tensor, Tensor], Tensor | None],
    pointwise: Pointwise,
    what: str,
    method: str = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    min_level: int = 4,
    mc_pointwise: Pointwise | None = None,
) -> Estimate:
    """E_p[pointwise(log p, log q)], or ``closed(θp, θq)`` where that is not None.

    ``method``: 'closed', 'exact' (finite sum, series, quadrature), 'mc', or 'auto' (the first
    that exists); ``mc_pointwise`` replaces ``pointwise`` for Monte Carlo. Never returns NaN:
    raises FisherKLError naming ``what`` instead.
    """
    est = _divergence(
        model, tp, tq, closed, pointwise, what, method, n_samples, seed, generator, min_level, mc_pointwise
    )
    check_not_nan(model, est.value, f"the {what} ({est.method})")
    return est


def _divergence(
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
    min_level: int,
    mc_pointwise: Pointwise | None = None,
) -> Estimate:
    if method not in ("auto", "closed", "exact", "mc"):
        raise RouteError(f"unknown method {method!r}; choose 'auto', 'closed', 'exact' or 'mc'")
    with no_argument_validation():
        if method in ("auto", "closed"):
            value = closed(tp, tq)
            if value is not None:
                return Estimate(value, value.new_zeros(()).expand_as(value), "closed")
            if method == "closed":
                raise RouteError(f"{model.name}: no closed-form {what}; use method='exact' or 'mc'")
        p = model.distribution(tp)

        def integrand(x: Tensor, pointwise: Pointwise = pointwise) -> tuple[Tensor, Tensor | LogScaled]:
            n = x.shape[0]
            logp = model.distribution(tp.expand((n, *tp.shape))).log_prob(x)
            logq = model.distribution(tq.expand((n, *tq.shape))).log_prob(x)
            return logp, pointwise(logp, logq)

        def with_rounding(x: Tensor) -> tuple[Tensor, Tensor | LogScaled]:
            n = x.shape[0]
            logp = model.distribution(tp.expand((n, *tp.shape))).log_prob(x)
            logq = model.distribution(tq.expand((n, *tq.shape))).log_prob(x)
            counts = x if scheme == "series" else None
            reference = None
            finer = x.is_floating_point() and tp.is_floating_point()
            if finer and torch.finfo(x.dtype).bits > torch.finfo(tp.dtype).bits:
                # a float32 density on float64 nodes: its terms in θ (log Γ(α) ≈ 1.5e4 at a chi² θ of 4571,
                # which cancel inside log p) round in float32, which |log p| does not show; Δ recomputed
                # with θ in the nodes' dtype measures that rounding at each node
                with torch.no_grad():
                    lp = model.distribution(tp.detach().to(x.dtype).expand((n, *tp.shape))).log_prob(x)
                    lq = model.distribution(tq.detach().to(x.dtype).expand((n, *tq.shape))).log_prob(x)
                if lp.dtype == x.dtype and lq.dtype == x.dtype:
                    reference = lq - lp
            return logp, _with_rounding(pointwise, _SENSITIVITY[pointwise], logp, logq, counts, tp.dtype, reference)

        scheme = exact_scheme(p)
        if method == "exact" and scheme is None:
            raise RouteError(f"{model.name}: no exact expectation for {type(p).__name__}; use method='mc'")
        if method != "mc" and scheme is not None:
            if not tp.requires_grad and not tq.requires_grad and bool((tp == tq).all()):
                zero = torch.zeros(tp.shape[:-1], dtype=tp.dtype, device=tp.device)  # D(p, p) = 0, no nodes needed
                return Estimate(zero, zero.clone(), scheme)
            sensitivity = _SENSITIVITY.get(pointwise)
            if sensitivity is None:
                value, error, scheme = expect_exact(p, integrand, others=(model.distribution(tq),), min_level=min_level)
                return Estimate(value, error, f"{scheme}")
            value, error, scheme = expect_exact(
                p, with_rounding, others=(model.distribution(tq),), min_level=min_level, noise_column=True
            )
            value, error = value[..., 0], error[..., 0] + value[..., 1].detach().abs()
            error = torch.where(torch.isinf(value), torch.zeros_like(error), error)  # an infinite sum is exact
            return Estimate(value, error, f"{scheme}")
        sampled = integrand if mc_pointwise is None else (lambda x: integrand(x, mc_pointwise))
        value, se = expect_mc(p, sampled, n_samples=n_samples, seed=seed, generator=generator)
        return Estimate(value, se, "mc", n_samples)


def kl_divergence(
    model: Model,
    tp: Tensor,
    tq: Tensor,
    method: str = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Estimate:
    """KL[p ‖ q]: closed form, else E_p[e^Δ − 1 − Δ] exactly (:func:`kl_excess`; for models whose
    support does not move with θ), else E_p[log p − log q] by Monte Carlo (unbiased, finite variance
    where log q/p has a second moment)."""
    if model.regular:
        try:
            return divergence(
                model, tp, tq, model.closed_kl, kl_excess, "KL", method, n_samples, seed, generator, 4, log_ratio
            )
        except ConvergenceError:
            pass  # q's mass out of the nodes' reach (e.g. a Poisson rate of 1e12): the log-ratio form
    return divergence(model, tp, tq, model.closed_kl, log_ratio, "KL", method, n_samples, seed, generator)


def chi2_divergence(
    model: Model,
    tp: Tensor,
    tq: Tensor,
    method: str = "auto",
    n_samples: int = 100_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Estimate:
    """Pearson χ² = E_p[(q/p − 1)²]: closed form, else exact, else Monte Carlo.

    Where the model can say so (``ratio_moment_finite``), χ² = +inf is returned as such (a sum or
    quadrature of a divergent integral would return a finite number), and a Monte Carlo standard
    error is replaced by +inf with an :class:`UnreliableEstimateWarning` where E_p[(q/p)⁴] = ∞ (the
    estimator then has no variance; the sample standard deviation means nothing).
    """
    closed = getattr(model, "chi2_formula", lambda a, b: None)
    what = "chi-squared divergence"
    moment = getattr(model, "ratio_moment_finite", None)
    with no_argument_validation():
        if method in ("auto", "closed"):
            value = closed(tp, tq)
            if value is not None:
                return divergence(model, tp, tq, lambda a, b: value, pearson, what, "closed")
        finite = moment(tp, tq, 2) if moment is not None else None
    if finite is not None and not bool(finite.all()):
        # χ² = ∞ there: compute the rest with q := p (χ² = 0) and put the infinities back
        tq_safe = torch.where(finite.unsqueeze(-1), tq, tp)
        est = divergence(model, tp, tq_safe, closed, pearson, what, method, n_samples, seed, generator)
        inf = torch.full_like(est.value, math.inf)
        return Estimate(
            torch.where(finite, est.value, inf),
            torch.where(finite, est.error, torch.zeros_like(est.error)),
            est.method,
            est.n_samples,
        )
    est = divergence(model, tp, tq, closed, pearson, what, method, n_samples, seed, generator)
    if est.method == "mc":
        est = _check_mc_variance(model, tp, tq, est, moment)
    return est


def _check_mc_variance(model: Model, tp: Tensor, tq: Tensor, est: Estimate, moment: object) -> Estimate:
    with no_argument_validation():
        fourth = moment(tp, tq, 4) if callable(moment) else None
    if fourth is None:
        warnings.warn(
            f"{model.name}: the Monte Carlo standard error of the χ² divergence assumes E_p[(q/p)⁴] < ∞, "
            "which fisherkl cannot check for this model; where q is much wider than p it is infinite and "
            "the stated error means nothing (give the model a closed form or use method='exact')",
            UnreliableEstimateWarning,
            stacklevel=3,
        )
        return est
    if bool(fourth.all()):
        eighth = moment(tp, tq, 8) if callable(moment) else None
        if eighth is not None and not bool(eighth.all()):
            warnings.warn(
                f"{model.name}: E_p[(q/p)⁸] = ∞ for some pairs (q wider than p), so the sample variance of "
                "the Monte Carlo χ² estimate is itself heavy-tailed and its standard error often understates "
                "the error at moderate sample sizes; use method='closed' or 'exact' where available",
                UnreliableEstimateWarning,
                stacklevel=3,
            )
        return est
    warnings.warn(
        f"{model.name}: E_p[(q/p)⁴] = ∞ for some pairs (q much wider than p), so the Monte Carlo χ² "
        "estimate has infinite variance there and no standard error: its error is reported as inf. "
        "Use method='closed' or 'exact' where available",
        UnreliableEstimateWarning,
        stacklevel=3,
    )
    error = torch.where(fourth, est.error, torch.full_like(est.error, math.inf))
    return Estimate(est.value, error, est.method, est.n_samples)


def log_ratio(logp: Tensor, logq: Tensor) -> Tensor:
    # p = 0 nodes carry zero weight; q = 0 where p > 0 gives +inf, as it should
    return torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp - logq)


def kl_excess(logp: Tensor, logq: Tensor) -> LogScaled:
    """KL integrand in the form that vanishes with the perturbation: e^Δ − 1 − Δ ≥ 0, Δ = log q − log p.

    E_p[e^Δ − 1] = ∫(q − p) = 0 when p and q share their support, so E_p[e^Δ − 1 − Δ] = E_p[−Δ] = KL,
    but pointwise it is O(Δ²) and never negative: an exact sum or quadrature of it keeps its relative
    accuracy however close q is to p (that of log p − log q is lost in the cancellation of ±Δ).
    Where q/p > e the term is q·(1 − (1 + Δ)e^{−Δ}), weighted by q itself (an absolute log-scale):
    log p + Δ would lose log q to rounding where p is far smaller than q.
    """
    delta = logq - logp
    big = delta > 1
    d_big = torch.where(big, delta, torch.ones_like(delta))
    d_small = torch.where(big, torch.zeros_like(delta), delta)
    value = torch.where(big, -torch.expm1(-d_big) - d_big * torch.exp(-d_big), expm1mx(d_small))
    value = torch.where(torch.isneginf(delta), torch.full_like(value, math.inf), value)  # q = 0 where p > 0
    return LogScaled(value, torch.where(big, logq, logp), absolute=True)


def _with_rounding(
    pointwise: Pointwise,
    sensitivity: Pointwise,
    logp: Tensor,
    logq: Tensor,
    counts: Tensor | None,
    own: torch.dtype | None = None,
    reference: Tensor | None = None,
) -> Tensor | LogScaled:
    """The integrand and, as a second column, its rounding error |∂f/∂Δ|·8ε·m(x).

    Δ = log q − log p is a difference of two separately rounded log-densities, so it carries an
    absolute error of a few ε times the size of the terms inside them, which no refinement of the
    nodes removes; its expectation is added to the stated error (it dominates when q is within
    ~1e-8 of p). The terms' size is taken as m(x) = |log p| + |log q|, plus k(1 + log k) for a count k
    (terms like k·log λ and log k! cancel inside the log-pmf of count families).

    ε is that of the parameters' dtype ``own`` where it is coarser than the nodes' (a float32 density
    integrated on float64 nodes: log p and log q come out float64, but their terms in θ — log Γ(α),
    α·log β — were rounded in float32, and so is Δ). There ``reference`` (Δ computed with θ in float64)
    measures Δ's rounding at each node, which may exceed 8ε·m(x) where large terms in θ cancel; twice
    it is added to 8ε·m(x).
    """
    f, df = pointwise(logp, logq), sensitivity(logp, logq)
    size = logp.detach().abs() + logq.detach().abs()
    if counts is not None:
        k = counts.detach().abs()
        size = size + k * (1 + torch.log(torch.where(k > 0, k, torch.ones_like(k))))
    eps = torch.finfo(logp.dtype).eps
    if own is not None and own.is_floating_point and not own.is_complex:
        eps = max(eps, torch.finfo(own).eps)
    ulp = 8 * eps * size
    ulp = torch.nan_to_num(ulp, nan=0.0, posinf=0.0)
    if reference is not None:
        delta = (logq - logp).detach()
        measured = torch.where(torch.isfinite(delta) & torch.isfinite(reference), (delta - reference).abs(), 0.0)
        ulp = ulp + 2 * measured
    if isinstance(f, LogScaled):
        assert isinstance(df, LogScaled)
        return LogScaled(torch.stack([f.value, df.value.detach() * ulp], -1), f.log_scale, f.absolute)
    assert isinstance(df, Tensor)
    return torch.stack([f, df.detach() * ulp], -1)


def _log_ratio_sensitivity(logp: Tensor, logq: Tensor) -> Tensor:
    return torch.ones_like(logp)


def _kl_excess_sensitivity(logp: Tensor, logq: Tensor) -> LogScaled:
    # |e^Δ − 1| on the scale of kl_excess
    delta = logq - logp
    big = delta > 1
    value = torch.where(big, -torch.expm1(-torch.where(big, delta, torch.ones_like(delta))), torch.expm1(delta).abs())
    return LogScaled(torch.nan_to_num(value, nan=0.0), torch.where(big, logq, logp), absolute=True)


def _pearson_sensitivity(logp: Tensor, logq: Tensor) -> LogScaled:
    # |d(e^Δ − 1)²/dΔ| = 2|e^Δ − 1|e^Δ on the scale (e^Δ − 1)² of pearson: 2e^Δ/|e^Δ − 1|
    delta = logq - logp
    pos = delta > 0
    value = torch.where(pos, -2 / torch.expm1(-delta), 2 * torch.exp(delta) / (-torch.expm1(delta)))
    base = pearson(logp, logq)
    return LogScaled(torch.nan_to_num(value, nan=0.0, posinf=0.0), base.log_scale, absolute=True)


def pearson(logp: Tensor, logq: Tensor) -> LogScaled:
    # (q/p − 1)² = exp(2·log|expm1(Δ)|), Δ = log q − log p, written so that it never overflows
    delta = logq - logp
    pos = delta > 0
    log_weight = torch.where(
        pos, 2 * logq - logp + 2 * torch.log(-torch.expm1(-delta)), logp + 2 * torch.log(-torch.expm1(delta))
    )
    return LogScaled(torch.ones_like(delta), log_weight, absolute=True)


_SENSITIVITY: dict[Pointwise, Pointwise] = {
    log_ratio: _log_ratio_sensitivity,
    kl_excess: _kl_excess_sensitivity,
    pearson: _pearson_sensitivity,
}
