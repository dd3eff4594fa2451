"""Data as a stream of batches ``(x, y)``, with an optional progress bar.

``data`` may be a ``torch.utils.data.DataLoader`` or any iterable of ``(x, y)`` batches (or of
``x`` alone), or a tuple of tensors ``(x, y)`` / a tensor ``x`` that is cut into batches here.
Only one batch is held at a time, so memory does not grow with the number of examples.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from ..errors import ParameterError

Batch = tuple[Tensor, "Tensor | None"]


def is_reiterable(data: Any) -> bool:
    """Whether ``data`` can be iterated more than once (not a one-shot iterator or generator)."""
    return isinstance(data, (Tensor, tuple, list)) or (isinstance(data, Iterable) and iter(data) is not data)


def n_batches(data: Any, batch_size: int) -> int | None:
    """The number of batches, when known."""
    if isinstance(data, Tensor):
        return -(-data.shape[0] // batch_size)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        return -(-data[0].shape[0] // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def iter_batches(data: Any, batch_size: int = 256) -> Iterator[Batch]:
    """Yield ``(x, y)`` batches (``y`` None when the data has no labels)."""
    if batch_size < 1:
        raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(data, Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size], None
        return
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, Tensor) for t in data):
        if len(data) > 2:
            raise ParameterError(f"data: a tuple of tensors must be (x,) or (x, y), got {len(data)} tensors")
        x = data[0]
        y = data[1] if len(data) == 2 else None
        if y is not None and y.shape[0] != x.shape[0]:
            raise ParameterError(f"data: x has {x.shape[0]} examples but y has {y.shape[0]}")
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size], (None if y is None else y[i : i + batch_size])
        return
    if not isinstance(data, Iterable):
        raise ParameterError(
            "data must be a DataLoader, an iterable of (x, y) batches, or a tuple of tensors (x, y); "
            f"got {type(data).__name__}"
        )
    for item in data:
        if isinstance(item, Tensor):
            yield item, None
        elif isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
            yield item[0], (item[1] if len(item) > 1 and isinstance(item[1], Tensor) else None)
        else:
            raise ParameterError(f"data: each batch must be a tensor x or a pair (x, y), got {type(item).__name__}")


def progress_bar(it: Iterable[Any], total: int | None, progress: bool | None, desc: str) -> Iterable[Any]:
    """Wrap ``it`` in a tqdm bar when ``progress`` is True, or None and stderr is a terminal."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    if not show:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return it
    return tqdm(it, total=total, desc=desc, unit="batch", leave=False)


def batches(data: Any, batch_size: int, progress: bool | None, desc: str) -> Iterable[Batch]:
    return progress_bar(iter_batches(data, batch_size), n_batches(data, batch_size), progress, desc)


def as_input(x: Tensor, like: Tensor) -> Tensor:
    """Move a floating input to the network's dtype and device (integer inputs, e.g. tokens, keep theirs)."""
    if x.is_floating_point():
        return x.to(dtype=like.dtype, device=like.device)
    return x.to(device=like.device)


def seed_generator(base: int, index: int, device: torch.device) -> torch.Generator:
    """The generator for batch ``index`` (samples are reproducible and shared by every pass)."""
    g = torch.Generator(device=device)
    g.manual_seed((base + 1_000_003 * index) % (2**63 - 1))
    return g
