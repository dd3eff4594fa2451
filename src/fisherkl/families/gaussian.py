"""Multivariate normal families: full covariance (Cholesky), diagonal, and low-rank plus diagonal.

Fisher information of N(μ(θ), Σ(θ)) (Mardia & Marshall 1984):

    I_ij = ∂ᵢμᵀ Σ⁻¹ ∂ⱼμ + ½ tr(Σ⁻¹ ∂ᵢΣ Σ⁻¹ ∂ⱼΣ).

For the Cholesky parametrisation Σ = LLᵀ it has the closed form (M = L⁻¹, P = Σ⁻¹ = MᵀM)

    I[(a,b),(c,d)] = M[d,a]·M[b,c] + δ_bd·P[a,c]     (a ≥ b, c ≥ d),

computed without any d² × d² autodiff (k = 50: 1,325 parameters in milliseconds).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, LowRankMultivariateNormal, MultivariateNormal, Normal

from ..constraints import integer_in, positive, real
from ..model import Param
from .base import Family, Fixed, register
from .closed_divergences import (
    gaussian_kl,
    gaussian_log_chi2,
    gaussian_moment_finite,
    normal_kl,
    normal_log_chi2,
    square_ratio_minus_one,
)

dimension = integer_in(1, 1024)  # mvn: k + k(k + 1)/2 parameters


def _tril_indices(k: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Row-major lower-triangular (row, column) indices of a k × k matrix."""
    rows, cols = torch.tril_indices(k, k, device=device)
    return rows, cols


def gaussian_fisher(precision: Tensor, d_mean: Tensor, d_cov: Tensor) -> Tensor:
    """I = ∂μᵀ P ∂μ + ½ tr(P ∂ᵢΣ P ∂ⱼΣ) from P ``[..., k, k]``, ∂μ ``[..., k, m]``, ∂Σ ``[..., m, k, k]``."""
    mean_part = d_mean.transpose(-1, -2) @ precision @ d_mean
    b = precision.unsqueeze(-3) @ d_cov  # [..., m, k, k]
    cov_part = 0.5 * torch.einsum("...iab,...jba->...ij", b, b)
    return mean_part + cov_part


