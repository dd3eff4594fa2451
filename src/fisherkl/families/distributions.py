"""Distributions the families need beyond, or more accurately than, torch.distributions.

* ``Accurate*`` subclasses override ``log_prob`` only. torch's log Γ differentiates twice through
  ``torch.polygamma(1, ·)``, which is off by up to ~1e-9 relative in float64, and some torch
  log-densities lose precision or derivatives at extreme points (Binomial at p = ½ through
  |logits|; Weibull and InverseGamma through their transforms). These use
  :func:`fisherkl.special.lgamma` and direct formulas, so every route agrees with the closed
  forms to a few ulp. Sampling, means and everything else are torch's.
* :class:`Logistic` (torch has none) and :class:`EnumerableMultinomial` (a Multinomial whose
  finite support can be summed over exactly).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Chi2,
    ContinuousBernoulli,
    Dirichlet,
    Distribution,
    Gamma,
    InverseGamma,
    Kumaraswamy,
    Multinomial,
    NegativeBinomial,
    VonMises,
    Weibull,
    constraints,
)
from torch.distributions.utils import broadcast_all, lazy_property

from ..special import lgamma


class AccurateBernoulli(Bernoulli):
    """torch's Bernoulli goes through logits of probabilities clamped to [eps, 1 − eps], so at
    p < eps (1.2e-7 in float32, 2.2e-16 in float64) its log-density no longer depends on p and every
    derivative is 0; this one is written in p directly (and its logits are not clamped)."""

    @lazy_property
    def logits(self) -> Tensor:  # type: ignore[override]
        return torch.log(self.probs) - torch.log1p(-self.probs)

    def log_prob(self, value: Tensor) -> Tensor:
        p, value = broadcast_all(self.probs, value)
        return torch.xlogy(value, p) + (1 - value) * torch.log1p(-p)


class AccurateCategorical(Categorical):
    """torch's Categorical clamps its probabilities to [eps, 1 − eps] before the log, which kills the
    derivative in any probability below eps; here log p is taken of the probabilities themselves."""

    @lazy_property
    def logits(self) -> Tensor:  # type: ignore[override]
        return torch.log(self.probs)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, accurate at both ends and with accurate derivatives: torch's expm1 backward
    uses expm1(x) + 1, which is 0 for x < −37, so log(−expm1(x)) has derivative 0 there."""
    near = x > -math.log(2)
    return torch.where(near, torch.log(-torch.expm1(torch.where(near, x, -1.0))), torch.log1p(-torch.exp(x)))


class AccurateBinomial(Binomial):
    """torch's Binomial.log_prob goes through |logits|, whose second derivative by autodiff is 0
    at p = ½; this one is written in p directly."""

    def log_prob(self, value: Tensor) -> Tensor:
        n, p = self.total_count, self.probs
        log_comb = lgamma(n + 1) - lgamma(value + 1) - lgamma(n - value + 1)
        return log_comb + torch.xlogy(value, p) + torch.xlogy(n - value, 1 - p)


class AccurateNegativeBinomial(NegativeBinomial):
    """torch's NegativeBinomial goes through logits of clamped probabilities (flat below eps); this one
    is log p(k) = log Γ(k + r) − log Γ(r) − log Γ(k + 1) + r log(1 − p) + k log p, in p directly."""

    @lazy_property
    def logits(self) -> Tensor:  # type: ignore[override]
        return torch.log(self.probs) - torch.log1p(-self.probs)

    def log_prob(self, value: Tensor) -> Tensor:
        r, p = self.total_count, self.probs
        return lgamma(value + r) - lgamma(r) - lgamma(value + 1) + r * torch.log1p(-p) + torch.xlogy(value, p)


class AccurateGamma(Gamma):
    def log_prob(self, value: Tensor) -> Tensor:
        a, b = self.concentration, self.rate
        return torch.xlogy(a, b) + torch.xlogy(a - 1, value) - b * value - lgamma(a)


class AccurateBeta(Beta):
    def log_prob(self, value: Tensor) -> Tensor:
        a, b = self.concentration1, self.concentration0
        return torch.xlogy(a - 1, value) + torch.xlogy(b - 1, 1 - value) + lgamma(a + b) - lgamma(a) - lgamma(b)


