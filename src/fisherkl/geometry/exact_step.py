"""The natural-gradient step of a model whose **exact** KL equals ε: a 1-D root find along the direction.

    x = (I(θ) + λ·1)⁻¹ g,   δ(τ) = −τ·x,   find τ > 0 with  KL[p_θ ‖ p_{θ+δ(τ)}] = ε.

The quadratic form gives the first guess τ₀ = √(2ε / xᵀI(θ)x) (where ½δᵀIδ = ε); the root is then
bracketed and refined by a safeguarded secant on log KL against log τ (nearly a straight line of slope
2 near δ = 0, so two or three exact KL evaluations usually suffice). Points outside the parameter
space count as "too far".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..divergence import kl as exact_kl
from ..errors import ConvergenceError, FisherKLError, ParameterError, RouteError
from ..fisher import fisher
from ..model import Model, as_parameter_tensor, require_model


def _valid_rows(model: Model, theta: Tensor) -> Tensor:
    """Which rows of θ ``[m, d]`` are finite, valid parameters of the model."""
    ok = torch.isfinite(theta).all(-1)
    if not bool(ok.any()):
        return ok
    try:
        model.validate(theta[ok])
        return ok
    except ParameterError:
        pass
    for i in torch.nonzero(ok).flatten().tolist():
        try:
            model.validate(theta[i])
        except ParameterError:
            ok[i] = False
    return ok


def _kl_along(model: Model, theta: Tensor, x: Tensor, tau: Tensor) -> tuple[Tensor, Tensor]:
    """KL[p_θ ‖ p_{θ − τx}] and its stated error, row by row (inf where θ − τx is not a parameter)."""
    q = theta - tau.unsqueeze(-1) * x
    valid = _valid_rows(model, q)
    value = torch.full_like(tau, math.inf)
    error = torch.zeros_like(tau)
    if bool(valid.any()):
        est = exact_kl(model, theta[valid], q[valid], return_error=True)
        if not est.exact:
            raise RouteError(
                f"kl_step({model.name}, theta, ...): the KL of this model is only known by Monte Carlo, so no step "
                "can be set to an exact KL; use the quadratic form kl_step(fisher(model, theta), grad, max_kl)"
            )
        value[valid] = est.value.to(tau.dtype)
        error[valid] = est.error.to(tau.dtype)
    return value, error


def exact_kl_step(
    model: Model,
    theta: Any,
    grad: Any,
    max_kl: float,
    damping: float = 0.0,
    *,
    rtol: float = 1e-10,
    max_iter: int = 60,
) -> Tensor:
    """The step δ = −τ·(I(θ) + λ)⁻¹g whose exact KL[p_θ ‖ p_{θ+δ}] is ``max_kl`` to relative ``rtol``.

    ``theta`` ``[..., d]`` and ``grad`` (broadcast against it) give a step ``[..., d]``; a zero gradient
    gives a zero step. Raises :class:`ConvergenceError` when the KL along the direction cannot reach
    ``max_kl`` inside the parameter space, or the root is not found to ``rtol`` in ``max_iter``
    evaluations, and :class:`RouteError` for a model whose KL is only known by Monte Carlo.
    """
    from .natural import natural_gradient

    model = require_model(model, "kl_step")
    eps = float(max_kl)
    if not (eps > 0 and math.isfinite(eps)):
        raise ParameterError(f"max_kl must be a positive finite number, got {max_kl}")
    if not (rtol > 0 and math.isfinite(rtol)):
        raise ParameterError(f"rtol must be a positive finite number, got {rtol}")
    t = model.validate(theta)
    g = as_parameter_tensor(grad, "grad", like=t)
    if g.ndim == 0 and model.dim == 1:
        g = g.reshape(1)
    if g.ndim == 0 or g.shape[-1] != model.dim:
        raise ParameterError(f"{model.name}: grad must have last dimension {model.dim}, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ParameterError(f"{model.name}: grad must be finite, got {g.tolist()}")
    try:
        t, g = torch.broadcast_tensors(t, g)
    except RuntimeError:
        raise ParameterError(
            f"{model.name}: theta {tuple(t.shape)} and grad {tuple(g.shape)} do not broadcast"
        ) from None
    shape = t.shape
    t, g = t.reshape(-1, model.dim), g.reshape(-1, model.dim)
    info = fisher(model, t)
    assert isinstance(info, Tensor)
    x = natural_gradient(info, g, damping)
    assert isinstance(x, Tensor)
    curvature = torch.einsum("bi,bij,bj->b", x, info, x)
    if bool((curvature < 0).any()):
        raise FisherKLError(f"{model.name}: the Fisher is not positive semi-definite at theta (xᵀIx < 0)")
    tau = torch.zeros(t.shape[0], dtype=t.dtype, device=t.device)
    todo = torch.nonzero(curvature > 0).flatten()
    if todo.numel():
        tau[todo] = _root(model, t[todo], x[todo], torch.sqrt(2 * eps / curvature[todo]), eps, rtol, max_iter)
    return (-tau.unsqueeze(-1) * x).reshape(shape)


def _root(model: Model, t: Tensor, x: Tensor, tau: Tensor, eps: float, rtol: float, max_iter: int) -> Tensor:
    """τ per row with KL(θ − τx) = ε (see the module docstring)."""
    m = t.shape[0]
    lo, hi = torch.zeros_like(tau), torch.full_like(tau, math.inf)
    k_lo, k_hi = torch.zeros_like(tau), torch.full_like(tau, math.inf)
    done = torch.zeros(m, dtype=torch.bool, device=t.device)
    out = tau.clone()
    log_eps = math.log(eps)
    for it in range(max_iter):
        idx = torch.nonzero(~done).flatten()
        if idx.numel() == 0:
            return out
        k, err = _kl_along(model, t[idx], x[idx], tau[idx])
        hit = (k - eps).abs() <= rtol * eps
        if bool(hit.any()):
            if bool((err[hit] > rtol * eps).any()):
                worst = float((err[hit] / eps).max())
                raise ConvergenceError(
                    f"kl_step({model.name}): the KL itself is known only to {worst:.2g} relative here, above "
                    f"rtol = {rtol:g}; pass a larger rtol"
                )
            out[idx[hit]] = tau[idx[hit]]
            done[idx[hit]] = True
        below = ~hit & (k < eps)
        above = ~hit & ~below
        j_lo, j_hi = idx[below], idx[above]
        lo[j_lo], k_lo[j_lo] = tau[j_lo], k[below]
        hi[j_hi], k_hi[j_hi] = tau[j_hi], k[above]
        rest = idx[~hit]
        if rest.numel() == 0:
            continue
        cur, kc = tau[rest], k[~hit]
        # the quadratic model refitted to this point: τ·√(ε/KL) (a secant through the origin in log-log)
        finite = torch.isfinite(kc) & (kc > 0)
        nxt = torch.where(finite, cur * torch.sqrt(eps / kc.clamp_min(torch.finfo(kc.dtype).tiny)), cur / 2)
        a, b = lo[rest], hi[rest]
        both = (a > 0) & torch.isfinite(b) & torch.isfinite(k_hi[rest]) & (k_lo[rest] > 0)
        if bool(both.any()):  # a secant through both ends of the bracket, in log-log
            la, lb = a[both].log(), b[both].log()
            fa, fb = k_lo[rest][both].log() - log_eps, k_hi[rest][both].log() - log_eps
            nxt[both] = (la - fa * (lb - la) / (fb - fa)).exp()
        bad = ~((nxt > a) & (nxt < b)) | (it >= max_iter // 2)  # leave the bracket, or too slow: bisect
        if bool(bad.any()):
            mid = torch.where(a > 0, (a * b).sqrt(), b / 2)
            mid = torch.where(torch.isfinite(b), mid, 2 * a)
            nxt = torch.where(bad, mid, nxt)
        tau[rest] = nxt
    if bool(done.all()):
        return out
    raise ConvergenceError(
        f"kl_step({model.name}): no step along the natural direction reached KL = {eps:g} to rtol {rtol:g} in "
        f"{max_iter} evaluations (the KL may stay below it up to the edge of the parameter space); lower max_kl"
    )


__all__ = ["exact_kl_step"]
