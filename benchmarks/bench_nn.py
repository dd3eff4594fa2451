"""Time fisherkl.nn against one gradient (the unit) on the models of issue 6.

(A) MLP 64→128→128→10 on 1,024 digits (scikit-learn's bundled dataset); (B) CNN Conv(1,16,3)–
Conv(16,32,3)–MaxPool–Linear on 256 16×16 inputs; (C) MLP 64→32→10 for the dense Fisher.
float32, mean over examples, median of repeats. Peers (BackPACK, nngeometry, curvlinops) are timed
when importable (the ``compare`` extra); otherwise their columns are left empty.

    python benchmarks/bench_nn.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import fisherkl.nn as fnn


def digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16
    y = torch.tensor(d.target)
    return x[:n], y[:n]


def models() -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    xa, ya = digits(1024)
    a = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    xb = nn.functional.interpolate(xa[:256].reshape(-1, 1, 8, 8), size=16, mode="bilinear")
    b = nn.Sequential(
        nn.Conv2d(1, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 6 * 6, 10),
    )
    c = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return {"A": (a, xa, ya), "B": (b, xb, ya[:256]), "C": (c, xa, ya)}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def gradient(net, x, y):
    def run():
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()

    return run


def ours(net, x, y, task):
    data = (x, y)
    big = 1024
    if task == "exact diag":
        return lambda: fnn.fisher(net, data, representation="diag", batch_size=big, progress=False)
    if task == "mc diag":
        return lambda: fnn.fisher(net, data, kind="mc", representation="diag", batch_size=big, progress=False)
    if task == "exact kfac":
        return lambda: fnn.fisher(net, data, representation="kfac", batch_size=big, progress=False)
    if task == "mc kfac":
        return lambda: fnn.fisher(net, data, kind="mc", representation="kfac", batch_size=big, progress=False)
    if task == "fvp":
        f = fnn.fisher(net, data, representation="implicit", batch_size=big, progress=False)
        v = torch.randn(f.p)
        return lambda: f.mv(v)
    if task == "dense exact":
        return lambda: fnn.fisher(net, data, representation="dense", batch_size=big, progress=False)
    if task == "per-example grads":
        from torch.func import functional_call, grad, vmap

        params = {k: p.detach() for k, p in net.named_parameters()}

        def loss(pr, xi, yi):
            return nn.functional.cross_entropy(functional_call(net, pr, (xi[None],)), yi[None])

        return lambda: vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    raise KeyError(task)


TASKS = [
    ("exact diag", "AB"),
    ("mc diag", "AB"),
    ("exact kfac", "AB"),
    ("mc kfac", "AB"),
    ("fvp", "AB"),
    ("dense exact", "C"),
    ("per-example grads", "AB"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ms = models()
    unit = {k: median_time(gradient(*ms[k]), args.repeats) for k in ms}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, mean over examples")
    print("gradient (the unit): " + ", ".join(f"{k} {1e3 * t:.2f} ms" for k, t in unit.items()))
    print(f"{'task':<20}{'model':<7}{'fisherkl ms':>12}{'× gradient':>12}")
    for task, which in TASKS:
        for k in which:
            t = median_time(ours(*ms[k], task), args.repeats)
            print(f"{task:<20}{k:<7}{1e3 * t:>12.2f}{t / unit[k]:>12.1f}")


if __name__ == "__main__":
    main()
