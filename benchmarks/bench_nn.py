"""Time fisherkl.nn against one gradient (the unit) and against BackPACK, nngeometry and curvlinops.

(A) MLP 64→128→128→10 on 1,024 digits (scikit-learn's bundled dataset); (B) CNN Conv(1,16,3)–
Conv(16,32,3)–MaxPool–Linear on 256 16×16 inputs; (C) MLP 64→32→10 for the dense Fisher.
float32, categorical head on logits, mean over examples (peers: loss reduction "mean", the same
matrix). Every repeat times the gradient, ours and each peer in turn (interleaved, so that a busy
shared machine slows all of them alike); the table shows medians, each as a multiple of the median
gradient, and ours / best peer. Peers are timed when importable (the ``compare`` extra); otherwise
their columns are empty. Then the peak memory (RSS) of a streamed diagonal / KFAC over 1× and 100×
the data, each in a fresh subprocess.

    python benchmarks/bench_nn.py [--repeats 7] [--only exact-diag,fvp] [--no-memory]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

import fisherkl.nn as fnn

Fn = Callable[[], object]


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


def gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Fn:
    def run() -> None:
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()

    return run


# --- fisherkl ------------------------------------------------------------------------------------
def ours(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> Fn | None:
    data = (x, y)
    kw = {"batch_size": len(x), "progress": False}
    if task == "exact diag":
        return lambda: fnn.fisher(net, data, representation="diag", **kw)
    if task == "mc diag":
        return lambda: fnn.fisher(net, data, kind="mc", representation="diag", **kw)
    if task == "exact kfac":
        return lambda: fnn.fisher(net, data, representation="kfac", **kw)
    if task == "mc kfac":
        return lambda: fnn.fisher(net, data, kind="mc", representation="kfac", **kw)
    if task == "fvp":
        f = fnn.fisher(net, data, representation="implicit", **kw)
        v = torch.randn(f.p)
        return lambda: f.mv(v)
    if task == "dense exact":
        return lambda: fnn.fisher(net, data, representation="dense", **kw)
    if task == "per-example grads":
        from fisherkl.nn.engine import per_example_gradients

        return lambda: per_example_gradients(net, x, y)
    return None


def plain(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> Fn | None:
    """Baselines without a library: jvp→vjp for the FVP, vmap(grad) for per-example gradients."""
    from torch.func import functional_call, grad, jvp, vjp, vmap

    params = {k: p.detach() for k, p in net.named_parameters()}
    if task == "fvp":
        v = {k: torch.randn_like(p) for k, p in params.items()}

        def fvp() -> object:
            f, u = jvp(lambda pr: functional_call(net, pr, (x,)), (params,), (v,))
            p = torch.softmax(f, -1)
            w = (p * u - p * (p * u).sum(-1, keepdim=True)) / len(x)
            return vjp(lambda pr: functional_call(net, pr, (x,)), params)[1](w)

        return fvp
    if task == "per-example grads":

        def loss(pr: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(net, pr, (xi[None],)), yi[None])

        return lambda: vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return None


# --- peers -----------------------------------------------------------------------------------------
def backpack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> Fn | None:
    try:
        import backpack as bp
        from backpack import extensions as ext
    except ImportError:
        return None
    what = {
        "exact diag": ext.DiagGGNExact,
        "mc diag": ext.DiagGGNMC,
        "exact kfac": ext.KFLR,
        "mc kfac": ext.KFAC,
        "dense exact": ext.SqrtGGNExact,
        "per-example grads": ext.BatchGrad,
    }
    if task == "fvp":
        from backpack.hessianfree.ggnvp import ggn_vector_product

        v = [torch.randn_like(p) for p in net.parameters()]

        def fvp() -> object:
            out = net(x)
            return ggn_vector_product(nn.functional.cross_entropy(out, y), out, net, v)

        return fvp
    if task not in what:
        return None
    model = bp.extend(copy.deepcopy(net))
    lossf = bp.extend(nn.CrossEntropyLoss())
    extension = what[task]

    def run() -> object:
        model.zero_grad()
        with bp.backpack(extension()):
            lossf(model(x), y).backward()
        if task == "dense exact":  # SqrtGGNExact: [C, N, *shape] per parameter → Σ over rows of S Sᵀ
            s = torch.cat([p.sqrt_ggn_exact.flatten(2) for p in model.parameters()], 2).flatten(0, 1)
            return s.T @ s
        return None

    return run


def nngeometry(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> Fn | None:
    try:
        from nngeometry.metrics import FIM, FIM_MonteCarlo
        from nngeometry.object import PMatDense, PMatDiag, PMatKFAC
    except ImportError:
        return None
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    exact = {"exact diag": PMatDiag, "exact kfac": PMatKFAC, "dense exact": PMatDense}
    mc = {"mc diag": PMatDiag, "mc kfac": PMatKFAC}
    if task in exact:
        return lambda: FIM(net, loader, exact[task], variant="classif_logits")
    if task in mc:
        return lambda: FIM_MonteCarlo(net, loader, mc[task], variant="classif_logits")
    return None


def curvlinops(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str) -> Fn | None:
    try:
        from curvlinops import FisherType, GGNLinearOperator, KFACLinearOperator
    except ImportError:
        return None
    params = [p for p in net.parameters() if p.requires_grad]
    data = [(x, y)]
    lossf = nn.CrossEntropyLoss()
    common = {"check_deterministic": False, "num_data": len(x)}
    if task in ("exact kfac", "mc kfac"):
        ft = FisherType.TYPE2 if task == "exact kfac" else FisherType.MC

        def kfac() -> object:
            k = KFACLinearOperator(
                net, lossf, params, data, fisher_type=ft, separate_weight_and_bias=False,
                num_per_example_loss_terms=1, **common,
            )  # fmt: skip
            k.compute_kronecker_factors()
            return k

        return kfac
    if task == "fvp":
        op = GGNLinearOperator(net, lossf, params, data, **common)
        v = torch.randn(sum(p.numel() for p in params))
        return lambda: op @ v
    return None


PEERS = {"BackPACK": backpack, "nngeometry": nngeometry, "curvlinops": curvlinops, "plain": plain}
TASKS = [
    ("exact diag", "AB"),
    ("mc diag", "AB"),
    ("exact kfac", "AB"),
    ("mc kfac", "AB"),
    ("fvp", "AB"),
    ("dense exact", "C"),
    ("per-example grads", "AB"),
]
TARGET = {("exact diag", "B"): 0.8, ("exact kfac", "B"): 0.8}


def interleaved(fns: dict[str, Fn], repeats: int) -> dict[str, float]:
    """Median seconds per function; every repeat runs them all in turn (after one warm-up each)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def memory_child(rep: str, copies: int) -> None:
    """(subprocess) Stream ``copies`` × the digits through a diag / KFAC of model A; print peak RSS MiB."""
    import resource

    torch.set_num_threads(2)
    net, x, y = models()["A"]
    data = ((x, y) for _ in range(copies))  # a one-shot stream: the data itself is never all in memory
    fnn.fisher(net, data, representation=rep, batch_size=len(x), progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def memory_table() -> None:
    print("\npeak RSS of a streamed Fisher on A (fresh subprocess each; 1,024 examples per batch)")
    print(f"{'representation':<16}{'1× (1,024)':>14}{'100× (102,400)':>18}")
    for rep in ("diag", "kfac"):
        mib = []
        for copies in (1, 100):
            cmd = [sys.executable, __file__, "--memory-child", f"{rep}:{copies}"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
            mib.append(float(out[-1]))
        print(f"{rep:<16}{mib[0]:>11.0f} MiB{mib[1]:>15.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", default="", help="comma-separated tasks (dashes for spaces)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is steadier on a busy machine)")
    ap.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # BackPACK's full-backward-hook notice, nngeometry's deprecations
    if args.memory_child:
        rep, copies = args.memory_child.split(":")
        memory_child(rep, int(copies))
        return
    torch.set_num_threads(args.threads)
    ms = models()
    only = {t.replace("-", " ") for t in args.only.split(",") if t}
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, mean over examples, "
        f"median of {args.repeats} interleaved repeats; load average {os.getloadavg()[0]:.2f} at start"
    )
    names = ["fisherkl", *PEERS]
    head = f"{'task':<18}{'model':<6}" + "".join(f"{n:>12}" for n in names) + f"{'ours/best':>11}{'target':>8}"
    print("times in ms, (× one gradient on the same model)")
    print(head)
    for task, which in TASKS:
        if only and task not in only:
            continue
        for k in which:
            net, x, y = ms[k]
            fns: dict[str, Fn] = {"gradient": gradient(net, x, y)}
            for name, make in [("fisherkl", ours), *PEERS.items()]:
                f = make(net, x, y, task)
                if f is not None:
                    fns[name] = f
            med = interleaved(fns, args.repeats)
            unit = med["gradient"]
            cells = []
            for n in names:
                cells.append(f"{1e3 * med[n]:>7.1f}({med[n] / unit:>3.0f})" if n in med else f"{'-':>12}")
            peers = [med[n] for n in PEERS if n in med and n != "plain"]
            ratio = med["fisherkl"] / min(peers) if peers and "fisherkl" in med else float("nan")
            target = TARGET.get((task, k), 1.0)
            mark = "" if ratio != ratio else ("ok" if ratio <= target else "MISS")
            line = f"{task:<18}{k:<6}" + "".join(f"{c:>12}" for c in cells) + f"{ratio:>11.2f}{mark:>8}"
            if task == "fvp" and k == "A":
                line += f"   (FVP ≤ 2× gradient: {med['fisherkl'] / unit:.2f}×)"
            print(line, flush=True)
    if not args.no_memory:
        memory_table()
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
