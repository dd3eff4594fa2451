"""Expectations E_{x∼p}[f(x)] taken exactly where possible, else by Monte Carlo.

Exact schemes, chosen from the distribution's support:

* ``finite``: a sum over ``enumerate_support()`` (Bernoulli, Binomial, Categorical, …).
* ``series``: a sum over {0, 1, 2, …} truncated once the tail mass bound p_K·r/(1−r), with
  r = p_K/p_{K−1} < 1, is below ``tail_tol`` (valid for log-concave pmfs: Poisson, Geometric, …).
* ``quadrature``: double-exponential (tanh-sinh / exp-sinh) quadrature for one-dimensional
  continuous supports, split at the distribution's centre so a kink there (Laplace) costs
  nothing, refined level by level until successive levels agree to ``rtol``. A float32
  distribution is integrated on float64 nodes (which reach 1e-308 toward an end, not 1e-45), and
  the part beyond the outermost node toward each end is bounded from a power law fitted there.

An integrand is a callable ``x ↦ (log p(x), f(x))`` with ``x`` of shape ``[n, *batch, *event]``,
``log p`` of shape ``[n, *batch]`` and ``f`` of shape ``[n, *batch, *out]``; computing log p
inside the integrand lets its autograd graph reach θ, so expectations stay differentiable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, VonMises
from torch.distributions import constraints as tc

from . import arguments
from .errors import ConvergenceError, FisherKLError, NumericalError

Integrand = Callable[[Tensor], tuple[Tensor, "Tensor | LogScaled"]]
# the last exp-sinh node toward an infinite end: x = s·e^{π/2·sinh 6.5} ≈ s·e^522, so that heavy tails
# (Pareto α = 0.1: mass x^{−α} ≈ 2e-23 beyond it) are reached
_EXP_SINH_T = 6.5
_STALL_RTOL = 1e-7  # a quadrature that stops improving below this relative size returns (error stated)


def exact_scheme(dist: Distribution) -> str | None:
    """'finite', 'series', 'quadrature' or None (no exact scheme: use Monte Carlo)."""
    if dist.has_enumerate_support:
        return "finite"
    if dist.event_shape != torch.Size([]):
        return None
    if isinstance(dist.support, tc._IntegerGreaterThan):
        return "series"
    if _dist_bounds(dist) is not None:
        return "quadrature"
    return None


def _dist_bounds(dist: Distribution) -> tuple[object, object] | None:
    # torch declares VonMises on the whole real line although its density is 2π-periodic:
    # integrate over one period
    if isinstance(dist, VonMises):
        return (-math.pi, math.pi)
    return _bounds(dist.support)


def _bounds(support: tc.Constraint) -> tuple[object, object] | None:
    mixture = getattr(tc, "MixtureSameFamilyConstraint", None)
    if mixture is not None and isinstance(support, mixture):
        inner = _bounds(support.base_constraint)
        scalar = inner is not None and all(not isinstance(b, Tensor) or b.numel() == 1 for b in inner)
        return inner if scalar else None
    if isinstance(support, tc._Real):
        return (-math.inf, math.inf)
    if isinstance(support, (tc._GreaterThan, tc._GreaterThanEq)):
        return (support.lower_bound, math.inf)
    if isinstance(support, tc._LessThan):
        return (-math.inf, support.upper_bound)
    if isinstance(support, (tc._Interval, tc._HalfOpenInterval)):
        return (support.lower_bound, support.upper_bound)
    return None


class LogScaled(NamedTuple):
    """An integrand value ``exp(log_scale)·value``, kept apart so that a huge factor (like
    (q/p)² in a χ² divergence) meets the tiny density p in log space instead of overflowing.

    ``absolute``: ``log_scale`` is the whole log-weight of the node (it replaces log p, e.g. log q
    for a term p·(q/p)·v = q·v), so that log p + (log q − log p) is never formed in rounding.
    """

    value: Tensor
    log_scale: Tensor
    absolute: bool = False

    def dense(self, logp: Tensor) -> Tensor:
        """exp(log_scale)·value relative to p (the integrand f itself), given log p at the nodes."""
        scale = self.log_scale - logp if self.absolute else self.log_scale
        return self.value * _expand_out(torch.exp(scale), self.value.ndim)

    def log_weight(self, logp: Tensor) -> Tensor:
        """log p + log_scale (or log_scale alone when absolute)."""
        return self.log_scale if self.absolute else logp + self.log_scale


def _weighted_sum(logw: Tensor, logp: Tensor, f: Tensor | LogScaled, drop_tiny: bool = True) -> tuple[Tensor, Tensor]:
    """Σₙ exp(logw + logp)·f over the node axis 0; and Σ weights.

    Nodes of zero weight are ignored. With ``drop_tiny`` (quadrature) so are nodes whose weight is
    below 1e-100 where the integrand came out non-finite (torch's densities lose precision at such
    extreme points of a continuous tail; their true contribution is negligible). A sum over support
    points (finite, series) never drops a point of positive probability: a non-finite integrand
    there makes the sum non-finite, and the caller refuses it. A non-finite integrand at a node of
    real weight is kept: a KL with q = 0 where p > 0 is +inf.
    """
    w = torch.exp(logw + logp)
    if isinstance(f, LogScaled):
        f, logw_f = f.value, logw + f.log_weight(logp)
    else:
        logw_f = logw + logp
    w_f = torch.exp(logw_f)
    wb = w_f.reshape(w_f.shape + (1,) * (f.ndim - w_f.ndim))
    keep = wb > 0
    if drop_tiny:
        w_node = w.reshape(w.shape + (1,) * (f.ndim - w.ndim))
        keep = keep & (torch.isfinite(f) | (w_node > 1e-100))
    # zero both factors where dropped (not just the product), so no NaN reaches a gradient
    zero = torch.zeros_like(f)
    wf = torch.where(keep, wb, zero) * torch.where(keep, f, zero)
    return wf.sum(0), torch.nan_to_num(w, nan=0.0).sum(0)


_ROUNDING_ULPS = 4.0


def _rounding(
    logw: Tensor, logp: Tensor, f: Tensor | LogScaled, drop_tiny: bool = True, dtype: torch.dtype | None = None
) -> Tensor:
    """4·eps·Σₙ|w·f|: the rounding of a weighted sum and of the last bits of its terms, a floor under the
    stated error of a series or quadrature (levels or tail bounds that agree to the last bit still carry
    it). Finite sums state the defect of their probabilities instead (:func:`_finite`). ``dtype``: the
    precision the terms were computed in, where that is below the sum's own (float32 densities
    integrated on float64 nodes)."""
    if isinstance(f, LogScaled):
        g: Tensor | LogScaled = LogScaled(f.value.detach().abs(), f.log_scale.detach(), f.absolute)
    else:
        g = f.detach().abs()
    total, _ = _weighted_sum(logw.detach(), logp.detach(), g, drop_tiny)
    return _ROUNDING_ULPS * torch.finfo(dtype or total.dtype).eps * total


def _require_mass(mass: Tensor, scheme: str, dist: Distribution, tol: float = 1e-3) -> Tensor:
    """The probability defect |1 − Σ p| of the points summed; refuses (NumericalError) beyond ``tol``."""
    defect = (1 - mass.detach()).abs()
    defect = torch.nan_to_num(defect, nan=math.inf)
    if bool((defect > tol).any()):
        worst = float(defect.max())
        raise NumericalError(
            f"{scheme} expectation over {type(dist).__name__}: the points summed hold probability "
            f"{1 - worst if worst <= 1 else math.nan:.3g} instead of 1 (defect {worst:.3g}): the density cannot be "
            f"resolved at these parameters in {_dtype_of(dist)} (mass out of reach or lost to rounding); use "
            "float64, method='closed' or 'kl_hessian' where available, or expectation='mc'"
        )
    return defect


def _expand_out(t: Tensor, ndim: int) -> Tensor:
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


# --- finite supports -----------------------------------------------------------------------------
_MAX_SUPPORT = 1 << 22  # support points × batch elements summed at once


def _support_size(dist: Distribution) -> float | None:
    """The number of support points ``enumerate_support`` would build, where it is known in advance."""
    from torch.distributions import Binomial, Categorical, Multinomial

    if isinstance(dist, Multinomial):
        n, k = int(dist.total_count), int(dist._categorical.param_shape[-1])
        return float(math.comb(n + k - 1, k - 1))
    if isinstance(dist, Binomial):
        return float(dist.total_count.max()) + 1 if dist.total_count.numel() else 1.0
    if isinstance(dist, Categorical):
        return float(dist._num_events)
    return None


def _finite(dist: Distribution, integrand: Integrand) -> tuple[Tensor, Tensor]:
    size = _support_size(dist)
    if size is not None and size * max(1, dist.batch_shape.numel()) > _MAX_SUPPORT:
        raise NumericalError(
            f"exact sum over {type(dist).__name__}: {size:.4g} support points × {dist.batch_shape.numel()} parameter "
            f"sets is too many to enumerate; use method='closed' or 'kl_hessian', or expectation='mc'"
        )
    x = dist.enumerate_support(expand=True)
    logp, f = integrand(x)
    value, mass = _weighted_sum(torch.zeros_like(logp), logp, f, drop_tiny=False)
    defect = _require_mass(mass, "finite-sum", dist)
    # the probabilities themselves are rounded: their defect times the value's size is the error
    scale = value.detach().abs()
    if scale.ndim > defect.ndim:
        scale = _expand_out(scale.flatten(defect.ndim).amax(-1), scale.ndim)
    return value, torch.nan_to_num(_expand_out(defect, value.ndim) * scale, nan=math.inf).expand_as(value)


# --- countable supports --------------------------------------------------------------------------
_SERIES_SPREAD = 12.0  # start the sum this many standard deviations below the mean (log-concave tails)


def _series_start(dist: Distribution, lower: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Where the sum starts, per batch element: ``lower``, or mean − 12·sd when the mass sits far above it."""
    batch = dist.batch_shape
    start = torch.full(batch, float(lower), dtype=dtype, device=device)
    try:
        mean = dist.mean.detach().to(dtype).expand(batch)
        sd = dist.stddev.detach().to(dtype).expand(batch)
    except (NotImplementedError, AttributeError, RuntimeError):
        return start
    far = torch.floor(mean - _SERIES_SPREAD * sd)
    ok = torch.isfinite(far) & (far > lower)
    return torch.where(ok, far, start)


