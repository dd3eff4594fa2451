"""Maximum likelihood by Fisher scoring, and a summary table of the estimate.

``fit(model, data)`` maximises Σᵢ log p(xᵢ | θ) by Fisher scoring, θ ← θ + (n·I(θ))⁻¹ Σᵢ sᵢ
(for a GLM: iteratively reweighted least squares), or by Newton steps with the observed
information (``method="newton"``), halving a step until the log-likelihood rises and θ stays
valid. It stops when the Newton decrement sᵀA⁻¹s falls below ``tol``.

The :class:`Fit` gives three covariances of the estimate — ``"expected"`` (n·I)⁻¹, the
Cramér–Rao bound at θ̂; ``"observed"`` J⁻¹; ``"sandwich"`` J⁻¹(Σsᵢsᵢᵀ)J⁻¹ — and
:meth:`Fit.summary` prints estimates, standard errors, z, p-values, confidence intervals and the
Cramér–Rao standard deviation, like statsmodels' summary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from ..errors import ConvergenceError, FisherKLError, ParameterError
from ..families.base import Family
from ..model import Model, require_model
from .information import (
    _inverse,
    expected_information,
    log_likelihood_terms,
    n_observations,
    observations,
    observed_information,
    sandwich_covariance,
    scores,
)
from .regression import Regression

COVARIANCES = ("expected", "observed", "sandwich")


@dataclass
class SummaryRow:
    name: str
    coef: float
    std_err: float
    z: float
    p_value: float
    low: float
    high: float
    crb_std: float  # √ of the Cramér–Rao bound: √[(n·I(θ̂))⁻¹]ᵢᵢ


@dataclass
class Summary:
    """The table of :meth:`Fit.summary`; ``str()`` renders it."""

    title: str
    rows: list[SummaryRow]
    covariance: str
    level: float
    info: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        name_w = max(8, *(len(r.name) for r in self.rows)) + 1
        lo = f"[{(1 - self.level) / 2:.3f}"
        hi = f"{1 - (1 - self.level) / 2:.3f}]"
        head = f"{'':<{name_w}}{'coef':>12}{'std err':>12}{'z':>10}{'P>|z|':>9}{lo:>12}{hi:>12}{'√CRB':>12}"
        rule = "=" * len(head)
        lines = [self.title.center(len(head)), rule]
        col = len(head) // 2
        for key, value in self.info[:1]:
            lines.append(f"{key + ':':<16}{value}")
        pairs = self.info[1:]
        for i in range(0, len(pairs), 2):
            cells = [f"{k + ':':<16}{v:>{col - 20}}" for k, v in pairs[i : i + 2]]
            lines.append("    ".join(cells))
        lines += [rule, head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name:<{name_w}}{_g(r.coef):>12}{_g(r.std_err):>12}{r.z:>10.3f}{r.p_value:>9.3f}"
                f"{_g(r.low):>12}{_g(r.high):>12}{_g(r.crb_std):>12}"
            )
        lines.append(rule)
        lines.append(f"std err: {self.covariance} covariance; √CRB: Cramér–Rao bound, √ of the diagonal of (n·I(θ̂))⁻¹")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "covariance": self.covariance, "rows": [r.__dict__ for r in self.rows]}


def _g(x: float) -> str:
    return f"{x:.4f}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.3e}"


@dataclass
class Fit:
    """A maximum-likelihood fit: θ̂, the log-likelihood, and the information behind its errors."""

    model: Model
    data: Tensor
    theta: Tensor
    loglik: float
    iterations: int
    converged: bool
    method: str

    @property
    def names(self) -> tuple[str, ...]:
        return self.model.names

    @property
    def n_obs(self) -> int:
        """Observations behind the fit (a regression: its rows)."""
        return self.model.n_rows if isinstance(self.model, Regression) else int(self.data.shape[0])

    def expected_information(self) -> Tensor:
        """n·I(θ̂) ``[d, d]``."""
        return expected_information(self.model, self.theta, self.data)

    def observed_information(self) -> Tensor:
        """−∇²log L(θ̂) ``[d, d]``."""
        return observed_information(self.model, self.theta, self.data)

    def cov(self, kind: str = "expected") -> Tensor:
        """Covariance of θ̂: ``"expected"`` (n·I)⁻¹ = the Cramér–Rao bound, ``"observed"`` J⁻¹, or ``"sandwich"``."""
        if kind not in COVARIANCES:
            raise ParameterError(f"cov: kind must be one of {', '.join(COVARIANCES)}, got {kind!r}")
        if kind == "sandwich":
            return sandwich_covariance(self.model, self.theta, self.data)
        a = self.expected_information() if kind == "expected" else self.observed_information()
        return _inverse(a, f"the {kind} information")

    def std_errors(self, kind: str = "expected") -> Tensor:
        """√diag of :meth:`cov`."""
        return self.cov(kind).diagonal().sqrt()

    def aic(self) -> float:
        return 2 * self.model.dim - 2 * self.loglik

    def summary(self, cov: str = "expected", level: float = 0.95) -> Summary:
        """Estimates with standard errors from ``cov``, z = θ̂/se, two-sided p-values, ``level``
        confidence intervals θ̂ ± z_{(1+level)/2}·se, and √CRB."""
        if not 0 < level < 1:
            raise ParameterError(f"summary: level must be in (0, 1), got {level}")
        se = self.std_errors(cov)
        crb = self.std_errors("expected") if cov != "expected" else se
        q = NormalDist().inv_cdf(0.5 + level / 2)
        rows = []
        for name, c, s, b in zip(self.names, self.theta.tolist(), se.tolist(), crb.tolist()):
            z = c / s if s > 0 else math.inf
            p = math.erfc(abs(z) / math.sqrt(2))
            rows.append(SummaryRow(name, c, s, z, p, c - q * s, c + q * s, b))
        model = self.model
        what = f"{model.base.name} regression, link {model.link}" if isinstance(model, Regression) else model.name
        info = [
            ("Model", what),
            ("Observations", str(self.n_obs)),
            ("Parameters", str(model.dim)),
            ("Log-likelihood", f"{self.loglik:.6g}"),
            ("AIC", f"{self.aic():.6g}"),
            ("Method", self.method),
            ("Iterations", str(self.iterations)),
            ("Converged", str(self.converged)),
        ]
        return Summary("fisherkl maximum-likelihood fit", rows, cov, level, info)


def _start(model: Model, theta0: Any) -> Tensor:
    if theta0 is not None:
        return model.validate(theta0, "theta0").detach().to(torch.float64)
    if isinstance(model, Regression):
        zero = torch.zeros(model.p, dtype=torch.float64)
        values = {}
        base = model.base
        if isinstance(base, Family):
            typical = base.typical()
            values = {base.names[j]: float(typical[j]) for j in model.free}
        try:
            return model.validate(model.parameters(zero, **values), "the default start")
        except FisherKLError as exc:
            raise ParameterError(f"fit: the default start (β = 0) is not valid ({exc}); pass theta0=") from None
    if isinstance(model, Family):
        return model.typical()
    raise ParameterError(f"fit: {model.name} has no default start; pass theta0=")


def fit(
    model: Model,
    data: Any,
    theta0: Any = None,
    *,
    method: str = "scoring",
    tol: float = 1e-24,
    max_iter: int = 200,
) -> Fit:
    """The maximum-likelihood estimate of ``model`` on ``data`` (see the module doc).

    ``data``: observations ``[n, *event]`` (a regression: the response ``[n]``). ``theta0``: the
    start (default: β = 0 with the family's typical values for a regression, the family's typical θ).
    """
    model = require_model(model, "fit")
    if method not in ("scoring", "newton"):
        raise ParameterError(f"fit: method must be 'scoring' or 'newton', got {method!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ParameterError(f"fit: max_iter must be a positive integer, got {max_iter!r}")
    theta = _start(model, theta0)
    x = observations(model, theta, data)

    def loglik(t: Tensor) -> float:
        return float(log_likelihood_terms(model, t, x).sum())

    current = loglik(theta)
    if not math.isfinite(current):
        raise ParameterError(f"fit: the log-likelihood at the start {theta.tolist()} is {current}; pass theta0=")
    converged, it = False, 0
    for it in range(1, max_iter + 1):  # noqa: B007
        grad = scores(model, theta, x).sum(0)
        a = expected_information(model, theta, x) if method == "scoring" else observed_information(model, theta, x)
        step = torch.linalg.solve(a, grad) if bool(torch.isfinite(a).all()) else grad
        decrement = float(grad @ step)
        tiny_step = float(step.abs().max()) <= 1e-15 * (1.0 + float(theta.abs().max()))
        if decrement < tol * max(1.0, abs(current)) or tiny_step:
            converged = True
            break
        t, new = 1.0, -math.inf
        for _ in range(60):
            candidate = theta + t * step
            try:
                model.validate(candidate)
                new = loglik(candidate)
            except FisherKLError:
                new = -math.inf
            if math.isfinite(new) and new >= current - 1e-12 * abs(current):
                break
            t /= 2
        else:
            break  # no step raises the likelihood: at the maximum to rounding
        theta, current = candidate, new
    if not converged and it >= max_iter:
        raise ConvergenceError(
            f"fit: {method} did not converge in {max_iter} iterations (log-likelihood {current:.6g}); "
            "raise max_iter or give a better theta0"
        )
    if n_observations(model, x) == 0:  # pragma: no cover - observations() refuses empty data
        raise ParameterError("fit: no data")
    return Fit(model, x, theta, current, it, True, "Fisher scoring" if method == "scoring" else "Newton")
