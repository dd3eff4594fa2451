"""Gaussian heads: fixed σ (``Gaussian``) and learned log-variance (``GaussianVar``), per position."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from ...errors import ParameterError
from .base import Head


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
    """y ~ Normal(μ, diag exp(s)) with outputs [μ, s] ``[n, *P, 2C]`` (mean, then log-variance).

    I_head = diag(exp(−s), ½) in (μ, s): 1/σ² for each mean, ½ for each log-variance.
    """

    name = "gaussian_var"

    def check(self, outputs: Tensor) -> Tensor:
        super().check(outputs)
        if outputs.shape[-1] % 2:
            raise ParameterError(
                "head 'gaussian_var': outputs must be [n, *positions, 2C] (means then log-variances), got "
                f"{tuple(outputs.shape)}"
            )
        return outputs

    def check_labels(self, outputs: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        want = (*outputs.shape[:-1], outputs.shape[-1] // 2)
        if tuple(y.shape) != want:
            raise ParameterError(
                f"head 'gaussian_var': labels must have shape {want} (one value per mean), got {tuple(y.shape)}"
            )
        return y

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
