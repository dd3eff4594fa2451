"""Poisson head: C independent counts y_c ~ Poisson(exp(outputs_c)) at each position (log-rate outputs)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from .base import Head


class Poisson(Head):
    """C independent counts y_c ~ Poisson(exp(outputs_c)). I_head = diag(λ)."""

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
