"""Closed-form KL and Pearson χ² written without cancellation.

Each formula is a sum of terms that are ≥ 0 and vanish with the perturbation, computed from the
differences of the parameters (never from the difference of two large, nearly equal numbers):
so KL ≥ 0 and χ² ≥ 0 everywhere, both are exactly 0 at p = q, and they keep their relative
accuracy down to relative perturbations of 1e-15 and at extreme parameters (checked against
mpmath at 50+ digits in tests/test_divergence_exact.py). The kernels are in :mod:`fisherkl.special`:
g(x) = x − log(1 + x), e^y − 1 − y, log Γ(1 + r) + γr, a·g(d/a), Binet's μ and 1-D Bregman
remainders by Gauss–Legendre.

χ² of an exponential family is exp(L) − 1 with L = A(2η_q − η_p) − 2A(η_q) + A(η_p); L equals
KL[q ‖ p] + KL[q ‖ r] where r has natural parameter 2η_q − η_p (the reflection of p through q),
which is how it is computed where η is affine in θ (Gamma, Beta, Dirichlet, continuous Bernoulli).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..special import (
    binet_bregman,
    expm1mx,
    lgamma1p_excess,
    log1pmx,
    poisson_kl,
    taylor_remainder,
    xlog1px_minus_x,
)

INF = float("inf")


def _inf_where(ok: Tensor, value: Tensor) -> Tensor:
    return torch.where(ok, value, torch.full_like(value, INF))


# --- one-parameter kernels -------------------------------------------------------------------------
def bernoulli_kl(p: Tensor, q: Tensor) -> Tensor:
    """KL[Bern(p) ‖ Bern(q)] = p·g((q − p)/p) + (1 − p)·g((p − q)/(1 − p))."""
    d = q - p
    return poisson_kl(p, d) + poisson_kl(1 - p, -d)


def scale_kl(ratio_minus_one: Tensor) -> Tensor:
    """r − 1 − log r = g(r − 1): the KL of scale families (exponential, Pareto shape, …)."""
    return log1pmx(ratio_minus_one)


def square_ratio_minus_one(num: Tensor, den: Tensor) -> Tensor:
    """(num/den)² − 1 = (num − den)(num + den)/den², exact 0 at num = den."""
    return (num - den) * (num + den) / den.square()


def reciprocal_square_chi2(eps: Tensor, power: float) -> Tensor:
    """−power·log(1 − ε²): log(1 + χ²) of scale families; +inf where |ε| ≥ 1."""
    ok = eps.abs() < 1
    e = torch.where(ok, eps, torch.zeros_like(eps))
    return _inf_where(ok, -power * torch.log1p(-e.square()))


def weibull_type_kl(rho: Tensor, shift: Tensor) -> Tensor:
    """−log r − s − γ(1 − r) + exp(s + log Γ(1 + r)) − 1 with r = 1 + ρ (Weibull, Gumbel)

    = (e^y − 1 − y) + S(ρ), y = s + log(1 + ρ) − γρ + S(ρ), S(ρ) = log Γ(1 + ρ) + γρ ≥ 0.
    """
    s_rho = lgamma1p_excess(rho)
    y = shift + torch.log1p(rho) - 0.5772156649015329 * rho + s_rho
    return expm1mx(y) + s_rho


# --- Gamma and Dirichlet: Stirling split of log Γ ---------------------------------------------------
def lgamma_bregman(a: Tensor, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """log Γ(a + d) − log Γ(a) − d·ψ(a) = a·h(x) + ½·g(x) + D_μ(a, a + d), x = d/a.

    Returned as its three nonnegative parts (h(x) = (1 + x)log(1 + x) − x, μ Binet's function).
    """
    x = d / a
    return a * xlog1px_minus_x(x), 0.5 * log1pmx(x), binet_bregman(a, d)


def gamma_kl_delta(ap: Tensor, bp: Tensor, da: Tensor, db: Tensor) -> Tensor:
    """KL[Γ(ap, bp) ‖ Γ(ap + da, bp + db)] (shape, rate).

    = ½·g(da/ap) + D_μ(ap, aq) + aq·g(y),  y = (ap·db − bp·da)/(aq·bp):
    the KL to the Gamma with shape aq and the same mean as p, plus the move of the rate from
    aq·bp/ap to bq (a scale KL).
    """
    aq = ap + da
    y = (db / bp - da / ap) * (ap / aq)  # (ap·db − bp·da)/(aq·bp) without overflowing ap·db, aq·bp
    return 0.5 * log1pmx(da / ap) + binet_bregman(ap, da) + aq * log1pmx(y)


def gamma_kl(ap: Tensor, bp: Tensor, aq: Tensor, bq: Tensor) -> Tensor:
    """KL[Gamma(ap, bp) ‖ Gamma(aq, bq)] (shape–rate)."""
    return gamma_kl_delta(ap, bp, aq - ap, bq - bp)


def gamma_chi2(ap: Tensor, bp: Tensor, aq: Tensor, bq: Tensor) -> Tensor:
    """χ² = exp(KL[q ‖ p] + KL[q ‖ r]) − 1, r = (2aq − ap, 2bq − bp); +inf where r is not a Gamma."""
    da, db = aq - ap, bq - bp
    ok = (aq + da > 0) & (bq + db > 0)
    das, dbs = torch.where(ok, da, torch.zeros_like(da)), torch.where(ok, db, torch.zeros_like(db))
    log_ratio = gamma_kl_delta(aq, bq, -da, -db) + gamma_kl_delta(aq, bq, das, dbs)
    return _inf_where(ok, torch.expm1(log_ratio))


def dirichlet_kl_delta(a: Tensor, d: Tensor) -> Tensor:
    """KL[Dir(a) ‖ Dir(a + d)] over the last dimension (Beta is k = 2).

    = Σᵢ D_lnΓ(aᵢ, bᵢ) − D_lnΓ(S, S + Σd), split by :func:`lgamma_bregman`: the a·h parts combine
    into B·Σ âᵢ h(zᵢ) (a KL between the normalised vectors, zᵢ = (dᵢS − aᵢΣd)/(aᵢB)); the ½g and D_μ
    parts are small corrections of relative size 1/a.
    """
    s = a.sum(-1)
    ds = d.sum(-1)
    big_b = s + ds
    # zᵢ = (dᵢS − aᵢΣd)/(aᵢB), written without the products aᵢB, dᵢS (which overflow at a ~ 1e160)
    z = (d / a - (ds / s).unsqueeze(-1)) * (s / big_b).unsqueeze(-1)
    first = big_b * ((a / s.unsqueeze(-1)) * xlog1px_minus_x(z)).sum(-1)
    second = 0.5 * (log1pmx(d / a).sum(-1) - log1pmx(ds / s))
    third = binet_bregman(a, d).sum(-1) - binet_bregman(s, ds)
    return first + second + third


def dirichlet_kl(ap: Tensor, aq: Tensor) -> Tensor:
    """KL[Dir(ap) ‖ Dir(aq)] over the last dimension."""
    return dirichlet_kl_delta(ap, aq - ap)


def dirichlet_chi2(ap: Tensor, aq: Tensor) -> Tensor:
    """χ² = exp(KL[q ‖ p] + KL[q ‖ r]) − 1, r = 2aq − ap; +inf where r has an entry ≤ 0."""
    d = aq - ap
    ok = (aq + d > 0).all(-1)
    ds = torch.where(ok.unsqueeze(-1), d, torch.zeros_like(d))
    log_ratio = dirichlet_kl_delta(aq, -d) + dirichlet_kl_delta(aq, ds)
    return _inf_where(ok, torch.expm1(log_ratio))


# --- continuous Bernoulli: Bregman divergence of A(η) = log((e^η − 1)/η) ----------------------------
def cb_kl_delta(eta: Tensor, d: Tensor, log_partition, mean, second) -> Tensor:
    """A(η + d) − A(η) − d·A′(η): by Gauss–Legendre on A″ (analytic within 2π of the real axis)
    for |d| ≤ 32 (16 pieces), directly beyond."""
    near = d.abs() <= 32
    dn = torch.where(near, d, torch.zeros_like(d))
    close = taylor_remainder(second, eta, dn, pieces=16)
    far = log_partition(eta + d) - log_partition(eta) - d * mean(eta)
    return torch.where(near, close, far)


# --- von Mises: Bregman divergence of log I₀ --------------------------------------------------------
def log_i0_bregman(kp: Tensor, d: Tensor, log_i0e, ratio_complement, ratio_derivative) -> Tensor:
    """log I₀(κp + d) − log I₀(κp) − d·A(κp): Gauss–Legendre on A′ for |d| ≤ max(κp, 2)/2."""
    near = d.abs() <= 0.5 * torch.clamp(kp, min=2.0)
    dn = torch.where(near, d, torch.zeros_like(d))
    close = taylor_remainder(ratio_derivative, kp, dn)
    kq = torch.where(near, kp, kp + d)
    far = log_i0e(kq) - log_i0e(kp) + (kq - kp) * ratio_complement(kp)
    return torch.where(near, close, far)


# --- Gaussians, whitened by p: E = L_p⁻¹ (Σ_q − Σ_p) L_p⁻ᵀ ----------------------------------------------
_SERIES_NORM = 0.1  # ‖E‖_F below this: power series in E (20 terms reach 1e-18 relative)


def _eye_like(e: Tensor) -> Tensor:
    return torch.eye(e.shape[-1], dtype=e.dtype, device=e.device).expand_as(e)


def _trace(m: Tensor) -> Tensor:
    return m.diagonal(dim1=-2, dim2=-1).sum(-1)


def whiten(l_p: Tensor, dcov: Tensor) -> Tensor:
    """E = L_p⁻¹ ΔΣ L_p⁻ᵀ (symmetric)."""
    x = torch.linalg.solve_triangular(l_p, dcov, upper=False)
    e = torch.linalg.solve_triangular(l_p, x.mT, upper=False)
    return 0.5 * (e + e.mT)


def _small(e: Tensor) -> Tensor:
    return torch.linalg.matrix_norm(e) < _SERIES_NORM


def _logdet_chol(c: Tensor) -> Tensor:
    return 2 * torch.log(c.diagonal(dim1=-2, dim2=-1)).sum(-1)


def gaussian_kl(l_p: Tensor, l_q: Tensor, dcov: Tensor, dmean: Tensor) -> Tensor:
    """KL[N(μp, Σp) ‖ N(μq, Σq)] = ½‖L_q⁻¹(μq − μp)‖² + ½ Σᵢ h(εᵢ), εᵢ the eigenvalues of E.

    h(ε) = log(1 + ε) − ε/(1 + ε) = Σ_{n≥2} (−1)ⁿ (n−1)/n εⁿ ≥ 0: the series in tr(Eⁿ) for small E,
    else ½[log det(I + E) − tr((I + E)⁻¹E)]. ``dcov`` = Σq − Σp computed from parameter differences.
    """
    z = torch.linalg.solve_triangular(l_q, dmean.unsqueeze(-1), upper=False).squeeze(-1)
    mean_part = 0.5 * z.square().sum(-1)
    e = whiten(l_p, dcov)
    small = _small(e)
    eye = _eye_like(e)
    es = torch.where(small[..., None, None], e, torch.zeros_like(e))
    power, series = es, torch.zeros_like(mean_part)
    for n in range(2, 21):
        power = power @ es
        series = series + ((-1) ** n * (n - 1) / n) * _trace(power)
    el = torch.where(small[..., None, None], eye, e)
    c = torch.linalg.cholesky(eye + el)
    direct = _logdet_chol(c) - _trace(torch.cholesky_solve(el, c))
    return mean_part + 0.5 * torch.where(small, series, direct)


def gaussian_log_chi2(l_p: Tensor, dcov: Tensor, dmean: Tensor) -> Tensor:
    """log(1 + χ²) = −½ log det(I − E²) + zᵀ(I − E)⁻¹z, z = L_p⁻¹(μq − μp); +inf unless I − E ≻ 0.

    (Finite iff 2Σp − Σq = L_p(I − E)L_pᵀ is positive definite, i.e. 2Σq⁻¹ − Σp⁻¹ is.) The log-det
    is ½ Σ_m tr(E^{2m})/m for small E: every term ≥ 0.
    """
    e = whiten(l_p, dcov)
    eye = _eye_like(e)
    c_minus, info = torch.linalg.cholesky_ex(eye - e)
    ok = info == 0
    e_ok = torch.where(ok[..., None, None], e, torch.zeros_like(e))
    c_minus = torch.where(ok[..., None, None], c_minus, eye)
    small = _small(e_ok)
    es = torch.where(small[..., None, None], e_ok, torch.zeros_like(e))
    sq = es @ es
    power, series = eye, torch.zeros(e.shape[:-2], dtype=e.dtype, device=e.device)
    for m in range(1, 11):
        power = power @ sq
        series = series + _trace(power) / m
    el = torch.where(small[..., None, None], torch.zeros_like(e), e_ok)
    c_plus = torch.linalg.cholesky(eye + el)
    c_min2 = torch.linalg.cholesky(eye - el)
    direct = -(_logdet_chol(c_plus) + _logdet_chol(c_min2))
    logdet_part = 0.5 * torch.where(small, series, direct)
    z = torch.linalg.solve_triangular(l_p, dmean.unsqueeze(-1), upper=False)
    mean_part = (z * torch.cholesky_solve(z, c_minus)).sum((-2, -1))
    return _inf_where(ok, logdet_part + mean_part)


def gaussian_moment_finite(l_p: Tensor, dcov: Tensor, m: int) -> Tensor:
    """Whether E_p[(q/p)^m] < ∞: m Σq⁻¹ − (m − 1) Σp⁻¹ ≻ 0 ⟺ I − (m−1)/m·(I + E) ≻ 0."""
    e = whiten(l_p, dcov)
    eye = _eye_like(e)
    _, info = torch.linalg.cholesky_ex(eye - (m - 1) / m * (eye + e))
    return info == 0


def normal_kl(mp: Tensor, sp: Tensor, mq: Tensor, sq: Tensor) -> Tensor:
    """KL[N(mp, sp²) ‖ N(mq, sq²)] = (mp − mq)²/(2sq²) + ½·g((sp/sq)² − 1)."""
    return 0.5 * ((mp - mq) / sq).square() + 0.5 * log1pmx(square_ratio_minus_one(sp, sq))


def normal_log_chi2(mp: Tensor, sp: Tensor, mq: Tensor, sq: Tensor) -> Tensor:
    """log(1 + χ²) = −½ log(1 − ε²) + (mq − mp)²/(sp²(1 − ε)), ε = sq²/sp² − 1; +inf for ε ≥ 1."""
    eps = square_ratio_minus_one(sq, sp)
    ok = eps < 1
    den = torch.where(ok, sp.square() * (1 - eps), torch.ones_like(eps))
    return reciprocal_square_chi2(eps, 0.5) + _inf_where(ok, (mq - mp).square() / den)
