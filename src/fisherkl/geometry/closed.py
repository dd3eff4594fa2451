"""Closed-form Fisher–Rao distances, keyed by family name.

Each entry maps ``(family, θ₁, θ₂)`` (validated, broadcast ``[..., d]``) to d ``[...]``, or to None
when the closed form does not cover these points (MVN with different means). Entries for families
not in the catalogue are simply never used. Formulas (DESIGN.md; Atkinson & Mitchell 1981,
Calvo & Oller 1991, Costa, Santos & Strapasson 2015):

* location–scale, I = σ⁻²[[a, c], [c, e]]: u = μ + (c/a)σ, B = e − c²/a,
  d = √B·arccosh(1 + [(a/B)(u₁−u₂)² + (σ₁−σ₂)²]/(2σ₁σ₂))  (a hyperbolic half-plane of curvature −1/B);
  the coefficients a, c, e are read from the family object (normal, lognormal, laplace, cauchy,
  logistic, gumbel, studentt).
* weibull(scale λ, concentration k): log X is a (minimum-)Gumbel with location log λ and scale 1/k,
  and the Fisher–Rao distance is invariant under the bijection x ↦ log x of the sample space, so
  it is the location–scale formula with a = 1, c = 1 − γ, e = (1 − γ)² + π²/6 at (log λ, 1/k).
* categorical: 2·arccos Σᵢ√(pᵢqᵢ); multinomial(n): √n times that; binomial(n): 2√n|arcsin√p₁ − arcsin√p₂|
  (bernoulli: n = 1).
* poisson: 2|√λ₁ − √λ₂|; exponential (rate): |log(λ₁/λ₂)|; halfnormal: √2|log(σ₁/σ₂)|;
  rayleigh: 2|log(σ₁/σ₂)|; pareto (α, fixed scale; I = 1/α²): |log(α₁/α₂)|.
* geometric (failures before the first success, I = 1/(p²(1−p))): 2|artanh√(1−p₁) − artanh√(1−p₂)|.
* negativebinomial(r, torch's probs p; pmf ∝ pᵏ(1−p)ʳ, I = r/(p(1−p)²)):
  d = √r ∫ dp/(√p(1−p)) = 2√r·|artanh√p₁ − artanh√p₂|.
* mvn (θ = loc, then the Cholesky factor row-major) with equal means: √(½ Σᵢ log² λᵢ), λᵢ the
  eigenvalues of Σ₁⁻¹Σ₂ (the fixed-mean submanifold is totally geodesic).
* mvn_diag (θ = loc[k], scale[k]): a product of k normal half-planes: √(Σᵢ dᵢ²).
* gamma with fixed shape α (a user model in the rate β alone): √α·|log(β₁/β₂)| — see
  :func:`gamma_fixed_shape`.
* vonmises: no closed form, but the geodesic problem is solved in the natural parameters
  η = κ(cos μ, sin μ), where the metric is analytic on the whole plane and μ's period is built in
  (locations 2π apart are one point; paths near κ = 0 stay smooth).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..model import Model

EULER_GAMMA = 0.5772156649015329

ClosedDistance = Callable[[Model, Tensor, Tensor], "Tensor | None"]
_CLOSED: dict[str, ClosedDistance] = {}


def register_distance(*names: str) -> Callable[[ClosedDistance], ClosedDistance]:
    """Decorator: register a closed-form distance for the families called ``names``."""

    def deco(fn: ClosedDistance) -> ClosedDistance:
        for name in names:
            _CLOSED[name] = fn
        return fn

    return deco


def closed_distance_names() -> list[str]:
    """Family names that have a registered closed-form Fisher–Rao distance."""
    return list(_CLOSED)


def closed_distance(model: Model, theta1: Tensor, theta2: Tensor) -> Tensor | None:
    """The closed-form distance for ``model`` (a catalogue family), or None if there is none."""
    from ..families import Family

    if not isinstance(model, Family):
        return None
    fn = _CLOSED.get(model.name)
    return None if fn is None else fn(model, theta1, theta2)


def _fixed(model: Model, key: str) -> float:
    return float(model.fixed_values[key])  # type: ignore[attr-defined]


def location_scale_distance(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor, a: float, c: float, e: float) -> Tensor:
    """d for I = σ⁻²[[a, c], [c, e]]: √B·arccosh(1 + [(a/B)(u₁−u₂)² + (σ₁−σ₂)²]/(2σ₁σ₂))."""
    big_b = e - c * c / a
    du = (mu1 - mu2) + (c / a) * (s1 - s2)
    # z = [(a/B)Δu² + Δσ²]/(2σ₁σ₂), formed as exp(log z) where its pieces would overflow (Δu = 1e160)
    x, y = math.sqrt(a / big_b) * du, s1 - s2
    big = torch.maximum(x.abs(), y.abs())
    safe_big = torch.where(big > 0, big, torch.ones_like(big))
    inner = torch.where(big > 0, (x / safe_big).square() + (y / safe_big).square(), torch.ones_like(big))
    log_z = 2 * torch.log(safe_big) + torch.log(inner) - math.log(2) - torch.log(s1) - torch.log(s2)
    z = torch.where(big > 0, torch.exp(log_z), torch.zeros_like(big))
    # arccosh(1 + z) = log1p(z + √(z(z + 2))): accurate for small z; zero (sub)gradient at z = 0;
    # for large z, log z + log(1 + 1/z + √(1 + 2/z)), which stays finite where z itself overflows
    large = log_z > 20
    zl = torch.where(large, torch.exp(torch.clamp(log_z, max=700.0)), torch.ones_like(z))
    far = log_z + torch.log1p(1 / zl + torch.sqrt(1 + 2 / zl))
    zs = torch.where(large, torch.zeros_like(z), z)
    near = torch.log1p(zs + _safe_sqrt(zs * (zs + 2)))
    return math.sqrt(big_b) * torch.where(large, far, near)


@register_distance("normal", "lognormal", "laplace", "cauchy", "logistic", "gumbel", "studentt")
def _location_scale(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    a, c, e = (float(getattr(model, key)) for key in ("a", "c", "e"))
    return location_scale_distance(t1[..., 0], t1[..., 1], t2[..., 0], t2[..., 1], a, c, e)


@register_distance("weibull")
def _weibull(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    c = 1 - EULER_GAMMA
    e = c * c + math.pi**2 / 6
    return location_scale_distance(t1[..., 0].log(), 1 / t1[..., 1], t2[..., 0].log(), 1 / t2[..., 1], 1.0, c, e)


def _safe_sqrt(x: Tensor) -> Tensor:
    """√x with gradient 0 (not NaN) at x = 0: distances between equal points stay differentiable."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _arcsin_sqrt(p: Tensor) -> Tensor:
    return torch.asin(torch.sqrt(p))


