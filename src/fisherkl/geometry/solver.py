"""A batched boundary-value solver for geodesics of a Riemannian metric g(φ) on ℝ^d.

The geodesic from φ₁ to φ₂ minimises the energy E[φ] = ∫₋₁¹ φ′(x)ᵀ g(φ(x)) φ′(x) dx over paths with
φ(−1) = φ₁, φ(1) = φ₂; its minimisers are the solutions of φ̈ᵏ + Γᵏᵢⱼ φ̇ⁱ φ̇ʲ = 0 run at constant
speed, and the distance is their length L = ∫ √(φ′ᵀ g φ′) dx (= √(2E) at the minimum).

Discretisation (spectral, not finite differences): the velocity is a Legendre series

    φ′(x) = Δ/2 + Σ_{k=1..K} a_k P_k(x),    Δ = φ₂ − φ₁,  a_k ∈ ℝ^d,

so φ(x) = φ₁ + (x+1)/2·Δ + Σ a_k (P_{k+1}(x) − P_{k−1}(x))/(2k+1) meets both end points for every
a (∫₋₁¹ P_k = 0 for k ≥ 1); the energy is taken by Gauss–Legendre quadrature on M = 2K + 8 nodes.
For analytic metrics the error falls exponentially in K (measured: K = 16 gives ≤ 1e-12 relative
on every closed form in the tests), which is why no Richardson extrapolation is needed.

The K·d coefficients per pair are found by Newton's method with an Armijo line search from the
straight line a = 0. Gradient and Hessian of E are assembled in closed form from g, ∂g and ∂²g at
the nodes, which autodiff gives in 1 + 2d backward passes for all pairs and nodes at once:

    ∂E/∂a_{km}        = Σⱼ wⱼ [2 Dⱼₖ (g v)ⱼₘ + Vⱼₖ ∂ₘ(vᵀgv)ⱼ]
    ∂²E/∂a_{km}∂a_{ln} = Σⱼ wⱼ [2 DⱼₖDⱼₗ gⱼₘₙ + 2 DⱼₖVⱼₗ Qⱼₘₙ + 2 VⱼₖDⱼₗ Qⱼₙₘ + VⱼₖVⱼₗ ∂ₘ∂ₙ(vᵀgv)ⱼ]

with Vⱼₖ, Dⱼₖ the basis functions and their derivatives at node j and Qₘₙ = ∂ₙ(g v)ₘ (v held fixed).
Resolution is doubled (K → 2K, warm-started) until two successive lengths agree to ``rtol``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConvergenceError

MetricFn = Callable[[Tensor], Tensor]


def legendre_table(x: np.ndarray, n: int) -> np.ndarray:
    """P₀(x)..Pₙ(x) by the three-term recurrence, ``[len(x), n + 1]``."""
    out = np.empty((x.shape[0], n + 1))
    out[:, 0] = 1.0
    if n >= 1:
        out[:, 1] = x
    for k in range(1, n):
        out[:, k + 1] = ((2 * k + 1) * x * out[:, k] - k * out[:, k - 1]) / (k + 1)
    return out


def basis_values(x: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """V[j, k] = ∫₋₁^{xⱼ} P_{k+1} and D[j, k] = P_{k+1}(xⱼ) for k = 0..degree−1, ``[len(x), degree]``."""
    p = legendre_table(x, degree + 1)
    k = np.arange(1, degree + 1)
    return (p[:, 2 : degree + 2] - p[:, 0:degree]) / (2 * k + 1), p[:, 1 : degree + 1]


@functools.lru_cache(maxsize=32)
def _quadrature(degree: int) -> tuple[np.ndarray, ...]:
    nodes, weights = np.polynomial.legendre.leggauss(2 * degree + 8)
    values, derivs = basis_values(nodes, degree)
    return nodes, weights, values, derivs


@dataclass
class Quadrature:
    """Gauss–Legendre nodes x ``[M]``, weights w ``[M]`` and basis V, D ``[M, K]`` as tensors."""

    x: Tensor
    w: Tensor
    V: Tensor
    D: Tensor

    @classmethod
    def make(cls, degree: int, like: Tensor) -> Quadrature:
        return cls(*(torch.as_tensor(a, dtype=like.dtype, device=like.device) for a in _quadrature(degree)))

    def __post_init__(self) -> None:
        # node weights of the Hessian's blocks [M, K, K]: 2wDD, 2wDV, wVV
        w = self.w[:, None, None]
        self.wdd = 2 * w * self.D[:, :, None] * self.D[:, None, :]
        self.wdv = 2 * w * self.D[:, :, None] * self.V[:, None, :]
        self.wvv = w * self.V[:, :, None] * self.V[:, None, :]


def metric_terms(
    metric: MetricFn, phi: Tensor, v: Tensor, state: dict[str, bool] | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """At points φ ``[N, d]`` with velocities v ``[N, d]``: g ``[N, d, d]``, ∂ₘ(vᵀgv) ``[N, d]``,
    ∂ₘ∂ₙ(vᵀgv) ``[N, d, d]`` and Qₘₙ = ∂ₙ(g v)ₘ ``[N, d, d]`` (v held fixed), all detached.

    By autodiff; by central differences where autodiff gives non-finite values (remembered in
    ``state["fd"]`` so that later calls skip the autodiff attempt)."""
    d = phi.shape[-1]
    if state is not None and state.get("fd"):
        with torch.no_grad():
            g0 = metric(phi.detach())
        return _metric_terms_fd(metric, phi.detach(), v.detach(), g0)
    x = phi.detach().requires_grad_(True)
    v = v.detach()
    with torch.enable_grad():
        g = metric(x)
        gv = (g @ v.unsqueeze(-1)).squeeze(-1)
        s = (gv * v).sum(-1)
        (s1,) = torch.autograd.grad(s.sum(), x, create_graph=True, allow_unused=True, materialize_grads=True)
        rows2, rows_q = [], []
        for m in range(d):
            rows2.append(_grad(s1[:, m], x))
            rows_q.append(_grad(gv[:, m], x))
    out = g.detach(), s1.detach(), torch.stack(rows2, -2), torch.stack(rows_q, -2)
    if all(bool(torch.isfinite(t).all()) for t in out) or not bool(torch.isfinite(out[0]).all()):
        return out
    if state is not None:
        state["fd"] = True
    return _metric_terms_fd(metric, phi.detach(), v, out[0])


def _metric_terms_fd(metric: MetricFn, phi: Tensor, v: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`metric_terms` by central differences, for metrics whose autodiff derivatives are not finite
    (e.g. a Fisher by quadrature whose integrand's θ-derivatives overflow at the support's edge).

    Step h = ε^¼: O(h²) truncation in the first derivatives. They only move the Newton iterates, not
    the length, which is computed from g itself and is stationary at the geodesic, so the error of the
    distance is second order in theirs.
    """
    d = phi.shape[-1]
    h = torch.finfo(phi.dtype).eps ** 0.25
    eye = torch.eye(d, dtype=phi.dtype, device=phi.device) * h

    def gv_s(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            gv = (metric(x) @ v.unsqueeze(-1)).squeeze(-1)
        return gv, (gv * v).sum(-1)

    s0 = (g @ v.unsqueeze(-1)).squeeze(-1).mul(v).sum(-1)
    plus = [gv_s(phi + eye[n]) for n in range(d)]
    minus = [gv_s(phi - eye[n]) for n in range(d)]
    q = torch.stack([(plus[n][0] - minus[n][0]) / (2 * h) for n in range(d)], -1)  # [N, m, n]
    s1 = torch.stack([(plus[n][1] - minus[n][1]) / (2 * h) for n in range(d)], -1)
    s2 = phi.new_zeros(phi.shape[0], d, d)
    for m in range(d):
        s2[:, m, m] = (plus[m][1] - 2 * s0 + minus[m][1]) / h**2
        for n in range(m + 1, d):
            corners = [gv_s(phi + a * eye[m] + b * eye[n])[1] for a, b in ((1, 1), (1, -1), (-1, 1), (-1, -1))]
            s2[:, m, n] = s2[:, n, m] = (corners[0] - corners[1] - corners[2] + corners[3]) / (4 * h * h)
    return g, s1, s2, q


def _grad(y: Tensor, x: Tensor) -> Tensor:
    if not y.requires_grad:
        return torch.zeros_like(x)
    (out,) = torch.autograd.grad(y.sum(), x, retain_graph=True, allow_unused=True, materialize_grads=True)
    return out.detach()


@dataclass
class GeodesicSolution:
    """Solved geodesics between φ₁ and φ₂ ``[B, d]``: Legendre coefficients ``[B, K, d]``, lengths
    ``[B]`` and an error estimate ``[B]`` (the change of length at the last doubling of K)."""

    phi1: Tensor
    phi2: Tensor
    coeffs: Tensor
    length: Tensor
    error: Tensor

    @property
    def degree(self) -> int:
        return self.coeffs.shape[-2]

    def _basis(self, t: Tensor) -> tuple[Tensor, Tensor]:
        x = (2 * t - 1).detach().cpu().double().numpy()
        values, derivs = basis_values(x, self.degree)
        like = self.coeffs
        return (
            torch.as_tensor(values, dtype=like.dtype, device=like.device),
            torch.as_tensor(derivs, dtype=like.dtype, device=like.device),
        )

    def position(self, t: Tensor) -> Tensor:
        """φ(t) for t ∈ [0, 1] ``[T]`` → ``[T, B, d]`` (the geodesic runs at constant speed in t)."""
        values, _ = self._basis(t)
        t = t.to(self.coeffs)
        delta = self.phi2 - self.phi1
        line = self.phi1 + t[:, None, None] * delta
        return line + torch.einsum("tk,bkd->tbd", values, self.coeffs)

    def velocity(self, t: Tensor) -> Tensor:
        """dφ/dt at t ∈ [0, 1] ``[T]`` → ``[T, B, d]``."""
        _, derivs = self._basis(t)
        return (self.phi2 - self.phi1) + 2 * torch.einsum("tk,bkd->tbd", derivs, self.coeffs)


def _path(quad: Quadrature, phi1: Tensor, delta: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    phi = phi1[:, None, :] + ((quad.x + 1) / 2)[None, :, None] * delta[:, None, :]
    phi = phi + torch.einsum("jk,bkd->bjd", quad.V, a)
    v = delta[:, None, :] / 2 + torch.einsum("jk,bkd->bjd", quad.D, a)
    return phi, v


def _speed2(metric: MetricFn, phi: Tensor, v: Tensor) -> Tensor:
    """vᵀ g(φ) v at every node, ``[B, M]``."""
    b, m, d = phi.shape
    with torch.no_grad():
        g = metric(phi.reshape(b * m, d)).reshape(b, m, d, d)
    return torch.einsum("bji,bjik,bjk->bj", v, g, v)


def _energy(metric: MetricFn, quad: Quadrature, phi1: Tensor, delta: Tensor, a: Tensor) -> Tensor:
    phi, v = _path(quad, phi1, delta, a)
    return (quad.w * _speed2(metric, phi, v)).sum(-1)


def _newton(
    metric: MetricFn,
    phi1: Tensor,
    phi2: Tensor,
    a: Tensor,
    quad: Quadrature,
    max_iter: int,
    tol: float,
    state: dict[str, bool] | None = None,
) -> Tensor:
    """Minimise the discrete energy over the coefficients a ``[B, K, d]`` (in place on a copy)."""
    a = a.clone()
    delta = phi2 - phi1
    b_all, k, d = a.shape
    p = k * d
    active = torch.ones(b_all, dtype=torch.bool, device=a.device)
    w, dd, vv = quad.w, quad.D, quad.V
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(-1)
        if idx.numel() == 0:
            return a
        p1, dl, ai = phi1[idx], delta[idx], a[idx]
        b = idx.numel()
        phi, v = _path(quad, p1, dl, ai)
        m = phi.shape[1]
        g, s1, s2, q = metric_terms(metric, phi.reshape(b * m, d), v.reshape(b * m, d), state)
        g, s1, s2, q = g.reshape(b, m, d, d), s1.reshape(b, m, d), s2.reshape(b, m, d, d), q.reshape(b, m, d, d)
        gv = (g @ v.unsqueeze(-1)).squeeze(-1)
        energy = torch.einsum("j,bjd,bjd->b", w, gv, v)
        wd, wv = w[:, None] * dd, w[:, None] * vv
        grad = 2 * torch.einsum("jk,bjm->bkm", wd, gv) + torch.einsum("jk,bjm->bkm", wv, s1)
        # two-operand contractions over the nodes j (plain matrix products, no [b, j, k, l, …] intermediate)
        cross = torch.einsum("jkl,bjmn->bkmln", quad.wdv, q)
        hess = (
            torch.einsum("jkl,bjmn->bkmln", quad.wdd, g)
            + cross
            + cross.permute(0, 3, 4, 1, 2)
            + torch.einsum("jkl,bjmn->bkmln", quad.wvv, s2)
        ).reshape(b, p, p)
        grad = grad.reshape(b, p)
        hess = 0.5 * (hess + hess.transpose(-1, -2))
        step = _newton_step(hess, grad)
        slope = (grad * step).sum(-1)
        finite = torch.isfinite(slope)
        small = finite & (-slope <= tol * energy)  # at the minimum: take the last full step
        alpha = torch.ones(b, dtype=a.dtype, device=a.device)
        accepted = small | ~finite
        new = torch.where(small[:, None, None], ai + step.reshape(b, k, d), ai)
        for _ in range(40):
            pending = (~accepted).nonzero().squeeze(-1)
            if pending.numel() == 0:
                break
            trial = ai[pending] + alpha[pending, None, None] * step[pending].reshape(-1, k, d)
            e_new = _energy(metric, quad, p1[pending], dl[pending], trial)
            ok = torch.isfinite(e_new) & (e_new <= energy[pending] + 1e-4 * alpha[pending] * slope[pending])
            new[pending[ok]] = trial[ok]
            accepted[pending[ok]] = True
            alpha[pending[~ok]] *= 0.5
        # done: decrement below tol, no decrease possible (at the minimum to rounding), or a full
        # step at a decrement ≤ 1e-6·E (Newton's quadratic convergence puts the next one below tol)
        finished = small | ~finite | ~accepted | (accepted & (alpha == 1) & (-slope <= 1e-6 * energy))
        a[idx] = new
        active[idx[finished]] = False
    if bool(active.any()):
        raise ConvergenceError(
            f"geodesic solver: Newton's method did not converge in {max_iter} iterations for "
            f"{int(active.sum())} of {b_all} pairs; try a larger max_iter or closer end points"
        )
    return a


def _newton_step(hess: Tensor, grad: Tensor) -> Tensor:
    """−H⁻¹∇E, with H shifted to positive definite where it is not (far from the geodesic)."""
    chol, info = torch.linalg.cholesky_ex(hess)
    bad = info != 0
    if bool(bad.any()):
        hb = hess[bad]
        low = torch.linalg.eigvalsh(hb)[:, 0]
        scale = hb.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
        shift = (-low).clamp(min=0) * 2 + 1e-8 * scale + torch.finfo(hess.dtype).tiny
        eye = torch.eye(hess.shape[-1], dtype=hess.dtype, device=hess.device)
        chol[bad] = torch.linalg.cholesky(hb + shift[:, None, None] * eye)
    return -torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)


def _length(metric: MetricFn, quad: Quadrature, phi1: Tensor, delta: Tensor, a: Tensor) -> Tensor:
    phi, v = _path(quad, phi1, delta, a)
    return (quad.w * _speed2(metric, phi, v).clamp(min=0).sqrt()).sum(-1)


def solve_geodesic(
    metric: MetricFn,
    phi1: Tensor,
    phi2: Tensor,
    *,
    degree: int = 8,
    max_degree: int = 64,
    rtol: float = 1e-10,
    max_iter: int = 50,
) -> GeodesicSolution:
    """Geodesics of ``metric`` between φ₁ and φ₂ ``[B, d]`` (unconstrained coordinates).

    Solves at Legendre degree K = ``degree``, then 2K, 4K, … (warm-started) until two successive
    lengths agree to ``rtol`` relative, or raises :class:`ConvergenceError` beyond ``max_degree``.
    """
    b, d = phi1.shape
    k = degree
    quad = Quadrature.make(k, phi1)
    state: dict[str, bool] = {}
    a = _newton(metric, phi1, phi2, phi1.new_zeros(b, k, d), quad, max_iter, 1e-12, state)
    length = _length(metric, quad, phi1, phi2 - phi1, a)
    error = torch.full_like(length, float("inf"))
    todo = torch.arange(b, device=phi1.device)
    while todo.numel():
        if 2 * k > max_degree:
            worst = float((error[todo] / length[todo].clamp(min=1e-300)).max())
            raise ConvergenceError(
                f"geodesic solver: the length did not settle to rtol={rtol:g} by degree {k} "
                f"(relative change {worst:.2g} on {todo.numel()} pairs); pass a larger max_degree"
            )
        k *= 2
        quad = Quadrature.make(k, phi1)
        a = torch.cat([a, a.new_zeros(b, k - a.shape[1], d)], 1)
        p1, p2 = phi1[todo], phi2[todo]
        a_new = _newton(metric, p1, p2, a[todo], quad, max_iter, 1e-12, state)
        new_length = _length(metric, quad, p1, p2 - p1, a_new)
        a[todo] = a_new
        error[todo] = (new_length - length[todo]).abs()
        length[todo] = new_length
        todo = todo[error[todo] > rtol * new_length]
    return GeodesicSolution(phi1, phi2, a, length, error)
