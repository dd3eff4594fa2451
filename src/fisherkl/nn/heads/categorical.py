"""Categorical head: y ∈ {0..C−1} at each position, p = softmax(outputs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from ...errors import ParameterError
from .base import Head


class Categorical(Head):
    """y ∈ {0..C−1}, p = softmax(outputs). I_head = diag(p) − ppᵀ (rank C − 1, so C − 1 rows)."""

    name = "categorical"
    index_labels = True

    def check_labels(self, outputs: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        super().check_labels(outputs, y, mask)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ParameterError(f"head 'categorical': labels must be integer class indices, got dtype {y.dtype}")
        c = outputs.shape[-1]
        live = y if mask is None else y[mask]
        if live.numel() and (int(live.min()) < 0 or int(live.max()) >= c):
            bad = live[(live < 0) | (live >= c)][0]
            raise ParameterError(
                f"head 'categorical': labels must be in 0..{c - 1} (or ignore_index at masked positions), "
                f"got {int(bad)}"
            )
        return y

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
        coef = (pr / qr).sqrt() * qn.rsqrt()  # qr·qn would underflow in float32
        b = -coef.unsqueeze(-1) * p.unsqueeze(-2)  # [..., C-1, C]
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
        flat = torch.multinomial(p.reshape(-1, p.shape[-1]), k, replacement=True, generator=generator)
        return flat.T.reshape(k, *p.shape[:-1])

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