@register_distance("bernoulli")
def _bernoulli(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return 2 * (_arcsin_sqrt(t1[..., 0]) - _arcsin_sqrt(t2[..., 0])).abs()


@register_distance("binomial")
def _binomial(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return math.sqrt(_fixed(model, "total_count")) * _bernoulli(model, t1, t2)


def _bhattacharyya_angle(t1: Tensor, t2: Tensor) -> Tensor:
    """2·arccos Σ√(pᵢqᵢ) over the full probability vectors (p_k = 1 − Σθ)."""
    from ..families.base import one_minus_sum

    last1 = one_minus_sum(t1).unsqueeze(-1)
    last2 = one_minus_sum(t2).unsqueeze(-1)
    p, q = torch.cat([t1, last1], -1), torch.cat([t2, last2], -1)
    # 2·arccos(bc) = 4·arcsin(‖√p − √q‖/2): accurate near p = q, where arccos loses half the digits
    half_chord = torch.linalg.vector_norm(p.sqrt() - q.sqrt(), dim=-1) / 2
    return 4 * torch.asin(half_chord.clamp(max=1.0))


@register_distance("categorical")
def _categorical(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return _bhattacharyya_angle(t1, t2)


@register_distance("multinomial")
def _multinomial(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return math.sqrt(_fixed(model, "total_count")) * _bhattacharyya_angle(t1, t2)


@register_distance("poisson")
def _poisson(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return 2 * (t1[..., 0].sqrt() - t2[..., 0].sqrt()).abs()


def _log_ratio(t1: Tensor, t2: Tensor) -> Tensor:
    return (t1[..., 0].log() - t2[..., 0].log()).abs()


@register_distance("exponential", "pareto")
def _exponential(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return _log_ratio(t1, t2)


@register_distance("halfnormal")
def _halfnormal(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return math.sqrt(2) * _log_ratio(t1, t2)


@register_distance("rayleigh")
def _rayleigh(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return 2 * _log_ratio(t1, t2)


@register_distance("geometric")
def _geometric(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return 2 * (torch.atanh(torch.sqrt(1 - t1[..., 0])) - torch.atanh(torch.sqrt(1 - t2[..., 0]))).abs()


def negative_binomial_distance(r: float, p1: Tensor, p2: Tensor) -> Tensor:
    """NegativeBinomial(total_count r, torch's probs p): 2√r·|artanh√p₁ − artanh√p₂|."""
    return 2 * math.sqrt(r) * (torch.atanh(p1.sqrt()) - torch.atanh(p2.sqrt())).abs()


@register_distance("negativebinomial")
def _negative_binomial(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    return negative_binomial_distance(_fixed(model, "total_count"), t1[..., 0], t2[..., 0])


def gamma_fixed_shape(alpha: float, beta1: Tensor, beta2: Tensor) -> Tensor:
    """Gamma(α fixed, rate β) (I = α/β²): √α·|log(β₁/β₂)|."""
    return math.sqrt(alpha) * (beta1.log() - beta2.log()).abs()


def _tril(entries: Tensor, k: int) -> Tensor:
    rows, cols = torch.tril_indices(k, k, device=entries.device)
    out = entries.new_zeros((*entries.shape[:-1], k, k))
    out[..., rows, cols] = entries
    return out


def mvn_equal_means(scale_tril1: Tensor, scale_tril2: Tensor) -> Tensor:
    """√(½ Σ log² λᵢ), λᵢ the eigenvalues of Σ₁⁻¹Σ₂ for Σ = L Lᵀ (L ``[..., k, k]`` lower-triangular)."""
    # Σ₁⁻¹Σ₂ is similar to C Cᵀ with C = L₁⁻¹ L₂
    c = torch.linalg.solve_triangular(scale_tril1, scale_tril2, upper=False)
    lam = torch.linalg.eigvalsh(c @ c.transpose(-1, -2))
    return _safe_sqrt(0.5 * lam.log().square().sum(-1))


@register_distance("mvn")
def _mvn(model: Model, t1: Tensor, t2: Tensor) -> Tensor | None:
    k = int(_fixed(model, "k"))
    if t1.shape[-1] != k + k * (k + 1) // 2 or not bool((t1[..., :k] == t2[..., :k]).all()):
        return None
    return mvn_equal_means(_tril(t1[..., k:], k), _tril(t2[..., k:], k))


@register_distance("mvn_diag")
def _mvn_diag(model: Model, t1: Tensor, t2: Tensor) -> Tensor | None:
    k = int(_fixed(model, "k"))
    blocks = [p.name for p in getattr(model, "params", ())]
    if blocks != ["loc", "scale"] or t1.shape[-1] != 2 * k:
        return None
    each = location_scale_distance(t1[..., :k], t1[..., k:], t2[..., :k], t2[..., k:], 1.0, 0.0, 2.0)
    return torch.linalg.vector_norm(each, dim=-1)


def vonmises_natural_metric(eta: Tensor) -> Tensor:
    """Fisher metric of the von Mises family in its natural parameters η = κ(cos μ, sin μ), ``[..., 2, 2]``.

    A(η) = log I₀(|η|), so ∇²A = (A(r)/r)·I + h(r)·ηηᵀ with r = |η|, A = I₁/I₀ and
    h = (A′(r) − A(r)/r)/r²: analytic on the whole plane (½I at η = 0, the uniform distribution),
    by its series −1/8 + r²/24 − 11r⁴/1024 below r = 10⁻³.
    """
    from ..families.distributions import bessel_ratio, bessel_ratio_derivative

    r2 = eta.square().sum(-1)
    r = r2.sqrt()
    small = r < 1e-3
    rs = torch.where(small, torch.ones_like(r), r)
    ratio = bessel_ratio(rs)
    radial = torch.where(small, 0.5 - r2 / 16, ratio / rs)
    h = torch.where(
        small, -0.125 + r2 / 24 - 11 * r2.square() / 1024, (bessel_ratio_derivative(rs) - ratio / rs) / rs**2
    )
    eye = torch.eye(2, dtype=eta.dtype, device=eta.device)
    return radial[..., None, None] * eye + h[..., None, None] * eta.unsqueeze(-1) * eta.unsqueeze(-2)


@register_distance("vonmises")
def _vonmises(model: Model, t1: Tensor, t2: Tensor) -> Tensor:
    """The geodesic problem in η = κ(cos μ, sin μ): the metric is smooth there (also through κ = 0,
    where (κ, μ) are polar coordinates of a flat point) and μ's period 2π is built in, so locations 2π
    apart are the same point. Solved by :func:`~fisherkl.geometry.solver.solve_geodesic`."""
    from .solver import solve_geodesic

    def natural(t: Tensor) -> Tensor:
        mu, kappa = t[..., 0], t[..., 1]
        return torch.stack([kappa * torch.cos(mu), kappa * torch.sin(mu)], -1)

    shape = t1.shape[:-1]
    t1, t2 = t1.detach(), t2.detach()
    # the location of θ₂ nearest θ₁'s (so that locations 2π apart give the same η to the last bit)
    gap = t2[..., 0] - t1[..., 0]
    gap = gap - 2 * math.pi * torch.round(gap / (2 * math.pi))
    t2 = torch.stack([t1[..., 0] + gap, t2[..., 1]], -1)
    eta1, eta2 = natural(t1).reshape(-1, 2), natural(t2).reshape(-1, 2)
    return solve_geodesic(vonmises_natural_metric, eta1, eta2).length.reshape(shape)