def _series_top(dist: Distribution, start: Tensor) -> Tensor:
    """Where the mass ends, per batch element: mean + 12·sd (``start`` where the moments are unknown)."""
    try:
        mean = dist.mean.detach().to(start.dtype)
        sd = dist.stddev.detach().to(start.dtype)
    except (NotImplementedError, AttributeError, RuntimeError):
        return start
    return torch.maximum((mean + _SERIES_SPREAD * sd).expand_as(start), start)


def _series(
    dist: Distribution,
    integrand: Integrand,
    rtol: float,
    tail_tol: float,
    max_terms: int,
    others: tuple[Distribution, ...] = (),
) -> tuple[Tensor, Tensor]:
    """Σₖ p(k)·f(k) over k = s, s + 1, …, truncated where the tails on both sides are bounded.

    The start s is, per batch element, 12 standard deviations below the lowest mean of p and of each
    of ``others`` (e.g. q in E_p[g(q/p)], whose mass may sit far from p's), or the support's lower
    bound where that is closer. With tₖ = p(k)·max(|f(k)|, 1):

    - right tail: with ρ = t_K/t_{K−1} < 1 at the last term K, at most t_K·ρ/(1 − ρ) when the ratios
      keep falling (log-concave terms: Poisson, geometric and negative binomial pmfs times
      polynomial or geometric integrands); a ratio still rising is extrapolated over the next
      doubling first. The sum also runs until the tail mass of p and of each of ``others`` is below
      ``tail_tol``.
    - left tail (s above the lower bound): at most t_s·ρ′/(1 − ρ′), ρ′ = t_s/t_{s+1} (toward the left
      the ratios of log-concave terms fall at least as fast), and p's own mass below s by its pmf
      ratio; where that bound is not within tolerance the sum is redone from the lower bound.

    A sum whose terms grow without bound (a divergent χ²) overflows to +inf and is returned as +inf.
    The points summed must hold p's probability (NumericalError otherwise); the defect × the value's
    size is added to the error. Sums that would need more than ``max_terms`` terms, or integers
    beyond the dtype's exact range, are refused up front (NumericalError) instead of running for
    minutes; one still growing after ``max_terms`` terms is refused (ConvergenceError).
    """
    lower = float(dist.support.lower_bound)
    batch = dist.batch_shape
    probe = dist.log_prob(torch.as_tensor(lower).expand(batch))
    dtype, device = probe.dtype, probe.device
    dists = (dist, *others)
    start = torch.stack([_series_start(d, lower, dtype, device).expand(batch) for d in dists]).amin(0)
    top = torch.stack([_series_top(d, start).expand(batch) for d in dists]).amax(0)
    result = _series_from(dist, integrand, rtol, tail_tol, max_terms, others, start, top)
    if result is None:  # the left tail is not bounded from the start: sum from the lower bound
        start = torch.full(batch, lower, dtype=dtype, device=device)
        result = _series_from(dist, integrand, rtol, tail_tol, max_terms, others, start, top)
        assert result is not None  # no left tail below the lower bound
    return result


