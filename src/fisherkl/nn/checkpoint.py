"""Resumable accumulation: the partial statistics of :func:`fisherkl.nn.fisher`, saved every k batches.

A checkpoint holds a fingerprint of the run (the network's parameter names, shapes and values, the
representation, kind, head, kfac_mode, batch size, number of batches, Monte Carlo settings, and the
rank / world size), the phase (``main``; EKFAC has ``kfac`` then ``ekfac``), the batches already
folded in, the statistics' raw sums and counts, and a running hash of the content of every batch folded
in. Resuming refuses a checkpoint whose fingerprint differs (naming the fields), re-reads the batches
already done and checks their running hash: the data must be the same, in a deterministic order (no
shuffling, or a seeded one). Writes are atomic (:func:`fisherkl.io.atomic_write`), so a crash while saving leaves the
previous checkpoint in place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError
from ..io import digest, read_file, write_file


class CheckpointMismatchError(FisherKLError, ValueError):
    """A checkpoint written for another network, configuration or data."""


def rank_path(path: str | os.PathLike[str], rank: int, world: int) -> Path:
    """One checkpoint file per rank: ``fisher.pt`` → ``fisher.rank0-of-2.pt`` (``path`` itself for one process)."""
    p = Path(path)
    if world == 1:
        return p
    return p.with_name(f"{p.stem}.rank{rank}-of-{world}{p.suffix}")


def net_digest(net: nn.Module) -> str:
    """sha256 over the names, shapes, dtypes and values of the parameters that require grad."""
    return digest({n: p.detach() for n, p in net.named_parameters() if p.requires_grad})


def batch_digest(batch: Any) -> str:
    """sha256 of a batch as the data gives it — every tensor in it, in order (detects changed data on resume)."""
    h = hashlib.sha256()
    for t in _tensors(batch):
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def chain_digest(previous: str | None, digest_: str) -> str:
    """The running hash of a stream of batches: sha256(previous ‖ this batch's digest)."""
    return hashlib.sha256(((previous or "") + digest_).encode()).hexdigest()


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


class Checkpoint:
    """Save / resume the partial statistics of one run at ``path``, every ``every`` batches."""

    def __init__(self, path: str | os.PathLike[str], every: int, fingerprint: dict[str, Any]) -> None:
        if int(every) < 1:
            raise FisherKLError(f"checkpoint_every must be >= 1, got {every}")
        self.path, self.every, self.fingerprint = Path(path), int(every), fingerprint

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None if there is no checkpoint yet; refuses a damaged or foreign one."""
        if not self.path.exists():
            return None
        doc = read_file(self.path, "checkpoint")
        state = doc["payload"]
        saved = state.get("fingerprint", {}) if isinstance(state, dict) else {}
        diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
        if diff:
            details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in diff)
            raise CheckpointMismatchError(
                f"checkpoint {self.path} was written for another run ({details}); delete it or use another path"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        write_file(
            self.path,
            "checkpoint",
            str(self.fingerprint.get("representation")),
            {**state, "fingerprint": self.fingerprint},
        )
