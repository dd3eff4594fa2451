"""Expectation-based divergences: E_p[g(log p, log q)] by exact sums, quadrature or Monte Carlo.

The engine behind :mod:`fisherkl.divergence` and behind the Hessian-of-KL routes of
:mod:`fisherkl.fisher` for models without a closed-form KL. θp and θq must already be valid
and broadcast; gradients flow to both through log p, log q and the weights exp(log p).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import RouteError
from .estimate import Estimate
from .expectation import LogScaled, exact_scheme, expect_exact, expect_mc
from .model import Model, check_not_nan, no_argument_validation

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
) -> Estimate:
    """E_p[pointwise(log p, log q)], or ``closed(θp, θq)`` where that is not None.

    ``method``: 'closed', 'exact' (finite sum, series, quadrature), 'mc', or 'auto' (the first
    that exists). Never returns NaN: raises FisherKLError naming ``what`` instead.
    """
    est = _divergence(model, tp, tq, closed, pointwise, what, method, n_samples, seed, generator, min_level)
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

        def integrand(x: Tensor) -> tuple[Tensor, Tensor]:
            n = x.shape[0]
            logp = model.distribution(tp.expand((n, *tp.shape))).log_prob(x)
            logq = model.distribution(tq.expand((n, *tq.shape))).log_prob(x)
            return logp, pointwise(logp, logq)

        scheme = exact_scheme(p)
        if method == "exact" and scheme is None:
            raise RouteError(f"{model.name}: no exact expectation for {type(p).__name__}; use method='mc'")
        if method != "mc" and scheme is not None:
            value, error, scheme = expect_exact(p, integrand, others=(model.distribution(tq),), min_level=min_level)
            return Estimate(value, error, f"{scheme}")
        value, se = expect_mc(p, integrand, n_samples=n_samples, seed=seed, generator=generator)
        return Estimate(value, se, "mc", n_samples)


def log_ratio(logp: Tensor, logq: Tensor) -> Tensor:
    # p = 0 nodes carry zero weight; q = 0 where p > 0 gives +inf, as it should
    return torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp - logq)


def pearson(logp: Tensor, logq: Tensor) -> LogScaled:
    # (q/p − 1)² = exp(2·log|expm1(Δ)|), Δ = log q − log p, written so that it never overflows
    delta = logq - logp
    log_abs = torch.where(delta > 0, delta + torch.log(-torch.expm1(-delta)), torch.log(-torch.expm1(delta)))
    return LogScaled(torch.ones_like(delta), 2 * log_abs)