def _series_from(
    dist: Distribution,
    integrand: Integrand,
    rtol: float,
    tail_tol: float,
    max_terms: int,
    others: tuple[Distribution, ...],
    start: Tensor,
    top: Tensor,
) -> tuple[Tensor, Tensor] | None:
    """:func:`_series` from ``start`` ``[*batch]``; None where its left tail is not within tolerance."""
    lower = float(dist.support.lower_bound)
    batch = dist.batch_shape
    dtype, device = start.dtype, start.device
    width = top - start
    width_max = float(width.max()) if width.numel() else 0.0
    if width_max > max_terms or not math.isfinite(width_max):
        raise NumericalError(
            f"series expectation over {type(dist).__name__}: the mass spans about {width_max:.3g} integers, beyond "
            f"the {max_terms} terms an exact sum may take; use method='closed' or 'kl_hessian', or expectation='mc'"
        )
    top_max = float(top.max()) if top.numel() else 0.0
    digits = round(-math.log2(torch.finfo(dtype).eps)) + 1  # 53 in float64, 24 in float32
    if top_max > 2.0**digits:
        raise NumericalError(
            f"series expectation over {type(dist).__name__}: the mass sits near {top_max:.3g}, beyond the integers "
            f"{dtype} represents exactly (2^{digits}); use float64 or method='closed'"
        )
    # mass of p and of each of others below the start (zero where the sum starts at the lower bound)
    inner = start > lower
    left = torch.zeros(batch, dtype=dtype, device=device)
    for d in (dist, *others):
        log_s = d.log_prob(start).detach()
        log_before = d.log_prob(torch.where(inner, start - 1, start)).detach()
        rho_d = torch.exp(log_before - log_s).clamp(max=1.0)
        left_d = torch.where(rho_d < 1, torch.exp(log_s) * rho_d / (1 - rho_d), math.inf)
        left = torch.maximum(left, torch.nan_to_num(torch.where(inner, left_d, 0.0), nan=math.inf))
    left_err: Tensor | None = None
    offset, chunk = 0, 64
    total: Tensor | None = None
    mass = torch.zeros(batch, dtype=dtype, device=device)
    rounding: Tensor | float = 0.0
    prev_logp: Tensor | None = None
    prev_logt: Tensor | None = None
    while True:
        k = torch.arange(offset, offset + chunk, dtype=dtype, device=device).reshape((-1,) + (1,) * len(batch))
        x = start + k
        logp, f = integrand(x)
        part, part_mass = _weighted_sum(torch.zeros_like(logp), logp, f, drop_tiny=False)
        total = part if total is None else total + part
        rounding = rounding + _rounding(torch.zeros_like(logp), logp, f, drop_tiny=False)
        mass = mass + part_mass
        offset += chunk
        # tail of the terms t_k = p(k)·max(|f(k)|, 1), in log space
        logt = _log_terms(logp.detach(), f, len(batch))
        if left_err is None:  # below the first term, by the ratio of the first two
            rho_left = torch.exp(logt[0] - logt[1])
            left_terms = torch.where(rho_left < 1, torch.exp(logt[0]) * rho_left / (1 - rho_left), math.inf)
            left_terms = torch.where(torch.isneginf(logt[0]), torch.zeros_like(left_terms), left_terms)
            left_err = torch.where(inner, torch.nan_to_num(2 * left_terms, nan=math.inf), 0.0)
        # tail mass of p and of each of others (their pmf ratios at the end)
        last = logp[-1].detach()
        before = logp[-2].detach() if chunk > 1 else prev_logp
        prev_logp = last
        log_r = last - before if before is not None else torch.zeros_like(last)
        r = torch.exp(log_r).clamp(max=1.0)
        tail = torch.where(r < 1, torch.exp(last) * r / (1 - r), torch.full_like(last, math.inf))
        ends = x[-2:].expand((2, *batch))
        for other in others:
            lo = other.log_prob(ends).detach()
            r_o = torch.exp(lo[1] - lo[0]).clamp(max=1.0)
            tail_o = torch.where(r_o < 1, torch.exp(lo[1]) * r_o / (1 - r_o), torch.full_like(lo[1], math.inf))
            tail = torch.maximum(tail, torch.nan_to_num(tail_o, nan=math.inf))
        lt_last, lt_before = logt[-1], logt[-2] if chunk > 1 else prev_logt
        lt_earlier = logt[-3] if chunk > 2 else lt_before
        prev_logt = lt_last
        rho = torch.exp(lt_last - lt_before) if lt_before is not None else torch.ones_like(lt_last)
        rho_prev = torch.exp(lt_before - lt_earlier) if lt_earlier is not None else rho
        rising = torch.clamp(rho - rho_prev, min=0.0)
        rho_bound = torch.nan_to_num(rho + rising * offset, nan=math.inf)
        term_tail = torch.where(
            rho_bound < 1, torch.exp(lt_last) * rho_bound / (1 - rho_bound), torch.full_like(lt_last, math.inf)
        )
        term_tail = torch.where(torch.isneginf(lt_last), torch.zeros_like(term_tail), term_tail)
        err = torch.nan_to_num(2 * term_tail, nan=math.inf)
        scale = total.detach().abs()
        if scale.ndim > tail.ndim:
            scale = scale.flatten(tail.ndim).amax(-1)
        overflow = torch.isinf(scale)
        done = overflow | ((tail < tail_tol) & (err <= rtol * scale + tail_tol))
        if bool(done.all()):
            bounded = overflow | ((left < tail_tol) & (left_err <= rtol * scale + tail_tol))
            if not bool(bounded.all()):
                return None
            # an overflowed (divergent) sum is +inf whatever mass it has not reached yet
            defect = _require_mass(torch.where(overflow, torch.ones_like(mass), mass), "series", dist)
            err = torch.where(overflow, torch.zeros_like(err), err + left_err + defect * scale)
            err = torch.where(_expand_out(overflow, total.ndim), 0.0, _expand_out(err, total.ndim) + rounding)
            return total, err.expand_as(total)
        if offset >= max_terms:
            raise ConvergenceError(
                f"series expectation not converged after {offset} terms (tail mass bound "
                f"{float(tail.max()):.3g}, terms still falling by no more than a factor "
                f"{float(rho_bound.max()):.3g}); the distribution may be too wide or the sum may diverge"
            )
        chunk = min(chunk * 2, 1 << 16)


