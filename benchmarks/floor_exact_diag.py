"""The exact diagonal against its floor on the ResNet-18-style network of bench_models.py.

Two floors, both one forward pass with its graph and C − 1 backward passes with random cotangents:

- **backward passes** (the issue's "forward + (C − 1) backward passes"): each pass as a training step's
  backward runs it, to the parameters — C − 1 gradients' worth of work;
- **activations only** (stricter): each pass only to every convolution, BatchNorm and Linear output, as
  fisherkl's cotangent rows go, without any weight gradient. No exact diagonal can reach it: its per-example
  weight gradients cost at least what the weight gradients it leaves out cost.

fisherkl's exact diagonal adds the per-example statistics to the activations-only passes. Interleaved repeats,
medians, the load average at start and end.

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

    params = [p for p in net.parameters() if p.requires_grad]

    def passes() -> None:
        with torch.enable_grad():
            out = net(x)
            for r in range(classes - 1):
                torch.autograd.grad(out, params, torch.randn_like(out), retain_graph=r < classes - 2)

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
    cases = (("backward passes", passes), ("activations only", floor), ("fisherkl", ours))
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeats):
        for name, fn in cases:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    o = statistics.median(times["fisherkl"])
    print(f"fisherkl exact diagonal {o:.2f} s")
    for name, _ in cases[:2]:
        f = statistics.median(times[name])
        print(f"floor ({name}) {f:.2f} s, ratio {o / f:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
