"""Scale: the network Fisher (KFAC and diagonal) over 10,000 and 100,000 synthetic examples, with 1 and 2
processes (gloo, CPU). Each configuration runs in fresh processes; reported per process: wall time of
``fisherkl.nn.fisher`` and peak resident memory (``resource.getrusage`` maxrss). The data is generated
batch by batch (each rank makes its own batches, ``shard=False``), so memory must not grow with N.

    python benchmarks/bench_scale.py            # the table
    python benchmarks/bench_scale.py --quick    # 2,000 / 20,000 examples
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch
from torch import nn

D_IN, HIDDEN, CLASSES, BATCH = 100, 256, 10, 1000


class SyntheticBatches:
    """Batches b ≡ rank (mod world) of N examples, each generated from its own seed (nothing stored)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self):
        for b in range(self.rank, -(-self.n // BATCH), self.world):
            g = torch.Generator().manual_seed(b)
            m = min(BATCH, self.n - b * BATCH)
            yield torch.randn(m, D_IN, generator=g), torch.randint(0, CLASSES, (m,), generator=g)


def worker(rank: int, world: int, n: int, rep: str, init: str, out: str) -> None:
    import torch.distributed as dist

    import fisherkl.nn as fnn

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world,
                                timeout=timedelta(seconds=600))  # fmt: skip
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                        nn.Linear(HIDDEN, CLASSES))  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    f = fnn.fisher(net, SyntheticBatches(n, rank, world), representation=rep, batch_size=BATCH,
                   distributed=world > 1, shard=False, progress=False)  # fmt: skip
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(out, "w") as fh:
        json.dump({"secs": secs, "peak_mib": peak / 1024, "before_mib": before / 1024, "p": f.p,
                   "n": f.n_examples, "trace": float(f.trace())}, fh)  # fmt: skip
    if world > 1:
        dist.destroy_process_group()


def run(world: int, n: int, rep: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    str(r),
                    str(world),
                    str(n),
                    rep,
                    os.path.join(d, "init"),
                    os.path.join(d, f"out{r}.json"),
                ],
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            for r in range(world)
        ]
        for p in procs:
            if p.wait(timeout=1800) != 0:
                raise SystemExit(f"worker failed ({world} processes, N={n}, {rep})")
        out = []
        for r in range(world):
            with open(os.path.join(d, f"out{r}.json")) as fh:
                out.append(json.load(fh))
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=6)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.worker:
        r, w, n, rep, init, out = args.worker
        worker(int(r), int(w), int(n), rep, init, out)
        return
    sizes = (2_000, 20_000) if args.quick else (10_000, 100_000)
    print(f"MLP {D_IN}-{HIDDEN}-{HIDDEN}-{CLASSES}, categorical head, exact kind, batches of {BATCH}, "
          f"1 thread per process, torch {torch.__version__}")  # fmt: skip
    print("| representation | processes | N | wall time (s) | peak RSS per process (MiB) | RSS before (MiB) | tr F |")
    print("|---|---|---|---|---|---|---|")
    for rep in ("kfac", "diag"):
        for world in (1, 2):
            for n in sizes:
                res = run(world, n, rep)
                secs = max(r["secs"] for r in res)
                peaks = " / ".join(f"{r['peak_mib']:.0f}" for r in res)
                befores = " / ".join(f"{r['before_mib']:.0f}" for r in res)
                print(f"| {rep} | {world} | {n:,} | {secs:.2f} | {peaks} | {befores} | {res[0]['trace']:.6g} |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
