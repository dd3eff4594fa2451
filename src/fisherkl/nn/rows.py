"""Output cotangent rows: the vectors eₙᵣ with F = (1/N) Σₙ Σᵣ Jₙᵀ eₙᵣ eₙᵣᵀ Jₙ, one backward pass each.

For outputs ``[n, *P, C]`` (positions P, head applied per position, mask ``[n, *P]``):

* ``exact``: the rows of the head's square root Bₜ (BₜᵀBₜ = I_head(outputsₜ)) **at one position t at a
  time** — row (t, r) is Bₜ[r] at position t and 0 elsewhere — since the sequence Fisher Σₜ JₜᵀI_head Jₜ has
  no cross terms between positions. R·|P| rows per example (C − 1 per position for a categorical head);
  positions masked in every example of the batch are skipped;
* ``mc``: ∇_outputs log p(ŷ | outputs)/√S for S sampled label sequences ŷ (each row covers every position:
  the cross terms between independent positions vanish in expectation), S rows;
* ``empirical``: ∇_outputs log p(y | outputs) for the observed labels, one row.

Masked positions contribute zero to every row. Rows are produced in chunks (``[k, n, *P, C]``) so that
memory stays bounded however many there are.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import ParameterError, RouteError
from .heads import Head

KINDS = ("exact", "mc", "empirical")


def safe_labels(y: Tensor, mask: Tensor | None) -> Tensor:
    """Labels with masked positions replaced by 0 (a valid label for every built-in head)."""
    if mask is None:
        return y
    m = mask.reshape(*mask.shape, *([1] * (y.ndim - mask.ndim)))
    return torch.where(m, y, torch.zeros((), dtype=y.dtype, device=y.device))


class Rows:
    """The cotangent rows of one batch for one kind (see the module doc)."""

    def __init__(
        self,
        head: Head,
        outputs: Tensor,
        labels: Tensor | None,
        mask: Tensor | None,
        kind: str,
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        if kind not in KINDS:
            raise RouteError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        f = outputs.detach()
        self.shape = tuple(f.shape)
        self.dtype = f.dtype
        self.kind = kind
        self.mask = mask
        n, c = f.shape[0], f.shape[-1]
        self.t = math.prod(f.shape[1:-1])  # positions per example
        keep = None if mask is None else mask.reshape(n, self.t).to(f.dtype)
        if kind == "exact":
            b = head.sqrt_fisher(f)  # [n, *P, R, C]
            b = b.reshape(n, self.t, b.shape[-2], c)
            if keep is not None:
                b = b * keep[:, :, None, None]
            self.b = b
            # positions masked in the whole batch are skipped (finding them is one device-to-host copy)
            self.positions = list(range(self.t)) if keep is None else keep.bool().any(0).nonzero()[:, 0].tolist()
            self.count = len(self.positions) * b.shape[2]
        else:
            if kind == "mc":
                if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
                    raise ParameterError(f"mc_samples must be an integer >= 1, got {mc_samples!r}")
                ys = head.sample(f, mc_samples, generator)
                e = head.score(f, ys) / math.sqrt(mc_samples)  # [S, n, *P, C]
            else:
                if labels is None:
                    raise ParameterError("kind='empirical' needs labels: give data as (x, y) batches (or labels=)")
                y = head.check_labels(f, labels.to(f.device), mask)
                e = head.score(f, safe_labels(y, mask)).unsqueeze(0)
            e = e.to(f.dtype)
            if keep is not None:
                e = e * keep.reshape(1, *mask.shape, 1)  # type: ignore[union-attr]
            self.e = e
            self.count = e.shape[0]

    def chunks(self, k: int) -> Iterator[Tensor]:
        """Rows in chunks of at most k: ``[k, n, *P, C]``."""
        k = max(1, int(k))
        if self.kind != "exact":
            for i in range(0, self.count, k):
                yield self.e[i : i + k]
            return
        n, _, r, c = self.b.shape
        if self.t == 1:  # no positions: all rows are dense, [R, n, C]
            rows = self.b[:, 0].transpose(0, 1).reshape(r, *self.shape)
            for i in range(0, r, k):
                yield rows[i : i + k]
            return
        pairs = [(t, j) for t in self.positions for j in range(r)]
        for i in range(0, len(pairs), k):
            part = pairs[i : i + k]
            cot = self.b.new_zeros(len(part), n, self.t, c)
            ts = torch.tensor([t for t, _ in part], device=self.b.device)
            js = torch.tensor([j for _, j in part], device=self.b.device)
            cot[torch.arange(len(part), device=self.b.device), :, ts] = self.b[:, ts, js].transpose(0, 1)
            yield cot.reshape(len(part), *self.shape)


__all__ = ["KINDS", "Rows", "safe_labels"]
