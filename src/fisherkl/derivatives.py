"""Derivatives in θ at many points x at once, and Hessians in δ at δ = 0.

Per-point scores use the replication trick: θ is expanded to one copy per point, so one backward
pass of Σₙ log p(xₙ | θₙ) yields every ∂log p(xₙ)/∂θ at once (and d more passes the Hessians).
If θ itself requires grad, the graph is kept so that the results can be differentiated again
(e.g. for Christoffel symbols).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .model import Model


def replicate(theta: Tensor, n: int) -> tuple[Tensor, bool]:
    """θ ``[*b, d]`` → ``[n, *b, d]`` that requires grad; and whether to keep graphs for θ."""
    keep = theta.requires_grad
    rep = theta.unsqueeze(0).expand((n, *theta.shape))
    rep = rep * 1 if keep else rep.detach().clone().requires_grad_(True)
    return rep, keep


def log_prob_derivatives(model: Model, theta: Tensor, x: Tensor, order: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """log p(x|θ) ``[n, *b]``, score ``[n, *b, d]`` and (order 2) Hessian ``[n, *b, d, d]``."""
    rep, keep = replicate(theta, x.shape[0])
    with torch.enable_grad():
        logp = model.distribution(rep).log_prob(x)
        score = grad_or_zero(logp.sum(), rep, create_graph=keep or order == 2)
        hess = rows_of_jacobian(score, rep, keep) if order == 2 else None
    if not keep:
        logp, score = logp.detach(), score.detach()
    return logp, score, hess


def rows_of_jacobian(g: Tensor, wrt: Tensor, keep: bool) -> Tensor:
    """J[..., i, j] = ∂g[..., i]/∂wrt[..., j] for g that depends on each row of wrt alone."""
    d = g.shape[-1]
    rows = [grad_or_zero(g[..., i].sum(), wrt, retain_graph=True, create_graph=keep) for i in range(d)]
    return torch.stack(rows, -2)


def grad_or_zero(out: Tensor, wrt: Tensor, *, retain_graph: bool | None = None, create_graph: bool = False) -> Tensor:
    """∂out/∂wrt, or zeros where ``out`` does not depend on ``wrt`` at all (a model whose distribution
    ignores θ has score 0 and Fisher information 0, not an autograd error)."""
    if not out.requires_grad:
        return torch.zeros_like(wrt)
    (g,) = torch.autograd.grad(out, wrt, retain_graph=retain_graph, create_graph=create_graph, allow_unused=True)
    return torch.zeros_like(wrt) if g is None else g


def hessian_at_zero(fn: Callable[[Tensor], Tensor], theta: Tensor) -> Tensor:
    """∇²_δ fn(δ) at δ = 0, batched: fn maps δ ``[*b, d]`` to ``[*b]`` elementwise in the batch."""
    keep = theta.requires_grad
    delta = torch.zeros_like(theta.detach()).requires_grad_(True)
    with torch.enable_grad():
        value = fn(delta)
        g = grad_or_zero(value.sum(), delta, create_graph=True)
        return rows_of_jacobian(g, delta, keep)
