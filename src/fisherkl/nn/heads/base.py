"""The head protocol: a distribution p(y | outputs) over network outputs, and its statistics.

Outputs have shape ``[n, *P, C]``: n examples, any number of position dimensions P (tokens, pixels,
time steps; none for a plain classifier) and C outputs per position. A head is applied **per
position**, independently: p(y | x) = Πₜ p(yₜ | outputsₜ), so every statistic below acts on the last
dimension and keeps the leading ones ("batch" = ``[n, *P]``):

* ``fisher(outputs)`` ``[..., C, C]``: I_head = E_y[∇log p ∇log pᵀ] in the outputs of one position;
* ``sqrt_fisher(outputs)`` ``[..., R, C]``: B with BᵀB = I_head (R rows, each one backward pass);
* ``fisher_mv(outputs, v)`` ``[..., C]``: I_head v without forming I_head;
* ``sample(outputs, k, generator)`` ``[k, ..., *event]``; ``log_prob(outputs, y)`` ``[..., *batch]``;
  ``score(outputs, y)`` = ∇_outputs log p(y | outputs) ``[..., *outputs.shape]``;
* ``kl(outputs_p, outputs_q)`` ``[...]``: the exact KL between the predictive distributions of one position.

Labels ``y`` have the batch shape ``[n, *P]`` (categorical) or the outputs' shape (heads whose y is a
vector per position); :meth:`Head.check_labels` says so by name when they do not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor
from torch.distributions import Distribution

from ...errors import ParameterError


def seed_from(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (), generator=generator))


class Head(ABC):
    """A conditional distribution p(y | outputs) applied per position of outputs ``[n, *P, C]``."""

    name: str = "head"
    #: True when y at one position is a class index (shape ``[n, *P]``), False when it is a vector ``[n, *P, C]``
    index_labels: bool = False

    def check(self, outputs: Tensor) -> Tensor:
        """Outputs must be ``[n, *P, C]`` (rank ≥ 2); raise :class:`ParameterError` otherwise."""
        if outputs.ndim < 2:
            raise ParameterError(
                f"head {self.name!r}: network outputs must have shape [n, C] or [n, *positions, C] (one row per "
                f"example, the head's parameters last), got rank {outputs.ndim} shape {tuple(outputs.shape)}"
            )
        return outputs

    def check_labels(self, outputs: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """``y`` if it fits outputs ``[n, *P, C]`` (shape, and class range where labels are indices)."""
        want = tuple(outputs.shape[:-1]) if self.index_labels else tuple(outputs.shape)
        if tuple(y.shape) != want:
            what = "[n, *positions] class indices" if self.index_labels else "the outputs' shape"
            raise ParameterError(
                f"head {self.name!r}: labels must have {what} {want} for outputs {tuple(outputs.shape)}, "
                f"got {tuple(y.shape)}"
            )
        return y

    @abstractmethod
    def distribution(self, outputs: Tensor) -> Distribution:
        """p(· | outputs) with batch shape ``outputs.shape[:-1]``."""

    @abstractmethod
    def fisher(self, outputs: Tensor) -> Tensor:
        """I_head ``[..., C, C]``."""

    def sqrt_fisher(self, outputs: Tensor) -> Tensor:
        """B ``[..., R, C]`` with BᵀB = I_head (default: from an eigendecomposition, without the rows whose
        eigenvalue is zero at every position)."""
        w, q = torch.linalg.eigh(self.fisher(outputs))
        w = w.clamp_min(0)
        if w.numel():
            top = w.amax(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
            keep = (w > 64 * torch.finfo(w.dtype).eps * top).reshape(-1, w.shape[-1]).any(0)
            w, q = w[..., keep], q[..., keep]
        return w.sqrt().unsqueeze(-1) * q.transpose(-1, -2)

    def fisher_mv(self, outputs: Tensor, v: Tensor) -> Tensor:
        """I_head v ``[..., C]``."""
        return (self.fisher(outputs) @ v.unsqueeze(-1)).squeeze(-1)

    def sample(self, outputs: Tensor, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        """k samples y ~ p(· | outputs), ``[k, *batch, *event]``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_from(generator))
            return self.distribution(outputs.detach()).sample((k,))

    def log_prob(self, outputs: Tensor, y: Tensor) -> Tensor:
        """log p(y | outputs) ``[..., *batch]``."""
        return self.distribution(outputs).log_prob(y)

    def score(self, outputs: Tensor, y: Tensor) -> Tensor:
        """∇_outputs log p(y | outputs), ``[..., *outputs.shape]`` for y ``[..., *batch, *event]`` (autograd)."""
        event = len(self.distribution(outputs[:1].detach()).event_shape)
        extra = y.shape[: y.ndim - (outputs.ndim - 1) - event]
        f = outputs.detach().expand((*extra, *outputs.shape)).clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.log_prob(f, y).sum(), f)
        return g

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        """KL[p(·|outputs_p) ‖ p(·|outputs_q)] per position ``[*batch]``."""
        from torch.distributions.kl import kl_divergence

        return kl_divergence(self.distribution(outputs_p), self.distribution(outputs_q))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def diag_sqrt(d: Tensor) -> Tensor:
    """B = diag(√d) ``[..., C, C]`` for a diagonal head Fisher d ``[..., C]``."""
    return torch.diag_embed(d.sqrt())


__all__ = ["Head", "diag_sqrt", "seed_from"]
