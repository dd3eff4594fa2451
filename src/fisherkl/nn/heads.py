"""Heads: the distribution p(y | outputs) a network's outputs parametrise, and its statistics.

A head owns everything the network Fisher needs in output coordinates (outputs ``[n, C]``):

* ``fisher(outputs)`` ``[n, C, C]``: I_head = E_y[∇log p ∇log pᵀ] in the outputs;
* ``sqrt_fisher(outputs)`` ``[n, R, C]``: B with BᵀB = I_head (R rows, each one backward pass);
* ``fisher_mv(outputs, v)`` ``[n, C]``: I_head v without forming I_head;
* ``sample(outputs, k, generator)`` ``[k, n, ...]``, ``log_prob(outputs, y)`` ``[n]``,
  ``score(outputs, y)`` = ∇_outputs log p(y | outputs) ``[..., n, C]``;
* ``kl(outputs_p, outputs_q)`` ``[n]``: the exact KL between the predictive distributions.

Built-in heads have closed forms; :class:`CallableHead` wraps any ``outputs ↦ Distribution`` and
takes its Fisher by fisherkl's routes (:func:`fisherkl.fisher`), batched over examples.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from ..errors import ParameterError


def _seed_from(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (), generator=generator))


class Head(ABC):
    """A conditional distribution p(y | outputs) for network outputs ``[n, C]``."""

    name: str = "head"

    def check(self, outputs: Tensor) -> Tensor:
        """Outputs must be ``[n, C]`` (C as the head needs); raise :class:`ParameterError` otherwise."""
        if outputs.ndim != 2:
            raise ParameterError(
                f"head {self.name!r}: network outputs must have shape [n, C] (one row per example), got "
                f"{tuple(outputs.shape)}; reshape them (e.g. .reshape(n, -1)) in the network"
            )
        return outputs

    @abstractmethod
    def distribution(self, outputs: Tensor) -> Distribution:
        """p(· | outputs) with batch shape ``[n]`` (independent output coordinates folded into the event)."""

    @abstractmethod
    def fisher(self, outputs: Tensor) -> Tensor:
        """I_head ``[n, C, C]``."""

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        """B ``[n, R, C]`` with BᵀB = I_head (default: from an eigendecomposition)."""
        w, q = torch.linalg.eigh(self.fisher(outputs))
        return w.clamp_min(0).sqrt().unsqueeze(-1) * q.transpose(-1, -2)

    def fisher_mv(self, outputs: Tensor, v: Tensor) -> Tensor:
        """I_head v ``[n, C]``."""
        return (self.fisher(outputs) @ v.unsqueeze(-1)).squeeze(-1)

    def sample(self, outputs: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """k samples y ~ p(· | outputs), ``[k, n, ...]``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_from(generator))
            return self.distribution(outputs.detach()).sample((k,))

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        """log p(y | outputs) ``[..., n]``."""
        return self.distribution(outputs).log_prob(y)

    def score(self, outputs: Tensor, y: Tensor) -> Tensor:
        """∇_outputs log p(y | outputs), ``[..., n, C]`` for y ``[..., n, ...]`` (autograd by default)."""
        extra = y.shape[: y.ndim - self._y_ndim(outputs)]
        f = outputs.detach().expand((*extra, *outputs.shape)).clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.log_prob(f, y).sum(), f)
        return g

    def _y_ndim(self, outputs: Tensor) -> int:
        return 1 + len(self.distribution(outputs[:1].detach()).event_shape)

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        """KL[p(·|outputs_p) ‖ p(·|outputs_q)] ``[n]``."""
        from torch.distributions.kl import kl_divergence

        return kl_divergence(self.distribution(outputs_p), self.distribution(outputs_q))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Categorical(Head):
    """y ∈ {0..C−1}, p = softmax(outputs). I_head = diag(p) − ppᵀ (rank C−1)."""

    name = "categorical"

    def distribution(self, outputs: Tensor) -> Distribution:
        return torch.distributions.Categorical(logits=outputs, validate_args=False)

    def fisher(self, outputs: Tensor) -> Tensor:
        p = torch.softmax(self.check(outputs), -1)
        return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        """C − 1 rows (stick-breaking): with tail masses q_r = Σ_{j≥r} p_j, row r has
        B[r, r] = √(p_r q_{r+1}/q_r), B[r, j] = −p_j √(p_r/(q_r q_{r+1})) for j > r, 0 for j < r."""
        p = torch.softmax(self.check(outputs), -1)
        c = p.shape[-1]
        if c == 1:
            return torch.zeros_like(p).unsqueeze(-2)
        q = p.flip(-1).cumsum(-1).flip(-1)  # q[r] = Σ_{j≥r} p_j, accurate in the tail
        tiny = torch.finfo(p.dtype).tiny
        qr, qn = q[..., :-1].clamp_min(tiny), q[..., 1:].clamp_min(tiny)
        pr = p[..., :-1]
        diag = (pr / qr).sqrt() * qn.sqrt()
        coef = (pr / qr).sqrt() * qn.rsqrt()  # [n, C-1]; qr·qn would underflow in float32
        b = -coef.unsqueeze(-1) * p.unsqueeze(-2)  # [n, C-1, C]
        mask = torch.ones(c - 1, c, dtype=torch.bool, device=p.device).triu(1)
        b = torch.where(mask, b, torch.zeros_like(b))
        idx = torch.arange(c - 1, device=p.device)
        b[..., idx, idx] = diag
        return b

    def fisher_mv(self, outputs: Tensor, v: Tensor) -> Tensor:
        p = torch.softmax(outputs, -1)
        return p * v - p * (p * v).sum(-1, keepdim=True)

    def sample(self, outputs: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        p = torch.softmax(outputs.detach(), -1)
        return torch.multinomial(p, k, replacement=True, generator=generator).T

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        logp = torch.log_softmax(outputs, -1)
        logp, y = torch.broadcast_tensors(logp, y.long().unsqueeze(-1))
        return logp.gather(-1, y[..., :1]).squeeze(-1)

    def score(self, outputs: Tensor, y: Tensor) -> Tensor:
        p = torch.softmax(outputs.detach(), -1)
        return F.one_hot(y.long(), p.shape[-1]).to(p.dtype) - p

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        lp, lq = torch.log_softmax(outputs_p, -1), torch.log_softmax(outputs_q, -1)
        return (lp.exp() * (lp - lq)).sum(-1)


class Bernoulli(Head):
    """C independent labels y_c ∈ {0, 1}, P(y_c = 1) = sigmoid(outputs_c). I_head = diag(σ(1−σ))."""

    name = "bernoulli"

    def distribution(self, outputs: Tensor) -> Distribution:
        d = torch.distributions.Bernoulli(logits=outputs, validate_args=False)
        return torch.distributions.Independent(d, 1)

    def fisher(self, outputs: Tensor) -> Tensor:
        s = torch.sigmoid(self.check(outputs))
        return torch.diag_embed(s * (1 - s))

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        s = torch.sigmoid(self.check(outputs))
        return torch.diag_embed((s * (1 - s)).sqrt())

    def fisher_mv(self, outputs: Tensor, v: Tensor) -> Tensor:
        s = torch.sigmoid(outputs)
        return s * (1 - s) * v

    def sample(self, outputs: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        s = torch.sigmoid(outputs.detach())
        return torch.bernoulli(s.expand(k, *s.shape), generator=generator)

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        return (y * F.logsigmoid(outputs) + (1 - y) * F.logsigmoid(-outputs)).sum(-1)

    def score(self, outputs: Tensor, y: Tensor) -> Tensor:
        return y - torch.sigmoid(outputs.detach())

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        sp = torch.sigmoid(outputs_p)
        pos = F.logsigmoid(outputs_p) - F.logsigmoid(outputs_q)
        neg = F.logsigmoid(-outputs_p) - F.logsigmoid(-outputs_q)
        return (sp * pos + (1 - sp) * neg).sum(-1)


class Gaussian(Head):
    """y ~ Normal(outputs, σ² I) with fixed σ (a scalar or ``[C]``). I_head = I/σ²."""

    name = "gaussian"

    def __init__(self, sigma: float | Tensor = 1.0) -> None:
        s = torch.as_tensor(sigma)
        if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
            raise ParameterError(f"gaussian head: sigma must be > 0 and finite, got {sigma!r}")
        self.sigma = s

    def _s(self, outputs: Tensor) -> Tensor:
        return self.sigma.to(dtype=outputs.dtype, device=outputs.device).expand(outputs.shape[-1:])

    def distribution(self, outputs: Tensor) -> Distribution:
        return torch.distributions.Independent(torch.distributions.Normal(outputs, self._s(outputs)), 1)

    def fisher(self, outputs: Tensor) -> Tensor:
        s = self._s(self.check(outputs))
        return torch.diag_embed((1 / s**2).expand(outputs.shape)).clone()

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        s = self._s(self.check(outputs))
        return torch.diag_embed((1 / s).expand(outputs.shape)).clone()

    def fisher_mv(self, outputs: Tensor, v: Tensor) -> Tensor:
        return v / self._s(outputs) ** 2

    def sample(self, outputs: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn((k, *outputs.shape), generator=generator, dtype=outputs.dtype, device=outputs.device)
        return outputs.detach() + self._s(outputs) * eps

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        s = self._s(outputs)
        return (-0.5 * ((y - outputs) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def score(self, outputs: Tensor, y: Tensor) -> Tensor:
        return (y - outputs.detach()) / self._s(outputs) ** 2

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        return (0.5 * ((outputs_p - outputs_q) / self._s(outputs_p)) ** 2).sum(-1)

    def __repr__(self) -> str:
        return f"Gaussian(sigma={self.sigma.tolist()})"


class GaussianVar(Head):
    """y ~ Normal(μ, diag exp(s)) with outputs [μ, s] ``[n, 2C]`` (mean, then log-variance).

    I_head = diag(exp(−s), ½) in (μ, s): 1/σ² for each mean, ½ for each log-variance.
    """

    name = "gaussian_var"

    def check(self, outputs: Tensor) -> Tensor:
        super().check(outputs)
        if outputs.shape[-1] % 2:
            raise ParameterError(
                f"head 'gaussian_var': outputs must be [n, 2C] (means then log-variances), got {tuple(outputs.shape)}"
            )
        return outputs

    @staticmethod
    def _split(outputs: Tensor) -> tuple[Tensor, Tensor]:
        c = outputs.shape[-1] // 2
        return outputs[..., :c], outputs[..., c:]

    def distribution(self, outputs: Tensor) -> Distribution:
        mu, s = self._split(self.check(outputs))
        return torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * s).exp()), 1)

    def _diag(self, outputs: Tensor) -> Tensor:
        _mu, s = self._split(self.check(outputs))
        return torch.cat([(-s).exp(), torch.full_like(s, 0.5)], -1)

    def fisher(self, outputs: Tensor) -> Tensor:
        return torch.diag_embed(self._diag(outputs))

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        return torch.diag_embed(self._diag(outputs).sqrt())

    def fisher_mv(self, outputs: Tensor, v: Tensor) -> Tensor:
        return self._diag(outputs) * v

    def sample(self, outputs: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        mu, s = self._split(outputs.detach())
        eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + (0.5 * s).exp() * eps

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        mu, s = self._split(outputs)
        return (-0.5 * (y - mu) ** 2 * (-s).exp() - 0.5 * s - 0.5 * math.log(2 * math.pi)).sum(-1)

    def score(self, outputs: Tensor, y: Tensor) -> Tensor:
        mu, s = self._split(outputs.detach())
        r2 = (y - mu) ** 2 * (-s).exp()
        return torch.cat([(y - mu) * (-s).exp(), 0.5 * r2 - 0.5], -1)

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        mp, sp = self._split(outputs_p)
        mq, sq = self._split(outputs_q)
        return (0.5 * (sq - sp) + 0.5 * ((sp - sq).exp() + (mp - mq) ** 2 * (-sq).exp()) - 0.5).sum(-1)


class Poisson(Head):
    """C independent counts y_c ~ Poisson(exp(outputs_c)) (log-rate outputs). I_head = diag(λ)."""

    name = "poisson"

    def distribution(self, outputs: Tensor) -> Distribution:
        return torch.distributions.Independent(torch.distributions.Poisson(outputs.exp(), validate_args=False), 1)

    def fisher(self, outputs: Tensor) -> Tensor:
        return torch.diag_embed(self.check(outputs).exp())

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        return torch.diag_embed((0.5 * self.check(outputs)).exp())

    def fisher_mv(self, outputs: Tensor, v: Tensor) -> Tensor:
        return outputs.exp() * v

    def sample(self, outputs: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        lam = outputs.detach().exp()
        return torch.poisson(lam.expand(k, *lam.shape).contiguous(), generator=generator)

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        return (y * outputs - outputs.exp() - torch.lgamma(y + 1)).sum(-1)

    def score(self, outputs: Tensor, y: Tensor) -> Tensor:
        return y - outputs.detach().exp()

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        lp, lq = outputs_p.exp(), outputs_q.exp()
        return (lp * (outputs_p - outputs_q) - lp + lq).sum(-1)


class CallableHead(Head):
    """Any ``fn: outputs [n, C] ↦ Distribution`` with batch shape ``[n]``.

    Its Fisher in output coordinates is taken by :func:`fisherkl.fisher` on the model
    ``Model(fn, C)`` with ``method`` (default ``"auto"``: closed form → Hessian of a closed-form
    KL → exact or Monte Carlo E[s sᵀ]), batched over the n examples; its square root by an
    eigendecomposition; its KL by torch's registry, else by :func:`fisherkl.kl`.
    """

    name = "callable"

    def __init__(self, fn: Callable[[Tensor], Distribution], method: str = "auto", **fisher_kwargs: Any) -> None:
        if not callable(fn):
            raise ParameterError(f"head must be a name or a callable outputs -> Distribution, got {fn!r}")
        self.fn, self.method, self.fisher_kwargs = fn, method, fisher_kwargs
        self.name = getattr(fn, "__name__", "callable")
        self._models: dict[int, Any] = {}

    def model(self, c: int) -> Any:
        from ..model import Model

        if c not in self._models:
            self._models[c] = Model(self.fn, c, name=f"head {self.name!r}")
        return self._models[c]

    def distribution(self, outputs: Tensor) -> Distribution:
        d = self.fn(outputs)
        if not isinstance(d, Distribution):
            raise ParameterError(f"head {self.name!r} must return a torch Distribution, got {type(d).__name__}")
        if tuple(d.batch_shape) != tuple(outputs.shape[:-1]):
            raise ParameterError(
                f"head {self.name!r}: the distribution's batch shape {tuple(d.batch_shape)} must be the outputs' "
                f"leading shape {tuple(outputs.shape[:-1])}; wrap independent coordinates in "
                "torch.distributions.Independent"
            )
        return d

    def fisher(self, outputs: Tensor) -> Tensor:
        from ..fisher import fisher

        out = self.check(outputs).detach()
        self.distribution(out[:1])
        value = fisher(self.model(out.shape[-1]), out, self.method, **self.fisher_kwargs)
        assert isinstance(value, Tensor)
        return value

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        try:
            return super().kl(outputs_p, outputs_q)
        except NotImplementedError:
            from ..divergence import kl

            value = kl(self.model(outputs_p.shape[-1]), outputs_p, outputs_q)
            assert isinstance(value, Tensor)
            return value

    def __repr__(self) -> str:
        return f"CallableHead({self.name})"


HEADS: dict[str, type[Head]] = {
    "categorical": Categorical,
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian_var": GaussianVar,
    "poisson": Poisson,
}


def get_head(head: str | Head | Callable[[Tensor], Distribution], **kwargs: Any) -> Head:
    """A :class:`Head` from a name (``"categorical"``, ``"bernoulli"``, ``"gaussian"`` (``sigma=``),
    ``"gaussian_var"``, ``"poisson"``), a Head, or a callable outputs ↦ Distribution."""
    if isinstance(head, Head):
        return head
    if isinstance(head, str):
        if head not in HEADS:
            raise ParameterError(f"unknown head {head!r}; choose one of {', '.join(HEADS)} or pass a callable")
        return HEADS[head](**kwargs)
    return CallableHead(head, **kwargs)
