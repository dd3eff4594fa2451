"""The exact diagonal against its floor on the ResNet-18-style network of bench_models.py.

The floor is what any exact diagonal must at least do: one forward pass with its graph and C − 1 backward
passes through the activations only (to every convolution, BatchNorm and Linear output, as fisherkl's cotangent
rows go), here with random cotangents. fisherkl's exact diagonal adds the per-example statistics to that.
Interleaved repeats, medians, the load average at start and end.

    python benchmarks/floor_exact_diag.py [--width 16] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

import fisherkl.nn as fnn

sys.path.insert(0, os.path.dirname(__file__))
from bench_models import build

RECORDED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net, x, y = build("cnn", args.width)
    classes = 10
    print(f"load average {os.getloadavg()[0]:.2f} at start; N = {len(x)}, C − 1 = {classes - 1} rows")

    def floor() -> None:
        outs: list[torch.Tensor] = []
        hooks = [
            m.register_forward_hook(lambda m, a, o: outs.append(o)) for m in net.modules() if isinstance(m, RECORDED)
        ]
        try:
            with torch.enable_grad():
                out = net(x)
                for r in range(classes - 1):
                    torch.autograd.grad(out, outs, torch.randn_like(out), retain_graph=r < classes - 2)
        finally:
            for h in hooks:
                h.remove()

    def ours() -> None:
        fnn.fisher(net, (x, y), kind="exact", representation="diag", batch_size=len(x), progress=False)

    floor()
    times: dict[str, list[float]] = {"floor": [], "fisherkl": []}
    for _ in range(args.repeats):
        for name, fn in (("floor", floor), ("fisherkl", ours)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    f, o = statistics.median(times["floor"]), statistics.median(times["fisherkl"])
    print(f"floor {f:.2f} s, fisherkl exact diagonal {o:.2f} s, ratio {o / f:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