@register
class MVNFamily(Family):
    """N(loc, LLᵀ) in k dimensions; θ = (loc[k], the lower-triangular L row-major, diagonal > 0)."""

    name = "mvn"
    torch_name = "MultivariateNormal"
    description = "MultivariateNormal(loc, scale_tril) in k dimensions; θ = loc then L row-major"
    fixed = {"k": Fixed(dimension, 2, "dimension k")}

    @property
    def k(self) -> int:
        return int(self.fixed_values["k"])

    @property
    def typical_theta(self) -> tuple[float, ...]:  # type: ignore[override]
        k = self.k
        loc = [0.1 * i for i in range(k)]
        rows, cols = _tril_indices(k)
        tril = [1.0 + 0.2 * int(r) if r == c else 0.3 / (1 + int(r) - int(c)) for r, c in zip(rows, cols)]
        return tuple(loc + tril)

    def param_spec(self) -> list[Param]:
        rows, cols = _tril_indices(self.k)
        tril = [Param(f"scale_tril[{int(r)},{int(c)}]", positive if r == c else real) for r, c in zip(rows, cols)]
        return [Param("loc", real, self.k), *tril]

    def split(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """θ → (loc ``[..., k]``, L ``[..., k, k]``)."""
        k = self.k
        loc = theta[..., :k]
        rows, cols = _tril_indices(k, theta.device)
        tril = theta.new_zeros((*theta.shape[:-1], k, k))
        tril[..., rows, cols] = theta[..., k:]
        return loc, tril

    def make(self, theta: Tensor) -> Distribution:
        loc, tril = self.split(theta)
        return MultivariateNormal(loc, scale_tril=tril, validate_args=False)

    def _pieces(self, theta_p: Tensor, theta_q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(L_p, L_q, Σq − Σp, μq − μp), with ΣΔ = D L_qᵀ + L_p Dᵀ from D = L_q − L_p (no cancellation)."""
        mean_p, l_p = self.split(theta_p)
        mean_q, l_q = self.split(theta_q)
        _, d = self.split(theta_q - theta_p)
        return l_p, l_q, d @ l_q.mT + l_p @ d.mT, mean_q - mean_p

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return gaussian_kl(*self._pieces(theta_p, theta_q))

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        l_p, _, dcov, dmean = self._pieces(theta_p, theta_q)
        return torch.expm1(gaussian_log_chi2(l_p, dcov, dmean))

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        l_p, _, dcov, _ = self._pieces(theta_p, theta_q)
        return gaussian_moment_finite(l_p, dcov, m)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        k = self.k
        _, tril = self.split(theta)
        eye = torch.eye(k, dtype=theta.dtype, device=theta.device).expand_as(tril)
        m = torch.linalg.solve_triangular(tril, eye, upper=False)  # L⁻¹
        p = m.transpose(-1, -2) @ m
        a, b = _tril_indices(k, theta.device)
        # I[(a,b),(c,d)] = M[d,a] M[b,c] + δ_bd P[a,c]
        first = m[..., b[None, :], a[:, None]] * m[..., b[:, None], a[None, :]]
        second = (b[:, None] == b[None, :]).to(theta.dtype) * p[..., a[:, None], a[None, :]]
        n = theta.shape[-1]
        out = theta.new_zeros((*theta.shape[:-1], n, n))
        out[..., :k, :k] = p
        out[..., k:, k:] = first + second
        return out


@register
class MVNDiagFamily(Family):
    """N(loc, diag(scale²)) as ``Independent(Normal(loc, scale), 1)``; θ = (loc[k], scale[k])."""

    name = "mvn_diag"
    torch_name = "Independent(Normal)"
    description = "multivariate normal with diagonal covariance; θ = loc[k], scale[k]"
    fixed = {"k": Fixed(dimension, 2, "dimension k")}

    @property
    def typical_theta(self) -> tuple[float, ...]:  # type: ignore[override]
        k = int(self.fixed_values["k"])
        return tuple([0.1 * i for i in range(k)] + [1.0 + 0.5 * i for i in range(k)])

    def param_spec(self) -> list[Param]:
        k = int(self.fixed_values["k"])
        return [Param("loc", real, k), Param("scale", positive, k)]

    def make(self, theta: Tensor) -> Distribution:
        k = int(self.fixed_values["k"])
        return Independent(Normal(theta[..., :k], theta[..., k:], validate_args=False), 1, validate_args=False)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        k = int(self.fixed_values["k"])
        inv = 1 / theta[..., k:].square()
        return torch.diag_embed(torch.cat([inv, 2 * inv], -1))

    def _columns(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        k = int(self.fixed_values["k"])
        return theta[..., :k], theta[..., k:]

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return normal_kl(*self._columns(theta_p), *self._columns(theta_q)).sum(-1)

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return torch.expm1(normal_log_chi2(*self._columns(theta_p), *self._columns(theta_q)).sum(-1))

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # coordinatewise: m/σq² > (m − 1)/σp² ⟺ (σq/σp)² − 1 < 1/(m − 1)
        eps = square_ratio_minus_one(self._columns(theta_q)[1], self._columns(theta_p)[1])
        return (eps < 1 / (m - 1)).all(-1)


@register
class LowRankMVNFamily(Family):
    """N(loc, WWᵀ + diag(D)) with W ``[k, rank]``; θ = (loc[k], W row-major, D[k] > 0)."""

    name = "lowrank_mvn"
    torch_name = "LowRankMultivariateNormal"
    description = "normal with covariance W Wᵀ + diag(D); θ = loc[k], cov_factor[k×rank], cov_diag[k]"
    fixed = {"k": Fixed(dimension, 3, "dimension k"), "rank": Fixed(integer_in(1, 1024), 1, "rank of W")}

    @property
    def k(self) -> int:
        return int(self.fixed_values["k"])

    @property
    def rank(self) -> int:
        return int(self.fixed_values["rank"])

    @property
    def typical_theta(self) -> tuple[float, ...]:  # type: ignore[override]
        k, r = self.k, self.rank
        w = [0.5 / (1 + i + j) for i in range(k) for j in range(r)]
        return tuple([0.1 * i for i in range(k)] + w + [1.0 + 0.25 * i for i in range(k)])

    def param_spec(self) -> list[Param]:
        k, r = self.k, self.rank
        w = [Param(f"cov_factor[{i},{j}]", real) for i in range(k) for j in range(r)]
        return [Param("loc", real, k), *w, Param("cov_diag", positive, k)]

    def split(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k, r = self.k, self.rank
        loc = theta[..., :k]
        w = theta[..., k : k + k * r].reshape((*theta.shape[:-1], k, r))
        return loc, w, theta[..., k + k * r :]

    def make(self, theta: Tensor) -> Distribution:
        loc, w, d = self.split(theta)
        return LowRankMultivariateNormal(loc, w, d, validate_args=False)

    def _pieces(self, theta_p: Tensor, theta_q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(L_p, L_q, Σq − Σp, μq − μp) with ΣΔ = ΔW W_qᵀ + W_p ΔWᵀ + diag(ΔD) (no cancellation)."""
        mean_p, w_p, d_p = self.split(theta_p)
        mean_q, w_q, d_q = self.split(theta_q)
        _, dw, dd = self.split(theta_q - theta_p)
        cov_p = w_p @ w_p.mT + torch.diag_embed(d_p)
        cov_q = w_q @ w_q.mT + torch.diag_embed(d_q)
        dcov = dw @ w_q.mT + w_p @ dw.mT + torch.diag_embed(dd)
        return torch.linalg.cholesky(cov_p), torch.linalg.cholesky(cov_q), dcov, mean_q - mean_p

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        return gaussian_kl(*self._pieces(theta_p, theta_q))

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        l_p, _, dcov, dmean = self._pieces(theta_p, theta_q)
        return torch.expm1(gaussian_log_chi2(l_p, dcov, dmean))

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        l_p, _, dcov, _ = self._pieces(theta_p, theta_q)
        return gaussian_moment_finite(l_p, dcov, m)

    def fisher_formula(self, theta: Tensor) -> Tensor:
        k, r = self.k, self.rank
        _, w, d = self.split(theta)
        cov = w @ w.transpose(-1, -2) + torch.diag_embed(d)
        precision = torch.cholesky_inverse(torch.linalg.cholesky(cov))
        n = theta.shape[-1]
        batch = theta.shape[:-1]
        eye = torch.eye(k, dtype=theta.dtype, device=theta.device)
        d_mean = theta.new_zeros((*batch, k, n))
        d_mean[..., :, :k] = eye
        d_cov = theta.new_zeros((*batch, n, k, k))
        for a in range(k):
            for b in range(r):
                i = k + a * r + b
                col = w[..., :, b]  # ∂Σ/∂W_ab = e_a w_bᵀ + w_b e_aᵀ
                d_cov[..., i, a, :] += col
                d_cov[..., i, :, a] += col
            d_cov[..., k + k * r + a, a, a] = 1.0
        return gaussian_fisher(precision, d_mean, d_cov)
