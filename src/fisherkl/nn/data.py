"""Data as a stream of batches, with an optional progress bar.

``data`` may be a ``torch.utils.data.DataLoader`` or any iterable of batches (each parsed by
:class:`fisherkl.nn.batch.Adapter`: ``x``, ``(inputs, y)``, a dict), or a whole data set cut into
batches here: a tensor ``x``, a tuple of tensors ``(x, y)``, or a dict of tensors (a *list* is a list of
batches). Only one batch is
held at a time, so memory does not grow with the number of examples.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import ParameterError


def is_reiterable(data: Any) -> bool:
    """Whether ``data`` can be iterated more than once (not a one-shot iterator or generator)."""
    return isinstance(data, (Tensor, tuple, list, Mapping)) or (isinstance(data, Iterable) and iter(data) is not data)


def n_batches(data: Any, batch_size: int) -> int | None:
    """The number of batches, when known."""
    size = dataset_size(data)
    if size is not None:
        return -(-size // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def dataset_size(data: Any) -> int | None:
    """N when ``data`` is a whole data set to cut into batches: a tensor; a tuple ``(x,)`` or ``(x, y)`` of
    tensors; a tuple ``(inputs, y)`` whose inputs are a tuple or dict of tensors (several inputs); a dict of
    tensors — all with a common first dimension. None when it is an iterable of batches (a list is always a
    list of batches)."""
    if isinstance(data, Tensor):
        return int(data.shape[0])
    if isinstance(data, Mapping):
        if data and all(isinstance(t, Tensor) and t.ndim > 0 for t in data.values()):
            return _common(list(data.values()), "a dict of tensors")
        return None
    if not isinstance(data, tuple) or not data:
        return None
    if all(isinstance(t, Tensor) for t in data):
        if len(data) > 2:
            raise ParameterError(f"data: a tuple of tensors must be (x,) or (x, y), got {len(data)} tensors")
        return _common(list(data), "x and y")
    inputs = data[0]
    if len(data) <= 2 and (len(data) == 1 or isinstance(data[1], Tensor)):
        parts = list(inputs.values()) if isinstance(inputs, Mapping) else inputs
        if isinstance(parts, (tuple, list)) and parts and all(isinstance(t, Tensor) and t.ndim > 0 for t in parts):
            return _common([*parts, *data[1:]], "the inputs and y")
    return None


def _common(tensors: list[Tensor], what: str) -> int:
    sizes = [int(t.shape[0]) if t.ndim else 0 for t in tensors]
    if len(set(sizes)) > 1:
        raise ParameterError(f"data: {what} must share the first dimension (the examples), got {sizes}")
    return sizes[0]


def _rows(obj: Any, i: int, j: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[i:j]
    if isinstance(obj, Mapping):
        return {k: _rows(v, i, j) for k, v in obj.items()}
    return type(obj)(_rows(v, i, j) for v in obj)


def iter_raw(data: Any, batch_size: int = 256) -> Iterator[Any]:
    """Yield the batches of ``data`` as given (parsed by :class:`fisherkl.nn.batch.Adapter`): slices of a
    whole data set (tensor, tuple of tensors, dict of tensors), or the items of an iterable of batches."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    size = dataset_size(data)
    if size is not None:
        for i in range(0, size, batch_size):
            yield _rows(data, i, i + batch_size)
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise ParameterError(
            "data must be a DataLoader, an iterable of batches, a tensor, a tuple of tensors (x, y) or a dict of "
            f"tensors; got {type(data).__name__}"
        )
    yield from data


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


def seed_generator(base: int, index: int, device: torch.device) -> torch.Generator:
    """The generator for batch ``index`` (samples are reproducible and shared by every pass)."""
    g = torch.Generator(device=device)
    g.manual_seed((base + 1_000_003 * index) % (2**63 - 1))
    return g
