"""Gaussian data models d ~ N(μ(θ), C(θ)): the usual setting of a Fisher forecast.

    I_ij(θ) = ∂ᵢμᵀ C⁻¹ ∂ⱼμ + ½ tr(C⁻¹ ∂ᵢC C⁻¹ ∂ⱼC)        (Tegmark, Taylor & Heavens 1997)

computed from the derivatives of ``mean`` (and of ``cov`` when it depends on θ): d + 1 backward
passes, whatever the number m of data points. The KL is the closed Gaussian form. Neither
builds a ``torch.distributions.MultivariateNormal`` (whose constructor makes torch import sympy,
seconds on a cold start); the distribution is built only to sample or to evaluate log p.
Shapes: θ ``[..., d]``, μ ``[..., m]``, C ``[m, m]`` or ``[..., m, m]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal

from ..constraints import Constraint
from ..errors import ParameterError
from ..model import Model, as_parameter_tensor


def _tangents(fn: Callable[[Tensor], Tensor], theta: Tensor) -> tuple[Tensor, Tensor]:
    """fn(θ) and its derivatives along each coordinate, stacked last: ``[..., *out, d]``.

    Reverse mode twice (the vjp of a vjp is a jvp): one backward pass with a graph, then one per
    coordinate — d passes whatever the size of fn's output. (Forward-mode AD would be the textbook
    choice, but torch routes some of its rules through torch._dynamo: a 1–3 s import on first use.)
    """
    keep = theta.requires_grad
    with torch.enable_grad():
        leaf = theta if keep else theta.detach().requires_grad_(True)
        value = fn(leaf)
        if not value.requires_grad:  # fn does not depend on θ
            return value, torch.zeros((*value.shape, theta.shape[-1]), dtype=value.dtype, device=value.device)
        u = torch.zeros_like(value, requires_grad=True)
        # a scalar output: torch.autograd.grad with grad_outputs= imports sympy on first use (0.3–3 s)
        (g,) = torch.autograd.grad((value * u).sum(), leaf, create_graph=True)  # uᵀ ∂fn/∂θ, linear in u
        cols = []
        for i in range(theta.shape[-1]):
            (col,) = torch.autograd.grad(g[..., i].sum(), u, retain_graph=True, create_graph=keep, allow_unused=True)
            cols.append(torch.zeros_like(value) if col is None else col)
    out = torch.stack(cols, -1)
    return (value, out) if keep else (value.detach(), out.detach())


class GaussianModel(Model):
    """d ~ N(μ(θ), C(θ)) over m data points, with a closed-form Fisher and KL (see the module doc).

    ``mean``: θ ``[..., d]`` ↦ μ ``[..., m]``. ``cov``: a fixed ``[m, m]`` covariance, or a function
    θ ↦ C ``[..., m, m]``. Both must be built from torch operations (differentiable in θ).
    """

    def __init__(
        self,
        mean: Callable[[Tensor], Tensor],
        cov: Tensor | Callable[[Tensor], Tensor],
        dim: int,
        names: Sequence[str] | None = None,
        constraints: Sequence[Constraint] | None = None,
        *,
        name: str = "gaussian data",
    ) -> None:
        if not callable(mean):
            raise TypeError(f"gaussian_model: mean must be callable θ -> μ, got {type(mean).__name__}")
        self._mean = mean
        if callable(cov):
            self._cov_fn: Callable[[Tensor], Tensor] | None = cov
            self._cov: Tensor | None = None
        else:
            c = as_parameter_tensor(cov, "cov")
            if c.ndim != 2 or c.shape[0] != c.shape[1]:
                raise ParameterError(f"gaussian_model: cov must be a square matrix [m, m], got {tuple(c.shape)}")
            _, info = torch.linalg.cholesky_ex(c.to(torch.float64))
            if int(info) != 0:
                raise ParameterError("gaussian_model: cov is not positive definite")
            self._cov_fn, self._cov = None, c
        super().__init__(self._distribution, dim, names, constraints, name=name)

    def mean(self, theta: Tensor) -> Tensor:
        return self._mean(theta)

    def covariance(self, theta: Tensor) -> Tensor:
        if self._cov_fn is not None:
            return self._cov_fn(theta)
        assert self._cov is not None
        return self._cov.to(dtype=theta.dtype, device=theta.device)

    def _distribution(self, theta: Tensor) -> Distribution:
        return MultivariateNormal(self.mean(theta), covariance_matrix=self.covariance(theta))

    def _check_by_torch(self, theta: Tensor, what: str) -> None:
        """μ finite and C positive definite, checked without building the distribution."""
        mu = self.mean(theta.detach())
        if not bool(torch.isfinite(mu).all()):
            raise ParameterError(f"{self.name}: the mean is not finite at {what} = {theta.detach().tolist()}")
        if self._cov_fn is not None:
            _, info = torch.linalg.cholesky_ex(self.covariance(theta.detach()))
            if bool((info != 0).any()):
                raise ParameterError(f"{self.name}: the covariance is not positive definite at {what}")

    def closed_fisher(self, theta: Tensor) -> Tensor | None:
        _, dmu = _tangents(self.mean, theta)  # [..., m, d]
        cov = self.covariance(theta)
        chol = torch.linalg.cholesky(cov)
        w = torch.cholesky_solve(dmu, chol)  # C⁻¹ ∂μ
        info = dmu.transpose(-1, -2) @ w
        if self._cov_fn is not None:
            _, dcov = _tangents(self._cov_fn, theta)  # [..., m, m, d]
            dcov = dcov.movedim(-1, -3)  # [..., d, m, m]
            a = torch.cholesky_solve(dcov, chol.unsqueeze(-3))  # C⁻¹ ∂ᵢC
            info = info + 0.5 * torch.einsum("...iab,...jba->...ij", a, a)
        return 0.5 * (info + info.transpose(-1, -2))

    def closed_kl(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        """½[tr(C_q⁻¹C_p) + (μ_q − μ_p)ᵀC_q⁻¹(μ_q − μ_p) − m + log det C_q − log det C_p]."""
        mp, mq = self.mean(theta_p), self.mean(theta_q)
        cp, cq = self.covariance(theta_p), self.covariance(theta_q)
        lq = torch.linalg.cholesky(cq)
        diff = (mq - mp).unsqueeze(-1)
        maha = (torch.cholesky_solve(diff, lq) * diff).sum((-1, -2))
        m = mp.shape[-1]
        if self._cov_fn is None:
            return 0.5 * maha
        lp = torch.linalg.cholesky(cp)
        trace = torch.cholesky_solve(cp, lq).diagonal(dim1=-2, dim2=-1).sum(-1)
        logdet = 2 * (lq.diagonal(dim1=-2, dim2=-1).log().sum(-1) - lp.diagonal(dim1=-2, dim2=-1).log().sum(-1))
        return 0.5 * (trace + maha - m + logdet)

    def has_closed_kl(self, theta: Tensor) -> bool:
        return True


def gaussian_model(
    mean: Callable[[Tensor], Tensor],
    cov: Any,
    dim: int,
    names: Sequence[str] | None = None,
    constraints: Sequence[Constraint] | None = None,
    *,
    name: str = "gaussian data",
) -> GaussianModel:
    """A Gaussian data model N(μ(θ), C) (or C(θ)) with closed-form Fisher and KL; see the module doc.

    >>> import torch, fisherkl as fk
    >>> x = torch.linspace(0, 1, 50, dtype=torch.float64)
    >>> line = fk.gaussian_model(lambda t: t[..., :1] + t[..., 1:] * x, 0.1**2 * torch.eye(50, dtype=torch.float64),
    ...                          2, names=["intercept", "slope"])
    >>> F = fk.fisher(line, torch.tensor([1.0, 2.0], dtype=torch.float64))   # XᵀX / σ²
    >>> round(float(F[0, 0]))
    5000
    """
    return GaussianModel(mean, cov, dim, names, constraints, name=name)