class AccurateDirichlet(Dirichlet):
    def log_prob(self, value: Tensor) -> Tensor:
        a = self.concentration
        return torch.xlogy(a - 1, value).sum(-1) + lgamma(a.sum(-1)) - lgamma(a).sum(-1)


class AccurateChi2(Chi2):
    def log_prob(self, value: Tensor) -> Tensor:
        return AccurateGamma.log_prob(self, value)  # type: ignore[arg-type]


class AccurateInverseGamma(InverseGamma):
    def log_prob(self, value: Tensor) -> Tensor:
        a, b = self.concentration, self.rate
        return torch.xlogy(a, b) - lgamma(a) - (a + 1) * torch.log(value) - b / value


class AccurateWeibull(Weibull):
    """Weibull(scale λ, concentration k): log p = log(k/λ) + (k − 1) log(x/λ) − (x/λ)^k."""

    def log_prob(self, value: Tensor) -> Tensor:
        k, lam = self.concentration, self.scale
        log_z = torch.log(value) - torch.log(lam)
        return torch.log(k) - torch.log(lam) + (k - 1) * log_z - torch.exp(k * log_z)


class AccurateVonMises(VonMises):
    """log p = κ cos(x − μ) − log 2π − log I₀(κ), with I₀ from the exponentially scaled i0e."""

    def log_prob(self, value: Tensor) -> Tensor:
        kappa = self.concentration
        return -2 * kappa * torch.sin((value - self.loc) / 2).square() - math.log(2 * math.pi) - log_i0e(kappa)


# asymptotic series in x = 1/κ (from I_ν(κ) ~ e^κ/√(2πκ) Σ (−1)^k a_k(ν)/κ^k), used for κ > 50
_ONE_MINUS_A = (0, 1 / 2, 1 / 8, 1 / 8, 25 / 128, 13 / 32, 1073 / 1024, 103 / 32, 375733 / 32768, 23797 / 512)
_A_PRIME = (0, 0, 1 / 2, 1 / 4, 3 / 8, 25 / 32, 65 / 32, 3219 / 512, 721 / 32, 375733 / 4096, 214173 / 512)
_LARGE_KAPPA = 50.0


def _poly(coeffs: tuple[float, ...], x: Tensor) -> Tensor:
    out = torch.zeros_like(x)
    for c in reversed(coeffs):
        out = out * x + c
    return out


# A(κ)/κ = I₁(κ)/(κ I₀(κ)) = ½ − κ²/16 + κ⁴/96 − … in κ² (radius 2.405², the first zero of I₀ on the
# imaginary axis), used below κ = ½ (14 terms: 4e-17 relative): i1e/i0e and its autodiff (1/κ terms
# that cancel) lose their higher derivatives there, and overflow them at κ ~ 1e-10 in float32
_A_OVER_KAPPA = (
    0.5,
    -0.0625,
    0.010416666666666666,
    -0.0017903645833333333,
    0.00030924479166666665,
    -5.346227575231481e-05,
    9.244081204530423e-06,
    -1.5984294275758127e-06,
    2.763921574894036e-07,
    -4.7792356615320695e-08,
    8.264018237190473e-09,
    -1.4289732706286064e-09,
    2.470910112963869e-10,
    -4.272575926081541e-11,
)
_SMALL_KAPPA = 0.5


def _split_kappa(kappa: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mask of large κ, κ safe for the direct branch, 1/κ safe for the series branch)."""
    large = kappa > _LARGE_KAPPA
    direct = torch.where(large | (kappa < _SMALL_KAPPA), torch.ones_like(kappa), kappa)
    inv = 1 / torch.where(large, kappa, torch.full_like(kappa, 2 * _LARGE_KAPPA))
    return large, direct, inv


def _small_kappa(kappa: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mask of small κ, κ safe for the small-κ series, A(κ)/κ by that series)."""
    small = kappa < _SMALL_KAPPA
    ks = torch.where(small, kappa, torch.zeros_like(kappa))
    return small, ks, _poly(_A_OVER_KAPPA, ks.square())


def bessel_ratio_complement(kappa: Tensor) -> Tensor:
    """1 − A(κ) = 1 − I₁(κ)/I₀(κ), without cancellation for large κ."""
    large, direct, inv = _split_kappa(kappa)
    small, ks, x = _small_kappa(kappa)
    mid = 1 - torch.special.i1e(direct) / torch.special.i0e(direct)
    return torch.where(large, _poly(_ONE_MINUS_A, inv), torch.where(small, 1 - ks * x, mid))


