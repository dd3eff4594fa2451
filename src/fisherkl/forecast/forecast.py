"""Fisher forecasts: what an experiment can measure, from its Fisher matrix F over named parameters.

In the Gaussian approximation around the fiducial θ₀ the estimate has covariance C = F⁻¹ (the
Cramér–Rao bound). From F:

* marginalised errors σᵢ = √Cᵢᵢ (every other parameter free) and conditional errors 1/√Fᵢᵢ
  (every other parameter known);
* fixing parameters = deleting their rows and columns of F; marginalising them = deleting them
  from C, i.e. the Schur complement F_kk − F_km F_mm⁻¹ F_mk on the kept ones;
* a Gaussian prior of width σ on θᵢ adds 1/σ² to Fᵢᵢ; independent experiments add their F;
* the confidence region of two parameters at probability P is the ellipse
  δᵀ C₂⁻¹ δ = Δχ²,  Δχ² = −2 ln(1 − P)  (2.30 for 68.3 %, 6.18 for 95.4 %),
  C₂ the 2 × 2 block of C; its semi-axes are √(Δχ² λ) for the eigenvalues λ of C₂ (Coe 2009).

``Forecast.from_model(model, θ₀, n=…)`` takes F = n·I(θ₀) from any fisherkl model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import FisherKLError, ParameterError
from ..fisher import fisher as fisher_of
from ..model import Model, as_parameter_tensor, require_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: probability inside the 1σ and 2σ contours of a 2-D Gaussian
LEVELS_2D = (1 - math.exp(-0.5), 1 - math.exp(-2.0))


def delta_chi2(level: float) -> float:
    """Δχ² of the 2-D region holding probability ``level``: −2 ln(1 − level)."""
    if not 0 < level < 1:
        raise ParameterError(f"level must be a probability in (0, 1), got {level}")
    return -2.0 * math.log1p(-level)


class Forecast:
    """A Fisher matrix ``fisher`` ``[d, d]`` over ``names`` at the ``fiducial`` values ``[d]``."""

    def __init__(self, fisher: Any, names: Sequence[str] | None = None, fiducial: Any = None) -> None:
        f = as_parameter_tensor(fisher, "fisher").detach()
        if f.ndim != 2 or f.shape[0] != f.shape[1] or f.shape[0] == 0:
            raise ParameterError(f"Forecast: fisher must be a square matrix [d, d], got shape {tuple(f.shape)}")
        if not bool(torch.isfinite(f).all()):
            raise ParameterError("Forecast: fisher has NaN or infinite entries")
        scale = float(f.abs().max())
        if float((f - f.T).abs().max()) > 1e-8 * scale:
            raise ParameterError("Forecast: fisher is not symmetric")
        d = f.shape[0]
        self.fisher = 0.5 * (f + f.T)
        self.names: tuple[str, ...] = tuple(names) if names is not None else tuple(f"p{i}" for i in range(d))
        if len(self.names) != d or len(set(self.names)) != d:
            raise ParameterError(f"Forecast: need {d} distinct names, got {list(self.names)}")
        fid = torch.zeros(d, dtype=f.dtype) if fiducial is None else as_parameter_tensor(fiducial, "fiducial", like=f)
        if tuple(fid.shape) != (d,):
            raise ParameterError(f"Forecast: fiducial must have {d} values, got shape {tuple(fid.shape)}")
        self.fiducial = fid.detach()
        if bool((torch.linalg.eigvalsh(self.fisher) < -1e-10 * scale).any()):
            raise ParameterError("Forecast: fisher is not positive semi-definite")

    @classmethod
    def from_model(cls, model: Model, theta: Any, *, n: float = 1, method: str = "auto") -> Forecast:
        """F = n·I(θ): ``n`` independent observations of ``model`` at the fiducial θ ``[d]``."""
        t = require_model(model, "Forecast.from_model").validate(theta)
        if t.ndim != 1:
            raise ParameterError(f"Forecast.from_model: theta must be one vector [{model.dim}], got {tuple(t.shape)}")
        if not (isinstance(n, (int, float)) and math.isfinite(n) and n > 0):
            raise ParameterError(f"Forecast.from_model: n must be a finite number > 0, got {n!r}")
        info = fisher_of(model, t, method)  # type: ignore[arg-type]
        assert isinstance(info, Tensor)
        return cls(n * info.detach(), model.names, t.detach())

    # --- basics -----------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Forecast(names={list(self.names)})"

    def index(self, names: Iterable[str]) -> list[int]:
        out = []
        for n in names:
            if n not in self.names:
                raise ParameterError(f"Forecast: unknown parameter {n!r}; parameters: {', '.join(self.names)}")
            out.append(self.names.index(n))
        return out

    def _sub(self, keep: list[int], fisher: Tensor) -> Forecast:
        return Forecast(fisher, [self.names[i] for i in keep], self.fiducial[keep])

    # --- errors -----------------------------------------------------------------------------------
    def covariance(self) -> Tensor:
        """C = F⁻¹ ``[d, d]``; a FisherKLError names the least constrained combination when F is singular."""
        chol, info = torch.linalg.cholesky_ex(self.fisher)
        if int(info) != 0:
            w, v = torch.linalg.eigh(self.fisher)
            u = v[:, 0]
            combo = " ".join(f"{c:+.3g}·{n}" for c, n in zip(u.tolist(), self.names) if abs(c) > 1e-3)
            raise FisherKLError(
                f"the Fisher matrix is singular (smallest eigenvalue {float(w[0]):.3g}): the data do not constrain "
                f"{combo}; add a prior (with_prior) or fix a parameter (fix)"
            )
        return torch.cholesky_inverse(chol)

    def marginal_errors(self) -> Tensor:
        """σᵢ = √(F⁻¹)ᵢᵢ ``[d]``: every other parameter free."""
        return self.covariance().diagonal().sqrt()

    def conditional_errors(self) -> Tensor:
        """1/√Fᵢᵢ ``[d]``: every other parameter known."""
        return self.fisher.diagonal().rsqrt()

    def errors(self) -> dict[str, float]:
        """Marginalised error per parameter name."""
        return dict(zip(self.names, self.marginal_errors().tolist()))

    def correlation(self) -> Tensor:
        """Correlation matrix of the estimate ``[d, d]``."""
        c = self.covariance()
        s = c.diagonal().sqrt()
        return c / s[:, None] / s[None, :]

    # --- new forecasts from this one --------------------------------------------------------------
    def fix(self, *names: str) -> Forecast:
        """The forecast with ``names`` known exactly (their rows and columns of F deleted)."""
        drop = set(self.index(names))
        keep = [i for i in range(self.dim) if i not in drop]
        if not keep:
            raise ParameterError("Forecast.fix: cannot fix every parameter")
        return self._sub(keep, self.fisher[keep][:, keep])

    def marginalise(self, *names: str) -> Forecast:
        """The forecast for the other parameters with ``names`` free: F_kk − F_km F_mm⁻¹ F_mk."""
        drop = self.index(names)
        keep = [i for i in range(self.dim) if i not in set(drop)]
        if not keep:
            raise ParameterError("Forecast.marginalise: cannot marginalise every parameter")
        f_kk, f_km, f_mm = self.fisher[keep][:, keep], self.fisher[keep][:, drop], self.fisher[drop][:, drop]
        chol, info = torch.linalg.cholesky_ex(f_mm)
        if int(info) != 0:
            raise FisherKLError(f"Forecast.marginalise: the block of {', '.join(names)} is singular")
        return self._sub(keep, f_kk - f_km @ torch.cholesky_solve(f_km.T, chol))

    marginalize = marginalise

    def select(self, *names: str) -> Forecast:
        """Only ``names`` (in that order), every other parameter marginalised."""
        self.index(names)
        others = [n for n in self.names if n not in names]
        sub = self.marginalise(*others) if others else self
        idx = sub.index(names)
        return sub._sub(idx, sub.fisher[idx][:, idx])

    def with_prior(self, sigmas: Mapping[str, float] | None = None, **more: float) -> Forecast:
        """F + diag(1/σ²) for Gaussian priors of width σ on the named parameters."""
        add = torch.zeros(self.dim, dtype=self.fisher.dtype)
        for name, sigma in {**(sigmas or {}), **more}.items():
            if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
                raise ParameterError(f"with_prior: the width for {name!r} must be a finite number > 0, got {sigma!r}")
            add[self.index([name])[0]] += 1.0 / float(sigma) ** 2
        return Forecast(self.fisher + torch.diag(add), self.names, self.fiducial)

    def __add__(self, other: Any) -> Forecast:
        """Independent experiments: Fishers added over the union of the parameters (zero where absent);
        shared parameters must have the same fiducial value."""
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Forecast):
            return NotImplemented
        names = list(self.names) + [n for n in other.names if n not in self.names]
        dtype = torch.promote_types(self.fisher.dtype, other.fisher.dtype)
        f = torch.zeros(len(names), len(names), dtype=dtype)
        fid = torch.zeros(len(names), dtype=dtype)
        for second, part in enumerate((self, other)):
            idx = [names.index(n) for n in part.names]
            f[torch.tensor(idx)[:, None], torch.tensor(idx)[None, :]] += part.fisher.to(dtype)
            for i, n, value in zip(idx, part.names, part.fiducial.tolist()):
                if second and n in self.names:
                    mine = float(fid[i])
                    if abs(mine - value) > 1e-9 * max(1.0, abs(mine)):
                        raise ParameterError(
                            f"Forecast +: parameter {n!r} has fiducial {mine:g} in one forecast, {value:g} in the other"
                        )
                fid[i] = value
        return Forecast(f, names, fid)

    __radd__ = __add__

    # --- ellipses and tables ----------------------------------------------------------------------
    def ellipse_axes(self, x: str, y: str, level: float = LEVELS_2D[0]) -> tuple[float, float, float]:
        """(semi-major a, semi-minor b, angle of a from the x axis in radians) of the ``level`` region."""
        c2 = self._block(x, y)
        w, v = torch.linalg.eigh(c2)
        k = delta_chi2(level)
        return math.sqrt(k * float(w[1])), math.sqrt(k * float(w[0])), math.atan2(float(v[1, 1]), float(v[0, 1]))

    def ellipse(self, x: str, y: str, level: float = LEVELS_2D[0], points: int = 256) -> Tensor:
        """Points ``[points, 2]`` (in the parameters' own units) on the ``level`` confidence ellipse of x, y."""
        if not (isinstance(points, int) and points >= 3):
            raise ParameterError(f"ellipse: points must be an integer >= 3, got {points!r}")
        c2 = self._block(x, y)
        chol = torch.linalg.cholesky(c2)
        t = torch.linspace(0, 2 * math.pi, points, dtype=c2.dtype)
        circle = torch.stack([t.cos(), t.sin()], -1) * math.sqrt(delta_chi2(level))
        centre = self.fiducial[self.index([x, y])]
        return centre + circle @ chol.T

    def _block(self, x: str, y: str) -> Tensor:
        i, j = self.index([x, y])
        if i == j:
            raise ParameterError("ellipse: x and y must be two different parameters")
        c = self.covariance()
        return c[[i, j]][:, [i, j]]

    def table(self) -> str:
        """Parameter, fiducial, marginalised and conditional errors, as text."""
        marg, cond = self.marginal_errors().tolist(), self.conditional_errors().tolist()
        w = max(9, *(len(n) for n in self.names)) + 2
        lines = [f"{'parameter':<{w}}{'fiducial':>14}{'σ marginal':>14}{'σ conditional':>15}"]
        for n, f, m, c in zip(self.names, self.fiducial.tolist(), marg, cond):
            lines.append(f"{n:<{w}}{f:>14.6g}{m:>14.6g}{c:>15.6g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def triangle(self, names: Sequence[str] | None = None, **kwargs: Any) -> Figure:
        """A triangle plot of this forecast (see :func:`fisherkl.forecast.triangle`)."""
        from .plot import triangle

        return triangle([self], names=names, **kwargs)
