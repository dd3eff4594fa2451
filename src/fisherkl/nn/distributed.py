"""The network Fisher over ``torch.distributed``: sharding the data, reducing the statistics.

Every statistic is a plain sum with an example count, so the ranks' partial sums add: the reduced
Fisher is the mean over **all** the data however unevenly it is split. :func:`reduce_stat` sums a
statistic's tensors and counts over the ranks (one ``all_reduce`` per dtype), :func:`indexed_batches`
gives a rank its share of the batches, each with its **global** batch index (so Monte Carlo labels,
drawn per batch from a seed, are the ones a single process would draw).

Sharding (``fisherkl.nn.fisher(..., distributed=True)``):

* tensors ``(x, y)`` / ``x``: batch b (of ``batch_size``) goes to rank ``b % world``;
* a DataLoader with a sequential sampler (the default): rebuilt with the same dataset, collate
  function and workers, over a batch sampler yielding its batches ``b % world == rank`` (each rank
  loads only its batches, and the batches are those of a single process; unlike
  ``DistributedSampler`` nothing is padded, so no example is counted twice);
* a DataLoader with a ``DistributedSampler``, or ``shard=False``: already one shard per rank, used as is
  (note: ``DistributedSampler`` pads shards to equal length by repeating examples unless
  ``drop_last=True``);
* any other iterable of batches: every rank iterates it and keeps batches ``b % world == rank``
  (its order must be the same on every rank).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from ..matrix.base import all_reduce_sums, require_process_group
from .data import dataset_size, iter_raw

IndexedBatch = tuple[int, Any]


def rank_world(group: Any = None) -> tuple[int, int]:
    """This process's rank in ``group`` and the group's size (refuses without an initialised group)."""
    dist = require_process_group(group)
    return int(dist.get_rank(group)), int(dist.get_world_size(group))


def reduce_stat(stat: Any, group: Any = None) -> None:
    """Sum a statistic (``state()`` / ``load()``, see :mod:`fisherkl.nn.stats`) over the ranks, in place."""
    state = stat.state()
    keys = list(state["tensors"])
    ckeys = list(state["counts"])
    sums, counts = all_reduce_sums([state["tensors"][k] for k in keys], [int(state["counts"][k]) for k in ckeys], group)
    stat.load({**state, "tensors": dict(zip(keys, sums)), "counts": dict(zip(ckeys, counts))})


def broadcast_int(value: int, group: Any = None) -> int:
    """Rank 0's ``value`` on every rank."""
    dist = require_process_group(group)
    obj = [int(value)]
    src = 0 if group is None else int(dist.get_global_rank(group, 0))
    dist.broadcast_object_list(obj, src=src, group=group)
    return int(obj[0])


class StridedBatchSampler(Sampler[list[int]]):
    """The batches ``b`` of ``batch_sampler`` with ``b % world == rank``."""

    def __init__(self, batch_sampler: Iterable[list[int]], rank: int, world: int) -> None:
        self.batch_sampler, self.rank, self.world = batch_sampler, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for b, idx in enumerate(self.batch_sampler):
            if b % self.world == self.rank:
                yield idx

    def __len__(self) -> int:
        n = len(self.batch_sampler)  # type: ignore[arg-type]
        return max(0, -(-(n - self.rank) // self.world))


def _strided_loader(loader: DataLoader, rank: int, world: int) -> DataLoader:
    kw: dict[str, Any] = {
        "batch_sampler": StridedBatchSampler(loader.batch_sampler, rank, world),  # type: ignore[arg-type]
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        kw["prefetch_factor"] = loader.prefetch_factor
        kw["multiprocessing_context"] = loader.multiprocessing_context
    return DataLoader(loader.dataset, **kw)


def shard_mode(data: Any, world: int, shard: bool | None) -> str:
    """How :func:`indexed_batches` splits ``data`` (see module doc)."""
    if world == 1:
        return "all"
    if shard is False:
        return "given"
    if dataset_size(data) is not None:
        return "tensors"
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, DistributedSampler):
            return "given"
        if (
            isinstance(data.sampler, SequentialSampler)
            and type(data.batch_sampler) is BatchSampler
            and not isinstance(data.dataset, torch.utils.data.IterableDataset)
        ):
            return "loader"
    return "strided"


def indexed_batches(
    data: Any, batch_size: int, rank: int = 0, world: int = 1, mode: str = "all"
) -> Iterator[IndexedBatch]:
    """This rank's batches ``(global_index, batch)`` (batches as the data gives them)."""
    if mode == "all":
        yield from enumerate(iter_raw(data, batch_size))
    elif mode == "given":
        for i, b in enumerate(iter_raw(data, batch_size)):
            yield i * world + rank, b
    elif mode == "loader":
        for j, b in enumerate(iter_raw(_strided_loader(data, rank, world), batch_size)):
            yield rank + j * world, b
    else:  # tensors (slicing is free) or any iterable (every rank reads every batch)
        for i, b in enumerate(iter_raw(data, batch_size)):
            if i % world == rank:
                yield i, b