def bessel_ratio(kappa: Tensor) -> Tensor:
    """A(κ) = I₁(κ)/I₀(κ), the mean resultant length of a von Mises distribution (≈ κ/2 near 0)."""
    large, direct, inv = _split_kappa(kappa)
    small, ks, x = _small_kappa(kappa)
    mid = torch.special.i1e(direct) / torch.special.i0e(direct)
    return torch.where(large, 1 - _poly(_ONE_MINUS_A, inv), torch.where(small, ks * x, mid))


def bessel_ratio_derivative(kappa: Tensor) -> Tensor:
    """A′(κ) = 1 − A/κ − A² = Var(cos(x − μ)) > 0, by its asymptotic series for κ > 50 and A/κ's
    series below κ = ½."""
    large, direct, inv = _split_kappa(kappa)
    small, ks, x = _small_kappa(kappa)
    a = torch.special.i1e(direct) / torch.special.i0e(direct)
    mid = 1 - a / direct - a.square()
    return torch.where(large, _poly(_A_PRIME, inv), torch.where(small, 1 - x - (ks * x).square(), mid))


class _LogI0e(torch.autograd.Function):
    """log(e^{−κ} I₀(κ)) whose derivative −(1 − A(κ)) is computed without cancellation."""

    @staticmethod
    def forward(ctx: Any, kappa: Tensor) -> Tensor:
        ctx.save_for_backward(kappa)
        return torch.log(torch.special.i0e(kappa))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (kappa,) = ctx.saved_tensors
        return -grad * bessel_ratio_complement(kappa)


def log_i0e(kappa: Tensor) -> Tensor:
    """log(e^{−κ} I₀(κ)), differentiable to any order with accurate derivatives for large κ."""
    return _LogI0e.apply(kappa)  # type: ignore[no-any-return]


def log_i0(kappa: Tensor) -> Tensor:
    """log I₀(κ)."""
    return log_i0e(kappa) + kappa


