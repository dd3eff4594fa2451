"""Bernoulli head: C independent labels y_c ∈ {0, 1} at each position, P(y_c = 1) = sigmoid(outputs_c)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from .base import Head, diag_sqrt


class Bernoulli(Head):
    """C independent labels y_c ∈ {0, 1}, P(y_c = 1) = sigmoid(outputs_c). I_head = diag(σ(1−σ))."""

    name = "bernoulli"

    def distribution(self, outputs: Tensor) -> Distribution:
        d = torch.distributions.Bernoulli(logits=outputs, validate_args=False)
        return torch.distributions.Independent(d, 1)

    def _d(self, outputs: Tensor) -> Tensor:
        s = torch.sigmoid(self.check(outputs))
        return s * (1 - s)

    def fisher(self, outputs: Tensor) -> Tensor:
        return torch.diag_embed(self._d(outputs))

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        return diag_sqrt(self._d(outputs))

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
