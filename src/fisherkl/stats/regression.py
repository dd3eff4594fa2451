"""Conditional models with a design matrix: GLMs and parametric regressions, row by row.

``regression(family, X)`` is the model p(y | X, β) = Πᵢ p(yᵢ | θᵢ) over the n rows of X ``[n, p]``,
where one coordinate of each row's parameter is θᵢ[on] = g⁻¹(xᵢᵀβ) (g the link) and every other
coordinate is either fixed or one more parameter shared by all rows, estimated on ℝ through a map
onto its constraint (``log_concentration`` for a positive one, ``logit_…`` for one in (0, 1)).

Its Fisher information is that of the **whole sample**, the sum over rows of the pulled-back
per-row Fisher,

    I(β) = Σᵢ Jᵢᵀ I_family(θᵢ) Jᵢ,     Jᵢ = ∂θᵢ/∂β  ``[k, d]``,

with I_family the family's closed form where it has one and its exact route (KL Hessian, exact
sum or quadrature) per row otherwise — never Monte Carlo over the joint. For a GLM with the
canonical link it is XᵀWX. The KL is the sum of the rows' KLs. Shapes: β ``[..., d]`` → I
``[..., d, d]``; the response y is ``[n]`` (one value per row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from ..errors import ParameterError
from ..estimate import Estimate
from ..families import family as make_family
from ..fisher import fisher
from ..model import Model, as_parameter_tensor
from .links import InverseLink, default_link, inverse_link, onto


def _design(x: Any, names: Sequence[str] | None, intercept: bool) -> tuple[Tensor, list[str]]:
    columns = list(x.columns) if hasattr(x, "columns") else None
    if hasattr(x, "to_numpy"):
        x = np.array(x.to_numpy(), dtype=np.float64)  # a copy: pandas may hand out a read-only view
    t = as_parameter_tensor(x, "X")
    if not t.is_floating_point() or t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float64)
    if t.ndim == 1:
        t = t.unsqueeze(-1)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ParameterError(f"regression: X must be a non-empty matrix [n, p], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ParameterError("regression: X has NaN or infinite entries")
    cols = [str(c) for c in columns] if columns is not None else [f"x{i}" for i in range(t.shape[1])]
    if intercept:
        t = torch.cat([torch.ones_like(t[:, :1]), t], 1)
        cols = ["const", *cols]
    if names is not None:
        cols = list(names)
        if len(cols) != t.shape[1]:
            raise ParameterError(f"regression: names has {len(cols)} entries for {t.shape[1]} columns of X")
    return t, cols


def _elementwise_derivative(fn: InverseLink, x: Tensor, keep: bool) -> Tensor:
    """fn′(x) for an elementwise fn, by one backward pass (kept differentiable when ``keep``)."""
    with torch.enable_grad():
        leaf = x if keep else x.detach().requires_grad_(True)
        if not leaf.requires_grad:
            leaf = leaf.requires_grad_(True)
        (d,) = torch.autograd.grad(fn(leaf).sum(), leaf, create_graph=keep)
    return d


class Regression(Model):
    """p(y | X, β): one family per row, one parameter driven by X (see the module doc).

    Attributes: ``base`` (the family), ``X`` ``[n, p]``, ``on`` (index of the regressed coordinate),
    ``link`` (its name), ``free`` (indices of the other estimated coordinates), ``fixed_rows``
    (index → value of the fixed ones). ``names`` are the columns' names, then ``log_…`` etc.
    """

    def __init__(
        self,
        base: Model,
        x: Tensor,
        columns: Sequence[str],
        *,
        on: int,
        link: str | InverseLink,
        fixed: Mapping[int, float],
        row_method: str = "auto",
    ) -> None:
        if not base.regular:
            raise ParameterError(f"regression: {base.name} is non-regular (no Fisher information)")
        self.base, self.X, self.on = base, x, on
        self.link, self._inv = inverse_link(link)
        self.fixed_rows = dict(fixed)
        self.free = [j for j in range(base.dim) if j != on and j not in self.fixed_rows]
        self._onto = {j: onto(base.constraints[j]) for j in self.free}
        self.row_method = row_method
        names = [*columns, *(self._onto[j][0] + base.names[j] for j in self.free)]
        super().__init__(self._distribution, len(names), names, name=f"{base.name} regression")
        self.n_rows = int(x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Regression({self.base.name}, n={self.n_rows}, on={self.base.names[self.on]!r}, link={self.link!r}, "
            f"names={list(self.names)})"
        )

    @property
    def p(self) -> int:
        """The number of columns of X (coefficients β)."""
        return int(self.X.shape[1])

    # --- θ = (β, free coordinates) ↦ per-row parameters --------------------------------------------
    def row_parameters(self, theta: Tensor) -> Tensor:
        """Each row's family parameter ``[..., n, k]`` for θ ``[..., d]``."""
        x = self.X.to(dtype=theta.dtype, device=theta.device)
        eta = theta[..., : self.p] @ x.T  # [..., n]
        cols: list[Tensor] = []
        for j in range(self.base.dim):
            if j == self.on:
                cols.append(self._inv(eta))
            elif j in self.fixed_rows:
                cols.append(torch.full_like(eta, float(self.fixed_rows[j])))
            else:
                u = theta[..., self.p + self.free.index(j)]
                cols.append(self._onto[j][1](u).unsqueeze(-1).expand_as(eta))
        return torch.stack(cols, -1)

    def parameters(self, beta: Any, **values: float) -> Tensor:
        """θ from coefficients β and the free coordinates' values on their own scale, e.g.
        ``model.parameters([0.5, -1.0], concentration=2.0)`` → (β, log 2)."""
        b = as_parameter_tensor(beta, "beta", like=self.X if self.X.is_floating_point() else None).reshape(-1)
        if b.numel() != self.p:
            raise ParameterError(f"{self.name}: beta needs {self.p} values ({', '.join(self.names[: self.p])})")
        out = [b]
        for j in self.free:
            name = self.base.names[j]
            if name not in values:
                raise ParameterError(f"{self.name}: give {name}= (the value shared by every row)")
            out.append(self._onto[j][2](torch.tensor([float(values.pop(name))], dtype=b.dtype)))
        if values:
            raise ParameterError(f"{self.name}: unknown or not estimated: {', '.join(values)}")
        return torch.cat(out)

    def row_jacobian(self, theta: Tensor) -> Tensor:
        """Jᵢ = ∂θᵢ/∂θ ``[..., n, k, d]`` (zero rows for fixed coordinates)."""
        keep = theta.requires_grad
        x = self.X.to(dtype=theta.dtype, device=theta.device)
        eta = theta[..., : self.p] @ x.T
        jac = theta.new_zeros((*eta.shape, self.base.dim, self.dim))
        jac[..., self.on, : self.p] = _elementwise_derivative(self._inv, eta, keep).unsqueeze(-1) * x
        for i, j in enumerate(self.free):
            u = theta[..., self.p + i]
            d = _elementwise_derivative(self._onto[j][1], u, keep)
            jac[..., j, self.p + i] = d.unsqueeze(-1).expand_as(eta)
        return jac

    def _distribution(self, theta: Tensor) -> Distribution:
        return Independent(self.base.distribution(self.row_parameters(theta)), 1)

    # --- validation: every row's parameter must be valid for the family -----------------------------
    def _check_joint(self, theta: Tensor, what: str) -> None:
        self.base.validate(self.row_parameters(theta.detach()), f"the rows' parameters from {what}")

    def _check_by_torch(self, theta: Tensor, what: str) -> None:
        """The rows were validated by the family."""

    def check_response(self, theta: Tensor, y: Any) -> Tensor:
        """The response as a tensor ``[n, *event]`` in the family's support at θ, else a ParameterError."""
        t = torch.as_tensor(np.array(y.to_numpy()) if hasattr(y, "to_numpy") else y)
        if t.is_complex():
            raise ParameterError(f"{self.name}: y must be real, got a complex tensor")
        t = t.to(theta.dtype)
        if t.shape[:1] != (self.n_rows,):
            raise ParameterError(
                f"{self.name}: y must have {self.n_rows} rows (one per row of X), got {tuple(t.shape)}"
            )
        dist = self.base.distribution(self.row_parameters(theta.detach()))
        ok = dist.support.check(t)
        if not bool(ok.all()):
            i = int((~ok).reshape(self.n_rows, -1).any(-1).nonzero()[0])
            raise ParameterError(f"{self.name}: y[{i}] = {t[i].tolist()} is outside the support of {self.base.name}")
        return t

    # --- closed forms: per row ---------------------------------------------------------------------
    def fisher_estimate(self, theta: Tensor) -> Estimate:
        """I(θ) = Σᵢ Jᵢᵀ I_family(θᵢ) Jᵢ with its stated error (the per-row errors pulled back)."""
        rows = self.row_parameters(theta if theta.requires_grad else theta.detach())
        est = fisher(self.base, rows, self.row_method, return_error=True)  # type: ignore[arg-type]
        assert isinstance(est, Estimate)
        jac = self.row_jacobian(theta)
        value = torch.einsum("...nki,...nkl,...nlj->...ij", jac, est.value, jac)
        error = torch.einsum("...nki,...nkl,...nlj->...ij", jac.abs(), est.error.abs(), jac.abs())
        return Estimate(0.5 * (value + value.transpose(-1, -2)), error, f"per-row {est.method}")

    def closed_fisher(self, theta: Tensor) -> Tensor | None:
        return self.fisher_estimate(theta).value

    def closed_kl(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        from ..divergence import kl  # divergence builds on fisher, which this module also uses

        est = kl(self.base, self.row_parameters(theta_p), self.row_parameters(theta_q), return_error=True)
        assert isinstance(est, Estimate)
        if est.method.endswith("mc"):
            return None
        return est.value.sum(-1)

    def has_closed_kl(self, theta: Tensor) -> bool:
        rows = self.row_parameters(theta.detach().reshape(-1, self.dim)[:1])[0, :1]
        return self.base.has_closed_kl(rows)

    # --- per-row log-likelihood and scores ---------------------------------------------------------
    def row_log_prob(self, theta: Tensor, y: Tensor) -> Tensor:
        """log p(yᵢ | θᵢ) ``[..., n]``."""
        return self.base.distribution(self.row_parameters(theta)).log_prob(y)

    def row_scores(self, theta: Tensor, y: Tensor) -> Tensor:
        """∂ log p(yᵢ | θᵢ)/∂θ ``[n, d]`` for one θ ``[d]``: each row's family score pulled back by Jᵢ."""
        with torch.enable_grad():
            rows = self.row_parameters(theta.detach()).detach().requires_grad_(True)
            logp = self.base.distribution(rows).log_prob(y)
            (s,) = torch.autograd.grad(logp.sum(), rows)
        return torch.einsum("nk,nkd->nd", s, self.row_jacobian(theta.detach()))


def regression(
    family: str | Model,
    X: Any,
    *,
    on: str | int | None = None,
    link: str | InverseLink | None = None,
    fixed: Mapping[str, float] | None = None,
    names: Sequence[str] | None = None,
    intercept: bool = False,
    row_method: str = "auto",
    **family_args: Any,
) -> Regression:
    """A regression of ``family`` on the design matrix ``X`` ``[n, p]``; see the module doc.

    ``on``: the parameter driven by X (name or index; default the family's first). ``link``: a
    statsmodels-style name (``identity``, ``log``, ``logit``, ``probit``, ``cloglog``, ``sqrt``,
    ``inverse``) or a callable inverse link η ↦ θ; default identity on ℝ, log on (0, ∞), logit on
    (0, 1). ``fixed``: other parameters held at known values (e.g. ``{"scale": 1.0}``); the rest
    are estimated, shared by all rows. ``intercept=True`` prepends a column of ones named
    ``const``. ``family_args`` go to :func:`fisherkl.family` (e.g. ``total_count=20``).

    >>> import torch, fisherkl as fk
    >>> X = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> m = fk.regression("poisson", X)                     # log link: rate = exp(xᵀβ)
    >>> fk.fisher(m, torch.tensor([0.0, 0.0], dtype=torch.float64))   # XᵀWX, W = diag(rate)
    tensor([[3., 3.],
            [3., 5.]], dtype=torch.float64)
    """
    base = make_family(family, **family_args) if isinstance(family, str) else family
    if not isinstance(base, Model):
        raise TypeError(f"regression: family must be a family name or a fisherkl.Model, got {type(family).__name__}")
    if family_args and not isinstance(family, str):
        raise ParameterError("regression: family arguments go to fisherkl.family(name, ...) — pass a name")
    x, columns = _design(X, names, intercept)
    index = {n: i for i, n in enumerate(base.names)}

    def position(key: str | int, what: str) -> int:
        if isinstance(key, int) and 0 <= key < base.dim:
            return key
        if isinstance(key, str) and key in index:
            return index[key]
        raise ParameterError(f"regression: {what} {key!r} is not a parameter of {base.name} ({', '.join(base.names)})")

    j = 0 if on is None else position(on, "on=")
    held = {position(k, "fixed"): float(v) for k, v in (fixed or {}).items()}
    if j in held:
        raise ParameterError(f"regression: {base.names[j]!r} is regressed on X and cannot also be fixed")
    chosen = default_link(base.constraints[j]) if link is None else link
    return Regression(base, x, columns, on=j, link=chosen, fixed=held, row_method=row_method)