class Logistic(Distribution):
    """Logistic(loc μ, scale s): log p = −z − 2 log(1 + e^{−z}) − log s, z = (x − μ)/s."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: Any, _instance: Any = None) -> Logistic:
        new = self._get_checked_instance(Logistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.scale = self.loc.expand(batch_shape), self.scale.expand(batch_shape)
        super(Logistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return (math.pi * self.scale).square() / 3

    def rsample(self, sample_shape: Any = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        tiny = torch.finfo(self.loc.dtype).tiny
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(tiny, 1 - 1e-7)
        return self.loc + self.scale * (torch.log(u) - torch.log1p(-u))

    def log_prob(self, value: Tensor) -> Tensor:
        z = (value - self.loc) / self.scale
        return -z - 2 * torch.nn.functional.softplus(-z) - torch.log(self.scale)

    def cdf(self, value: Tensor) -> Tensor:
        return torch.sigmoid((value - self.loc) / self.scale)

    def icdf(self, value: Tensor) -> Tensor:
        return self.loc + self.scale * torch.logit(value)

    def entropy(self) -> Tensor:
        return torch.log(self.scale) + 2


class EnumerableMultinomial(Multinomial):
    """A Multinomial whose finite support (all count vectors summing to n) can be enumerated; its
    log-density is written in the probabilities themselves (torch's clamps them to [eps, 1 − eps])."""

    has_enumerate_support = True

    def log_prob(self, value: Tensor) -> Tensor:
        p = self.probs
        n = torch.as_tensor(float(self.total_count), dtype=p.dtype, device=p.device)
        return lgamma(n + 1) - lgamma(value + 1).sum(-1) + torch.xlogy(value, p).sum(-1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        n, k = self.total_count, self._categorical.param_shape[-1]
        rows = []  # stars and bars: k − 1 bar positions among n + k − 1 slots
        for bars in itertools.combinations(range(n + k - 1), k - 1):
            edges = (-1, *bars, n + k - 1)
            rows.append([edges[i + 1] - edges[i] - 1 for i in range(k)])
        counts = torch.tensor(rows, dtype=self.probs.dtype, device=self.probs.device)
        counts = counts.reshape((-1,) + (1,) * len(self.batch_shape) + (k,))
        return counts.expand((-1, *self.batch_shape, k)) if expand else counts


class AccurateKumaraswamy(Kumaraswamy):
    """log p = log a + log b + (a − 1) log x + (b − 1) log(1 − x^a)."""

    def log_prob(self, value: Tensor) -> Tensor:
        a, b = self.concentration1, self.concentration0
        log_x = torch.log(value)
        return torch.log(a) + torch.log(b) + (a - 1) * log_x + (b - 1) * torch.log(-torch.expm1(a * log_x))


# A(η) = η/2 + log(sinh(η/2)/(η/2)) and its derivatives, by their Bernoulli-number series
# (radius 2π) below |η| = 2, where the direct forms cancel: coefficients B₂ₙ/(2n·(2n)!), B₂ₙ/(2n)!
# and B₂ₙ(2n − 1)/(2n)!
_CB_SERIES = 2.0
_CB_A = (
    0.041666666666666664,
    -0.00034722222222222224,
    5.5114638447971785e-06,
    -1.033399470899471e-07,
    2.08767569878681e-09,
    -4.403491782239578e-11,
    9.55895466477477e-13,
    -2.1185501852016142e-14,
    4.770034475709914e-16,
    -1.087434349279031e-17,
    2.5040921947091955e-19,
    -5.814360285755218e-21,
    1.3595027075497952e-22,
    -3.1976847953705525e-24,
    7.559841507792277e-26,
    -1.7952470840225633e-27,
)
_CB_A1 = (
    0.08333333333333333,
    -0.001388888888888889,
    3.306878306878307e-05,
    -8.267195767195768e-07,
    2.08767569878681e-08,
    -5.284190138687493e-10,
    1.3382536530684679e-11,
    -3.3896802963225827e-13,
    8.586062056277845e-15,
    -2.174868698558062e-16,
    5.5090028283602295e-18,
    -1.3954464685812522e-19,
    3.534707039629467e-21,
    -8.953517427037546e-23,
    2.267952452337683e-24,
    -5.744790668872202e-26,
)
_CB_A2 = (0.08333333333333333, -0.004166666666666667, 0.00016534391534391533, -5.787037037037037e-06,
          1.8789081289081288e-07, -5.812609152556243e-09, 1.7397297489890083e-10, -5.084520444483875e-12,
          1.4596305495672335e-13, -4.1322505272603176e-15, 1.1568905939556482e-16, -3.2095268777368804e-18,
          8.836767599073669e-20, -2.4174497053001377e-21, 6.577062111779281e-23, -1.780885107350383e-24)  # fmt: skip


def _cb_split(eta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    small = eta.abs() < _CB_SERIES
    return small, torch.where(small, eta, torch.zeros_like(eta)), torch.where(small, torch.full_like(eta, 3.0), eta)


def cb_log_partition(eta: Tensor) -> Tensor:
    """A(η) = log((e^η − 1)/η) of the continuous Bernoulli."""
    small, es, e = _cb_split(eta)
    direct = torch.where(e > 0, e + torch.log(-torch.expm1(-e)), torch.log(-torch.expm1(e))) - torch.log(e.abs())
    e2 = es.square()
    return torch.where(small, es / 2 + e2 * _poly(_CB_A, e2), direct)


def cb_log_partition_d1(eta: Tensor) -> Tensor:
    """A′(η) = 1/(1 − e^{−η}) − 1/η, the mean of x."""
    small, es, e = _cb_split(eta)
    direct = -1 / torch.expm1(-e) - 1 / e
    return torch.where(small, 0.5 + es * _poly(_CB_A1, es.square()), direct)


def cb_log_partition_d2(eta: Tensor) -> Tensor:
    """A″(η) = 1/η² − 1/(4 sinh²(η/2)), the variance of x."""
    small, es, e = _cb_split(eta)
    direct = 1 / e.square() - 1 / (4 * torch.sinh(e / 2).square())
    return torch.where(small, _poly(_CB_A2, es.square()), direct)


class AccurateContinuousBernoulli(ContinuousBernoulli):
    """log p(x) = η x − A(η), η = logit λ, with A evaluated stably near λ = ½."""

    def log_prob(self, value: Tensor) -> Tensor:
        eta = self.logits
        return eta * value - cb_log_partition(eta)
