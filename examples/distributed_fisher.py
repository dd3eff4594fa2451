"""The network Fisher over several processes: ``torchrun --nproc_per_node=2 examples/distributed_fisher.py``.

Every rank builds the same network and the same data (here synthetic; in practice a dataset every rank
can read), calls ``fisherkl.nn.fisher(..., distributed=True)`` — which gives each rank its share of
the batches and all-reduces the statistics — and gets the same Fisher, the mean over all the data.
Rank 0 then recomputes it in one process and prints the agreement. On GPUs, use the NCCL backend and
put each rank's network on its own device (see docs/distributed.md).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch import nn

import fisherkl.nn as fnn


def main() -> None:
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("FISHERKL_BACKEND") == "nccl" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if backend == "nccl" else torch.device("cpu")
    torch.manual_seed(0)  # the same network on every rank
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    g = torch.Generator().manual_seed(1)  # the same data on every rank: fisher shards it by batch
    x, y = torch.randn(10_001, 20, generator=g), torch.randint(0, 10, (10_001,), generator=g)

    results = {}
    for rep in ("diag", "kfac", "block"):
        t = time.perf_counter()
        f = fnn.fisher(net, (x, y), head="categorical", representation=rep, batch_size=500, distributed=True)
        results[rep] = (f, time.perf_counter() - t)
    if rank == 0:
        print(f"{world} ranks ({backend}), {x.shape[0]} examples, p = {results['diag'][0].p}")
        for rep, (f, secs) in results.items():
            single = fnn.fisher(net, (x.to(device), y.to(device)), representation=rep, batch_size=500)
            a, b = f.to_dense(), single.to_dense()
            err = float((a - b).abs().max() / b.abs().max())
            print(f"  {rep:5s}: {secs:6.2f} s distributed, max relative difference to one process {err:.1e}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
