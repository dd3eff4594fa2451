"""Routes to the Fisher information I(θ) = E[∇log p ∇log pᵀ] = −E[∇² log p].

``fisher(model, theta, method)`` with ``method`` one of

* ``"closed"``: the family's own formula;
* ``"kl_hessian"``: ∇²_δ KL[p_θ ‖ p_{θ+δ}] at δ = 0 by autodiff of a closed-form KL — exact, and
  accurate in float32 where the KL itself at small δ is not;
* ``"jeffreys_hessian"``: ½ ∇²_δ (KL[p_θ‖p_{θ+δ}] + KL[p_{θ+δ}‖p_θ]) at δ = 0;
* ``"score"``: E[s sᵀ] with s = ∇_θ log p(x|θ);
* ``"neg_hessian"``: −E[∇²_θ log p(x|θ)];
* ``"auto"``: the best exact route the model has (closed → kl_hessian → exact score → MC score).

Expectations (``score``, ``neg_hessian``) are exact where the support allows (finite sums,
truncated series with a tail bound, 1-D quadrature) and Monte Carlo otherwise, chosen by
``expectation="auto" | "exact" | "mc"``. Shapes: θ ``[..., d]`` → I ``[..., d, d]``, in θ's dtype
and device. Pass ``return_error=True`` for an :class:`~fisherkl.estimate.Estimate` with the
stated error (standard error for Monte Carlo).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from . import arguments
from .derivatives import hessian_at_zero, log_prob_derivatives
from .divergence_core import divergence, log_ratio
from .errors import NonRegularModelError, RouteError
from .estimate import Estimate
from .expectation import LogScaled, exact_scheme, expect_exact, expect_mc
from .guard import check_information, check_mean_score
from .model import Model, no_argument_validation, require_model

Method = Literal["auto", "closed", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian"]
Expectation = Literal["auto", "exact", "mc"]
METHODS: tuple[str, ...] = ("auto", "closed", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian")


def require_regular(model: Model) -> None:
    if not model.regular:
        why = getattr(model, "why_not_regular", "its support depends on the parameters")
        raise NonRegularModelError(f"{model.name}: the Fisher information does not exist: {why}")


def fisher(
    model: Model,
    theta: Any,
    method: Method = "auto",
    *,
    expectation: Expectation = "auto",
    n_samples: int = 20_000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
    return_error: bool = False,
) -> Tensor | Estimate:
    """The Fisher information of ``model`` at ``theta`` (one observation), ``[..., d, d]``.

    See the module docstring for the routes. Raises :class:`~fisherkl.errors.ParameterError`
    for invalid θ, :class:`~fisherkl.errors.NonRegularModelError` for non-regular models, and
    :class:`~fisherkl.errors.RouteError` when the requested route does not exist for the model.
    """
    theta = require_model(model, "fisher").validate(theta)
    require_regular(model)
    if not isinstance(method, str) or method not in METHODS:
        raise RouteError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(expectation, str) or expectation not in ("auto", "exact", "mc"):
        raise RouteError(f"unknown expectation {expectation!r}; choose 'auto', 'exact' or 'mc'")
    n_samples = arguments.integer(n_samples, "n_samples", 2)
    seed = arguments.seed(seed)
    generator = arguments.generator(generator)
    rtol = arguments.optional_real(rtol, "rtol", low=0.0, high=1.0, low_open=True, high_open=True)
    return_error = arguments.flag(return_error, "return_error")
    full_shape = theta.shape
    theta = _collapse_broadcast(theta)
    est = _fisher(model, theta, method, expectation, n_samples, seed, generator, rtol)
    if theta.shape != full_shape:  # rows that are one row broadcast (stride 0) were computed once
        shape = (*full_shape, full_shape[-1])
        est = Estimate(est.value.expand(shape).clone(), est.error.expand(shape).clone(), est.method, est.n_samples)
    return est if return_error else est.value


def _collapse_broadcast(theta: Tensor) -> Tensor:
    """θ with every leading dimension of stride 0 (one row broadcast, e.g. ``t.expand(10**5, d)``) cut to size 1."""
    if theta.ndim < 2 or all(st != 0 or n <= 1 for st, n in zip(theta.stride()[:-1], theta.shape[:-1])):
        return theta
    index = tuple(slice(0, 1) if st == 0 else slice(None) for st, n in zip(theta.stride()[:-1], theta.shape[:-1]))
    return theta[index]


def _fisher(
    model: Model,
    theta: Tensor,
    method: str,
    expectation: str,
    n_samples: int,
    seed: int | None,
    generator: torch.Generator | None,
    rtol: float | None,
) -> Estimate:
    with no_argument_validation():
        value = model.closed_fisher(theta) if method in ("auto", "closed") else None
        if method == "auto":
            method = "closed" if value is not None else auto_method(model, theta)  # type: ignore[assignment]
        if method == "closed":
            if value is None:
                routes = ", ".join(available_routes(model, theta))
                raise RouteError(f"{model.name}: no closed-form Fisher; available routes: {routes}")
            est = Estimate(value, value.new_zeros(()).expand_as(value), "closed")
        else:
            standard = model.standard_point(theta)
            at = theta if standard is None else standard[0]
            if method in ("kl_hessian", "jeffreys_hessian"):
                est = _kl_route(model, at, method, n_samples, seed)
            else:
                est = _expectation_route(model, at, method, expectation, n_samples, seed, generator, rtol)
            if standard is not None:  # I(θ) = Jᵀ I(θ₀) J
                jac = standard[1]
                value = jac.transpose(-1, -2) @ est.value @ jac
                error = jac.abs().transpose(-1, -2) @ est.error @ jac.abs()
                est = Estimate(value, error, est.method, est.n_samples)
    check_information(model.name, theta, est.value, None if est.method == "closed" else est.error, est.method)
    model.diagnose(theta, est.value)
    return est


def auto_method(model: Model, theta: Tensor) -> str:
    """The route ``method="auto"`` takes at θ."""
    if model.closed_fisher(theta) is not None:
        return "closed"
    if model.has_closed_kl(theta):
        return "kl_hessian"
    return "score"


def available_routes(model: Model, theta: Tensor) -> list[str]:
    """Routes that work for ``model`` at θ; '(mc)' marks those that are Monte Carlo only."""
    routes = []
    with no_argument_validation():
        if model.closed_fisher(theta) is not None:
            routes.append("closed")
        closed_kl = model.has_closed_kl(theta)
        exact = exact_scheme(model.distribution(theta)) is not None
    suffix = "" if exact else " (mc)"
    if closed_kl or exact:
        routes += ["kl_hessian", "jeffreys_hessian"]
    else:
        routes.append("kl_hessian (mc)")
    routes.append("score" + suffix)
    if model.twice_differentiable:
        routes.append("neg_hessian" + suffix)
    return routes


def _kl_route(model: Model, theta: Tensor, method: str, n_samples: int, seed: int | None) -> Estimate:
    """∇²_δ KL[p_θ ‖ p_θ+δ] (or ½∇² of the Jeffreys divergence) at δ = 0.

    With a closed-form KL this is exact autodiff of the formula. Without one, the KL itself is an
    exact expectation (sum, series or quadrature with the nodes held fixed), differentiated
    twice; its stated error is |H − I_score| + error(I_score) from the score route on the same
    scheme (errors do not propagate through the differentiation itself). For
    Monte Carlo-only models ``kl_hessian`` differentiates the sample mean of log p_θ − log p_θ+δ
    over draws from p_θ; ``jeffreys_hessian`` would need draws from p_θ+δ and is refused.
    """
    closed = model.has_closed_kl(theta)
    scheme = "closed"
    if not closed:
        exact = exact_scheme(model.distribution(theta.detach())) is not None
        if method == "jeffreys_hessian" and not exact:
            raise RouteError(
                f"{model.name}: route 'jeffreys_hessian' needs a closed-form KL or an exact expectation; "
                "use 'kl_hessian', 'score' or 'neg_hessian' (Monte Carlo)"
            )
        scheme = "exact" if exact else "mc"

    def one_way(tp: Tensor, tq: Tensor) -> Tensor:
        if closed:
            value = model.closed_kl(tp, tq)
            assert value is not None
            return value
        # KL vanishes identically at δ = 0, so its own convergence says nothing about its Hessian:
        # use a fine quadrature level (h = 1/128) throughout
        est = divergence(model, tp, tq, lambda a, b: None, log_ratio, "KL", scheme, n_samples, seed, None, 7)
        return est.value

    if method == "kl_hessian":
        value = hessian_at_zero(lambda delta: one_way(theta, theta + delta), theta)
    else:
        value = 0.5 * hessian_at_zero(
            lambda delta: one_way(theta, theta + delta) + one_way(theta + delta, theta), theta
        )
    value = 0.5 * (value + value.transpose(-1, -2))
    if closed:
        return Estimate(value, torch.zeros_like(value), method)
    # the error is not propagated through the differentiation: bound it by the score route on
    # the same expectation scheme, |H − I_score| + error(I_score)
    check = _expectation_route(model, theta.detach(), "score", scheme, n_samples, seed, None, None)
    error = (value.detach() - check.value).abs() + check.error
    label = check.method.split("/")[-1]
    return Estimate(value, error, f"{method}/{label}", n_samples if scheme == "mc" else None)


def _expectation_route(
    model: Model,
    theta: Tensor,
    method: str,
    expectation: str,
    n_samples: int,
    seed: int | None,
    generator: torch.Generator | None,
    rtol: float | None,
) -> Estimate:
    if method == "neg_hessian" and not model.twice_differentiable:
        why = getattr(model, "why_not_twice_differentiable", "log p is not twice differentiable in θ")
        raise RouteError(f"{model.name}: route 'neg_hessian' does not apply: {why}")
    dist = model.distribution(theta.detach())
    order = 2 if method == "neg_hessian" else 1
    d = theta.shape[-1]

    def integrand(x: Tensor) -> tuple[Tensor, LogScaled]:
        # f = [s sᵀ | s] (or [−∇²log p | s]) per node, divided by its largest entry m and carried with
        # log m² (log m): p·s sᵀ is formed in log space, so a huge score at a tiny probability (s = 1e300
        # where p = 1e-300) neither overflows nor is dropped; the last column gives E[s] for the check
        logp, score, hess = log_prob_derivatives(model, theta, x, order)
        m = score.detach().abs().amax(-1)
        if hess is not None:
            m = torch.maximum(m, hess.detach().abs().flatten(-2).amax(-1))
        m = torch.where((m > 0) & torch.isfinite(m), m, torch.ones_like(m))
        u = score / m.unsqueeze(-1)
        if hess is not None:
            body, log_scale = -hess / m[..., None, None], torch.log(m)
            last = u
        else:
            body, log_scale = u.unsqueeze(-1) * u.unsqueeze(-2), 2 * torch.log(m)
            last = u / m.unsqueeze(-1)
        return logp, LogScaled(torch.cat([body, last.unsqueeze(-1)], -1), log_scale)

    def finish(value: Tensor, error: Tensor, label: str, monte_carlo: bool) -> Estimate:
        info, err = value[..., :d], error[..., :d]
        info = 0.5 * (info + info.transpose(-1, -2))
        err = 0.5 * (err + err.transpose(-1, -2))
        check_mean_score(model.name, theta, value[..., d], error[..., d], info, label, monte_carlo)
        return Estimate(info, err, label, n_samples if monte_carlo else None)

    scheme = exact_scheme(dist)
    if expectation == "exact" and scheme is None:
        raise RouteError(
            f"{model.name}: no exact expectation for {type(dist).__name__} with event shape "
            f"{tuple(dist.event_shape)}; use expectation='mc' (Monte Carlo with a standard error)"
        )
    if expectation != "mc" and scheme is not None:
        value, error, scheme = expect_exact(dist, integrand, rtol=rtol)
        return finish(value, error, f"{method}/{scheme}", False)
    value, se = expect_mc(dist, integrand, n_samples=n_samples, seed=seed, generator=generator)
    return finish(value, se, f"{method}/mc", True)