def _log_terms(logp: Tensor, f: Tensor | LogScaled, nbatch: int) -> Tensor:
    """log(p(k)·max(|f(k)|, 1)) ``[n, *batch]`` (the largest over extra output dimensions), in log
    space so that a huge |f| at a tiny p neither overflows nor is lost."""
    if isinstance(f, LogScaled):
        scale = f.log_weight(logp).detach() - logp
        log_abs = torch.log(f.value.detach().abs()) + _expand_out(scale, f.value.ndim)
    else:
        log_abs = torch.log(f.detach().abs())
    log_abs = torch.nan_to_num(log_abs, nan=math.inf)
    if log_abs.ndim > nbatch + 1:
        log_abs = log_abs.flatten(nbatch + 1).amax(-1)
    return logp + torch.clamp(log_abs, min=0.0)


# --- one-dimensional quadrature ------------------------------------------------------------------
def _center_scale(dist: Distribution, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """A point inside the support where the mass is, and a length scale (both detached)."""
    batch, dtype, device = dist.batch_shape, lo.dtype, lo.device
    nan = torch.full(batch, math.nan, dtype=dtype, device=device)
    c, s = nan.clone(), nan.clone()
    try:
        c = dist.mean.detach().to(dtype).expand(batch).clone()
        s = dist.stddev.detach().to(dtype).expand(batch).clone()
    except (NotImplementedError, AttributeError, RuntimeError):
        pass
    bad = ~(torch.isfinite(c) & torch.isfinite(s) & (s > 0))
    if bool(bad.any()):
        try:
            q = torch.tensor([0.25, 0.5, 0.75], dtype=dtype, device=device).reshape((3,) + (1,) * len(batch))
            qs = dist.icdf(q.expand((3, *batch))).detach().to(dtype)
            c = torch.where(bad, qs[1], c)
            s = torch.where(bad, qs[2] - qs[0], s)
        except (NotImplementedError, AttributeError, RuntimeError, ValueError):
            pass
    bad = ~(torch.isfinite(c) & torch.isfinite(s) & (s > 0))
    c = torch.where(bad, torch.zeros_like(c), c)
    s = torch.where(bad, torch.ones_like(s), s)
    # keep the centre strictly inside the support
    inside = (c > lo) & (c < hi)
    finite_both = torch.isfinite(lo) & torch.isfinite(hi)
    fallback = torch.where(finite_both, (lo + hi) / 2, torch.where(torch.isfinite(lo), lo + s, hi - s))
    c = torch.where(inside, c, fallback)
    return c, s


def _segment_nodes(a: Tensor, b: Tensor, s: Tensor, h: float, t_cap: Tensor | float = 4.5) -> tuple[Tensor, Tensor]:
    """Nodes ``[n, *batch]`` and log weights (log h·dx/dt) for ∫_a^b, elementwise in the batch.

    Finite [a, b]: x = a + (b − a)·σ(π·sinh t) (tanh-sinh, written with the logistic σ so that
    distances to both ends stay accurate). [a, ∞): x = a + s·exp(π/2·sinh t) (exp-sinh), and
    (−∞, b]: x = b − s·exp(π/2·sinh t). Nodes cluster double-exponentially at finite ends, so
    end-point singularities and kinks there cost nothing.
    """
    dtype, device = s.dtype, s.device
    t = torch.arange(-6.5, 6.5 + h / 2, h, dtype=dtype, device=device).reshape((-1,) + (1,) * s.ndim)
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    # tanh-sinh on finite segments
    v = math.pi * torch.sinh(t)
    length = torch.where(fa & fb, b - a, torch.ones_like(s))
    x_fin = torch.where(fa, a, torch.zeros_like(a)) + length * torch.sigmoid(v)
    lw_fin = torch.log(length) + F.logsigmoid(v) + F.logsigmoid(-v) + torch.log(math.pi * torch.cosh(t))
    # exp-sinh toward an infinite end (t capped at t_cap: x reaches s·e^{π/2·sinh t_cap})
    ti = torch.minimum(t, torch.as_tensor(t_cap, dtype=dtype, device=device))
    u = math.pi / 2 * torch.sinh(ti)
    offset = s * torch.exp(u)
    x_inf = torch.where(fa, a + offset, torch.where(fb, b - offset, offset))
    lw_inf = torch.log(s) + u + torch.log(math.pi / 2 * torch.cosh(ti))
    lw_inf = torch.where(t > t_cap, torch.full_like(lw_inf, -math.inf), lw_inf)
    x = torch.where(fa & fb, x_fin, x_inf)
    lw = torch.where(fa & fb, lw_fin, lw_inf) + math.log(h)
    return x, lw


def _quadrature_nodes(
    lo: Tensor, hi: Tensor, points: Tensor, s: Tensor, h: float, t_cap: Tensor | float = 4.5
) -> tuple[Tensor, Tensor]:
    """Nodes and log weights for ∫_lo^hi split at the sorted break ``points`` ``[m, *batch]``."""
    ends = torch.cat([lo.unsqueeze(0), points, hi.unsqueeze(0)], 0)
    xs, lws = [], []
    for j in range(ends.shape[0] - 1):
        x, lw = _segment_nodes(ends[j], ends[j + 1], s, h, t_cap)
        xs.append(x)
        lws.append(lw)
    x, lw = torch.cat(xs, 0), torch.cat(lws, 0)
    # nodes that rounded onto (or beyond) an end of the support get weight zero
    outside = (x <= lo) | (x >= hi) | ~torch.isfinite(x)
    lw = torch.where(outside, torch.full_like(lw, -math.inf), lw)
    x = torch.where(outside, points[:1].expand_as(x), x)
    return x, lw


def _tail_reach(dist: Distribution, lo: Tensor, hi: Tensor, c: Tensor, s: Tensor) -> Tensor:
    """How far exp-sinh nodes go toward an infinite end: t = 4.5 (x = c ± s·e^70.7), or t = 6.5
    (x = c ± s·e^522) where the tail mass beyond e^70.7 is still above ~1e-17 (heavy tails: Pareto
    and Student t with small exponents). Light tails keep the shorter reach, where the integrand's
    derivatives cannot overflow."""
    reach = math.pi / 2 * math.sinh(4.5)
    heavy = torch.zeros_like(s, dtype=torch.bool)
    with torch.no_grad():
        for end, sign in ((hi, 1.0), (lo, -1.0)):
            if bool(torch.isfinite(end).all()):
                continue
            x = c + sign * s * math.exp(reach)
            try:
                logp = dist.log_prob(x.to(c.dtype))
            except (ValueError, RuntimeError):
                continue
            tail = torch.nan_to_num(logp + torch.log(s) + reach, nan=-math.inf)  # ≈ log(x·p(x)) ~ log mass beyond
            heavy |= ~torch.isfinite(end) & (tail > -40.0)
    return torch.where(heavy, torch.full_like(s, _EXP_SINH_T), torch.full_like(s, 4.5))


class _NotPromotable(Exception):
    """The integrand does not compute in float64 when handed float64 nodes."""


def _quadrature(
    dist: Distribution,
    integrand: Integrand,
    rtol: float,
    max_level: int,
    others: tuple[Distribution, ...],
    min_level: int = 4,
    noise_column: bool = False,
) -> tuple[Tensor, Tensor]:
    """∫ p·f by :func:`_quadrature_in`; for a distribution in a precision below float64 (float32), on
    float64 nodes, its value and error then cast back to the distribution's dtype.

    The nodes' dtype bounds what they reach: float32 nodes stop at 1.4e-45 (and 3.4e38), beyond which a
    density with an integrable singularity at a finite end (a chi², Gamma or Beta shape < 1: p ∝ x^(α−1))
    still holds real mass — x^α = 1e-5 of it at α = 0.12 — carrying the largest values of a score
    (log x). float64 nodes reach 1e-308, where that mass is 1e-37. The density and integrand keep their
    own precision (torch promotes the terms in x to float64; those in θ stay float32) and the rounding
    floor of the error is the distribution's. An integrand that estimates its own rounding
    (``noise_column``: the divergences') does so with the distribution's ε, not the nodes'. Not done on
    devices without float64 (MPS), or where the integrand does not compute in float64 given float64
    nodes (it fails, or returns log p in its own dtype): those integrate on nodes of the distribution's
    own dtype.
    """
    ref = _reference(dist)
    own, device = (ref.dtype, ref.device) if ref is not None else (torch.get_default_dtype(), torch.device("cpu"))
    if torch.finfo(own).bits < 64 and device.type != "mps":
        try:
            value, err = _quadrature_in(
                dist, integrand, rtol, max_level, others, min_level, noise_column, torch.float64, own, device
            )
        except _NotPromotable:
            pass  # integrate in the distribution's own dtype
        else:
            return value.to(own), err.to(own)
    return _quadrature_in(dist, integrand, rtol, max_level, others, min_level, noise_column, own, own, device)


def _quadrature_in(
    dist: Distribution,
    integrand: Integrand,
    rtol: float,
    max_level: int,
    others: tuple[Distribution, ...],
    min_level: int,
    noise_column: bool,
    work: torch.dtype,
    own: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """:func:`_quadrature` on nodes of dtype ``work`` for a distribution computing in ``own``; raises
    _NotPromotable where the integrand does not take nodes of a dtype above its own."""

    def evaluate(x: Tensor) -> tuple[Tensor, Tensor | LogScaled]:
        if work == own:
            return integrand(x)
        try:
            logp, f = integrand(x)
        except FisherKLError:
            raise
        except (RuntimeError, TypeError, ValueError) as e:  # e.g. a matmul of float64 nodes with float32 weights
            raise _NotPromotable from e
        if logp.dtype != work:  # the density cast the nodes to its own dtype
            raise _NotPromotable
        return logp, f

    bounds = _dist_bounds(dist)
    assert bounds is not None
    batch = dist.batch_shape
    dtype = work
    lo = torch.as_tensor(bounds[0], dtype=dtype, device=device).expand(batch)
    hi = torch.as_tensor(bounds[1], dtype=dtype, device=device).expand(batch)
    c, s = _center_scale(dist, lo, hi)
    t_cap = _tail_reach(dist, lo, hi, c, s)
    centers = [c] + [_center_scale(o, lo, hi)[0].expand(batch) for o in others]
    points = torch.sort(torch.stack(centers, 0), 0).values
    previous: Tensor | None = None
    previous_mass = torch.zeros(())
    diff = torch.full((), math.inf)
    for level in range(2, max_level + 1):
        x, lw = _quadrature_nodes(lo, hi, points, s, 2.0**-level, t_cap)
        logp, f = evaluate(x)
        value, mass = _weighted_sum(lw, logp, f)
        if value.requires_grad:
            # nodes whose log-density or integrand came out non-finite would still send 0·NaN
            # into the gradient: move them to the centre with weight zero and evaluate again
            dense = f.dense(logp) if isinstance(f, LogScaled) else f
            # also nodes whose weight in the integral underflows: they add nothing to the value, but their
            # derivatives may overflow (x² at x ~ 1e200) or be 0·NaN (a log-sum-exp over components of
            # which one is −inf) and send NaN into the gradient
            weight = f.log_weight(logp).detach() if isinstance(f, LogScaled) else logp.detach()
            under = torch.isfinite(logp.detach()) & (torch.exp(lw + weight) == 0)  # in the dtype's own range
            bad = ~torch.isfinite(logp.detach()) | under
            if dense.ndim > logp.ndim:
                broken = ~torch.isfinite(dense.detach()).flatten(logp.ndim).all(-1)
                bad, under = bad | broken, under & ~broken
            if bool(bad.any()):
                # where only the term underflows, the node's probability still counts in the mass
                kept = torch.where(under, torch.exp(lw + logp.detach()), 0.0).sum(0)
                x = torch.where(bad, c.expand_as(x), x)
                lw = torch.where(bad, torch.full_like(lw, -math.inf), lw)
                logp, f = evaluate(x)
                value, mass = _weighted_sum(lw, logp, f)
                mass = mass + kept
        if previous is not None:
            same = value.detach() == previous.detach()  # also +inf at both levels: a divergent value
            diff = torch.where(same, torch.zeros_like(value), (value - previous).detach().abs())
            if noise_column:
                # differences within the integrand's own rounding (the last column) are not discretisation;
                # the noise column itself needs no more than its order of magnitude
                floor = value[..., -1:].detach().abs()
                diff = torch.clamp(diff - 2 * floor, min=0.0)
                diff[..., -1] = 0.0
            scale = value.detach().abs()
            flat_scale = scale.flatten(len(batch)).amax(-1) if scale.ndim > len(batch) else scale
            denom = scale + _expand_out(flat_scale, scale.ndim)
            ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / denom)
            rel = float(torch.nan_to_num(ratio, nan=math.inf).max()) if diff.numel() else 0.0
            # converged; or, at the last level, stalled at a floor set by rounding in the density
            # (e.g. Beta with a concentration < 1 near x = 1, whose mass within one ulp of 1 is
            # out of reach): then the value is returned with that difference as its error
            stalled = level == max_level and rel <= _STALL_RTOL
            if (rel <= rtol and level >= min_level) or stalled:
                if bool(((1 - mass.detach()).abs() > 1e-3).any()):
                    raise ConvergenceError(
                        f"quadrature: the nodes hold only {float(mass.detach().min()):.3g} of the probability "
                        "mass (it sits where float64 nodes cannot reach, e.g. within 1e-300 of an end); "
                        "the parameters are too extreme for an exact expectation — use expectation='mc' or "
                        "a closed form"
                    )
                # mass the nodes cannot reach (within one ulp of a finite end, beyond the last node of
                # an infinite one) times the integrand's size there: where that mass is more than
                # rounding, the integrand at the outermost (lightest) nodes stands in for it
                defect = (1 - mass.detach()).abs()
                factor = _expand_out(defect, value.ndim) * scale
                # lost (unreachable) mass is the same at every level; a defect that still moves
                # between levels is discretisation, already covered by defect·scale. (Where the density is
                # float64 this also covers, by a wide margin, a log-density whose huge terms cancel —
                # log Γ(α) at α = 1e8 — and round differently at each node, which defect·scale alone
                # does not bound.) A float32 density on float64 nodes has a defect of its own rounding
                # (its normalisation, ~1e-7), not lost mass: its lightest nodes (x = 1e-300, or 1e30 in a
                # tail, where a score is huge) would inflate the bound ten-thousandfold, so its ends are
                # bounded by _end_tails alone (its terms in x are float64: they round alike at every node).
                lost_mass = (defect > 1e-13) & ((mass.detach() - previous_mass).abs() < 0.5 * defect)
                if work == own and bool(lost_mass.any()):
                    w = torch.exp(lw + logp.detach())
                    light = (w > 0) & (w < 1e-6 * w.amax(0, keepdim=True))
                    dense = (f.dense(logp) if isinstance(f, LogScaled) else f).detach().abs()
                    dense = torch.where(_expand_out(light, dense.ndim) & torch.isfinite(dense), dense, 0.0)
                    edge = dense.amax(0)
                    if edge.ndim > len(batch):  # one bound for all entries: the lost mass feeds them all
                        edge = _expand_out(edge.flatten(len(batch)).amax(-1), edge.ndim).expand_as(edge)
                    # ×4: the integrand may keep growing beyond the outermost node (e.g. log² x in a
                    # heavy tail); the bound stays conservative
                    lost = 4 * _expand_out(torch.where(lost_mass, defect, 0.0), value.ndim) * edge
                    factor = torch.maximum(factor, lost)
                # the part of the integral beyond the outermost node toward each end of the support, where
                # the lightest nodes are not light (an integrable singularity at a finite end)
                ends = _expand_out(_end_tails(x, lw, logp, f, lo, hi, points, defect), value.ndim)
                rounding = _rounding(lw, logp, f, dtype=own)
                if torch.finfo(own).bits < 64 and rounding.ndim > len(batch):
                    # in float32 every entry carries the rounding of the largest: entries are computed from
                    # the same float32 terms (a Hessian's ψ′(b) − ψ′(a+b) from ψ′ ≈ 0.2 each)
                    rounding = _expand_out(rounding.flatten(len(batch)).amax(-1), rounding.ndim).expand_as(rounding)
                err = diff + factor + ends + rounding
                return value, err
        previous, previous_mass = value, mass.detach()
    raise ConvergenceError(
        f"quadrature not converged at level {max_level} (successive estimates differ by up to "
        f"{float(diff.max()):.3g}); the integral may diverge, or the density may be too narrow "
        "or too heavy-tailed"
    )


_END_RATIO = 64.0  # the fit at an end takes a second node at least this many times farther from it


def _end_tails(
    x: Tensor, lw: Tensor, logp: Tensor, f: Tensor | LogScaled, lo: Tensor, hi: Tensor, points: Tensor, defect: Tensor
) -> Tensor:
    """A bound ``[*batch]`` on ∫ p·|f| beyond the outermost node toward each end of the support.

    The nodes stop where they round onto a finite end (the smallest positive float, one ulp below 1) or
    where an infinite one's exp-sinh nodes end. Near a finite end a density with an integrable
    singularity (p ∝ r^(β−1), r the distance to the end, β < 1: a Gamma or Beta shape below 1) still
    holds mass ~ r₁^β beyond the nearest node r₁ — 2e-8 at β = 0.025 and r₁ = 1e-308, 1.5e-5 at β = 0.3
    and r₁ = 1e-16 — where a score (∝ log r) is largest; a heavy tail (p ∝ r^(−γ−1)) holds ~ r₁^(−γ)
    beyond the last node. With g = p·|f| (f's largest entry) fitted by a power of r through the outermost
    node and one at least 64× nearer the centre or the end, the part beyond is g(r₁)·r₁/β (g(r₁)·r₁/γ):
    exact for a power law, within the factor 4 taken here where f grows like a power of log r (the mass
    check bounds the tail, so its mean log r is not far beyond log r₁), and vanishing for regular ends
    and light tails. A fit that does not describe an integrable end (β or γ ≤ 0) falls back to the
    whole defect of the mass times the integrand at the outermost node.
    """
    weight = (f.log_weight(logp) if isinstance(f, LogScaled) else logp).detach()
    size = (f.value if isinstance(f, LogScaled) else f).detach().abs()
    if size.ndim > weight.ndim:
        size = size.flatten(weight.ndim).amax(-1)
    log_g = weight + torch.log(size.clamp(min=torch.finfo(size.dtype).tiny))
    total = torch.zeros_like(weight[0])
    usable = torch.isfinite(lw) & torch.isfinite(log_g)
    for end, anchor, sign in ((lo, points[0], -1.0), (hi, points[-1], 1.0)):
        finite = torch.isfinite(end)
        # r: distance to a finite end (falls toward it), or beyond the outermost break point (grows toward it)
        r = torch.where(finite, sign * (torch.where(finite, end, 0.0) - x), sign * (x - anchor))
        ok = usable & (r > 0)
        toward = torch.where(finite, -1.0, 1.0)  # the end is where toward·log r grows
        key = torch.where(ok, toward * torch.log(r), -math.inf)
        k1, i1 = key.max(0)
        nearer = ok & (toward * torch.log(r) <= k1 - math.log(_END_RATIO))
        k2, i2 = torch.where(nearer, key, -math.inf).max(0)
        found, fit = torch.isfinite(k1), torch.isfinite(k2)
        log_r1 = torch.where(found, toward * k1, 0.0)
        log_r2 = torch.where(fit, toward * k2, 0.0)

        def at(t: Tensor, i: Tensor) -> Tensor:
            return t.gather(0, i.unsqueeze(0))[0]

        g1, g2 = at(log_g, i1), at(log_g, i2)
        # g ∝ r^(e−1) near the end: e = β > 0 at a finite end; e = −γ < 0 toward an infinite one
        e = 1 + torch.where(fit, (g1 - g2) / torch.where(fit, log_r1 - log_r2, 1.0), 0.0)
        e = torch.where(finite | fit, e, -math.inf)  # an infinite end fitted by one node: no light tail seen
        integrable = torch.where(finite, e > 0, e < 0) & torch.isfinite(e)
        tail = torch.exp(g1 + log_r1 - torch.log(torch.where(integrable, e.abs(), 1.0)))
        tail = torch.where(integrable, tail, defect * torch.exp(g1 - at(logp.detach(), i1)))
        total = total + torch.where(found, torch.nan_to_num(4 * tail, nan=math.inf), 0.0)
    return total


def _reference(dist: Distribution) -> Tensor | None:
    """A floating tensor the distribution computes (its mean, else a log-density inside its support)."""
    probes = (lambda: dist.mean, lambda: dist.log_prob(_support_point(dist)), lambda: dist.log_prob(dist.sample()))
    for probe in probes:
        try:
            value = probe()
        except (NotImplementedError, AttributeError, RuntimeError, ValueError, TypeError):
            continue
        if value.is_floating_point():
            return value
    return None


def _support_point(dist: Distribution) -> Tensor:
    bounds = _dist_bounds(dist) if dist.event_shape == torch.Size([]) else None
    if bounds is None and isinstance(dist.support, tc._IntegerGreaterThan):
        bounds = (dist.support.lower_bound, math.inf)
    lo, hi = (float(b) if not isinstance(b, Tensor) else b for b in (bounds or (-math.inf, math.inf)))
    lo_t, hi_t = torch.as_tensor(lo), torch.as_tensor(hi)
    point = torch.where(
        torch.isfinite(lo_t) & torch.isfinite(hi_t),
        (lo_t + hi_t) / 2,
        torch.where(torch.isfinite(lo_t), lo_t + 1, torch.where(torch.isfinite(hi_t), hi_t - 1, torch.zeros(()))),
    )
    return point.expand(dist.batch_shape)


def _dtype_of(dist: Distribution) -> torch.dtype:
    """The floating dtype the distribution computes in."""
    ref = _reference(dist)
    return ref.dtype if ref is not None else torch.get_default_dtype()


def _has_mean(dist: Distribution) -> bool:
    try:
        _ = dist.mean
    except (NotImplementedError, AttributeError):
        return False
    return True


def expect_exact(
    dist: Distribution,
    integrand: Integrand,
    *,
    rtol: float | None = None,
    tail_tol: float = 1e-17,
    max_level: int = 9,
    max_terms: int = 1 << 24,
    others: tuple[Distribution, ...] = (),
    min_level: int = 4,
    noise_column: bool = False,
) -> tuple[Tensor, Tensor, str]:
    """E_{x∼dist}[f] by the exact scheme of :func:`exact_scheme`: (value, error bound, scheme).

    ``others``: distributions whose centres are also quadrature break points (for integrands
    that involve them, e.g. log q in KL[p ‖ q], which may have a kink at q's centre).
    ``min_level``: the finest quadrature level to reach at least (for integrands that vanish
    identically at the point of evaluation but not in their derivatives, such as KL at δ = 0).
    ``noise_column``: the integrand's last output column is an estimate of its own rounding error;
    quadrature levels that differ by less than it count as converged.
    """
    scheme = exact_scheme(dist)
    dtype = _dtype_of(dist)
    rtol = max(1e-11 if rtol is None else rtol, 100 * torch.finfo(dtype).eps)
    if scheme == "finite":
        v, e = _finite(dist, integrand)
    elif scheme == "series":
        v, e = _series(dist, integrand, rtol, tail_tol, max_terms, others)
    elif scheme == "quadrature":
        v, e = _quadrature(dist, integrand, rtol, max_level, others, min_level, noise_column)
    else:
        raise ValueError(f"no exact expectation for {type(dist).__name__} (event shape {tuple(dist.event_shape)})")
    return v, e, scheme


def draw(dist: Distribution, n: int, seed: int | None, generator: torch.Generator | None) -> Tensor:
    """n samples ``[n, *batch, *event]`` with a reproducible seed (from ``generator`` if given)."""
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    if seed is None:
        with torch.no_grad():
            return dist.sample((n,))
    devices = [dist.mean.device] if _has_mean(dist) and dist.mean.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        return dist.sample((n,))


def expect_mc(
    dist: Distribution,
    integrand: Integrand,
    *,
    n_samples: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 8192,
) -> tuple[Tensor, Tensor]:
    """Monte Carlo mean of f over ``n_samples`` draws, and its standard error (std/√n)."""
    n_samples = arguments.integer(n_samples, "n_samples", 2)
    seed = arguments.seed(seed)
    generator = arguments.generator(generator)
    x_all = draw(dist, n_samples, seed, generator)
    if x_all.is_floating_point():
        tiny = torch.finfo(x_all.dtype).tiny
        if bool(((x_all != 0) & (x_all.abs() <= tiny)).any()):  # torch's samplers clamp at tiny
            raise NumericalError(
                f"Monte Carlo over {type(dist).__name__}: samples fall below the smallest normal {x_all.dtype} "
                f"({tiny:.3g}), where they have lost their precision: the sampler cannot resolve the mass near 0 "
                "at these parameters; use float64, an exact route or method='closed'"
            )
    total: Tensor | None = None
    total_sq: Tensor | None = None
    for start in range(0, n_samples, chunk):
        logp, f = integrand(x_all[start : start + chunk])
        if not bool(torch.isfinite(logp.detach()).all()):
            raise NumericalError(
                f"Monte Carlo over {type(dist).__name__}: some samples have a log-density that is not finite "
                "(they sit where the density underflows or the sampler rounded them onto the support's edge), "
                "so the samples do not represent the distribution; use float64, an exact route or method='closed'"
            )
        if isinstance(f, LogScaled):
            f = f.dense(logp)
        s1, s2 = f.sum(0), f.detach().square().sum(0)
        total = s1 if total is None else total + s1
        total_sq = s2 if total_sq is None else total_sq + s2
    assert total is not None and total_sq is not None
    mean = total / n_samples
    var = (total_sq / n_samples - mean.detach().square()).clamp(min=0) * n_samples / (n_samples - 1)
    return mean, (var / n_samples).sqrt()
