"""NaturalGradient (KFAC) against SGD and Adam on scikit-learn's digits: epochs and wall time to a test loss.

An MLP 64-32-32-10 (tanh) on the 8×8 digits (1437 train / 360 test, fixed split), minibatches of 64.
Each optimiser's learning rate (and NaturalGradient's damping) is tuned on a small grid with two
separate tuning seeds (the setting reaching the target test loss on the most tuning seeds, then in
the fewest mean epochs, then the least time); then 3 fresh seeds are run at that setting for the
full epoch budget. Wall time counts training only (the per-epoch test evaluation is excluded)
and, for NaturalGradient, includes the Fisher refreshes.

    python examples/digits_natural_gradient.py [--target 0.1] [--epochs 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from fisherkl.errors import FisherKLError
from fisherkl.nn.digits import digits_mlp, load_digits_split
from fisherkl.nn.optim import NaturalGradient

load = load_digits_split
mlp = digits_mlp


MAX_KL = 1e-3  # NaturalGradient's KL trust region per step (nats)


def make_opt(name: str, net: nn.Module, cfg: dict):
    if name == "SGD":
        return torch.optim.SGD(net.parameters(), lr=cfg["lr"], momentum=0.9)
    if name == "Adam":
        return torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    return NaturalGradient(
        net.parameters(),
        "kfac",
        lr=cfg["lr"],
        damping=cfg["damping"],
        update_every=10,
        ema=0.95,
        max_kl=MAX_KL,
        net=net,
    )


def run(name: str, cfg: dict, seed: int, train, test, target: float, epochs: int, batch: int = 64) -> dict:
    """Train for ``epochs`` (no early stop); the first epoch at which the test loss is ≤ target, the
    training seconds spent until then, the best test loss and the final test accuracy."""
    net = mlp(seed)
    opt = make_opt(name, net, cfg)
    x, y = train
    g = torch.Generator().manual_seed(1000 + seed)
    out = {"epoch": None, "seconds": None, "best": float("inf"), "acc": float("nan"), "s_per_epoch": 0.0}
    spent = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            try:
                if isinstance(opt, NaturalGradient):
                    opt.step(fisher_data=xb)
                else:
                    opt.step()
            except (FisherKLError, RuntimeError):  # diverged (non-finite gradient or Fisher)
                return out
        spent += time.perf_counter() - t0
        out["s_per_epoch"] = spent / epoch
        with torch.no_grad():
            logits = net(test[0])
            loss = float(nn.functional.cross_entropy(logits, test[1]))
            out["acc"] = float((logits.argmax(1) == test[1]).float().mean())
        if not loss < 50:  # diverged (or NaN)
            return out
        out["best"] = min(out["best"], loss)
        if loss <= target and out["epoch"] is None:
            out["epoch"], out["seconds"] = epoch, spent
    return out


GRID = {
    "SGD": [{"lr": lr} for lr in (0.03, 0.1, 0.3)],
    "Adam": [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2)],
    "NaturalGradient (KFAC)": [{"lr": lr, "damping": d} for d in (1e-3, 1e-2, 1e-1) for lr in (0.1, 0.3, 1.0)],
}


TUNE_SEEDS = (100, 101)


def show(cfg: dict) -> str:
    return ",".join(f"{k}={v:g}" for k, v in cfg.items())


def fmt(values: list[float], digits: int, unit: str = "") -> str:
    if not values:
        return "—"
    m = statistics.mean(values)
    spread = (max(values) - min(values)) / 2
    return f"{m:.{digits}f} ± {spread:.{digits}f}{unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", type=float, default=0.1, help="test cross-entropy to reach")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this tiny MLP)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load()
    t_all = time.perf_counter()

    print(
        f"Tuning on seeds {TUNE_SEEDS}: mean epochs to test loss ≤ {args.target} over the seeds that reach it "
        f"(k/{len(TUNE_SEEDS)} reached; — = none within {args.epochs} epochs)"
    )
    chosen = {}
    for name, grid in GRID.items():
        cells, best = [], None
        for cfg in grid:
            runs = [run(name, cfg, s, train, test, args.target, args.epochs) for s in TUNE_SEEDS]
            eps = [r["epoch"] for r in runs if r["epoch"] is not None]
            if eps:
                key = (-len(eps), statistics.mean(eps), statistics.mean(r["seconds"] for r in runs if r["seconds"]))
                cells.append(f"{show(cfg)}: {key[1]:.1f} ep ({len(eps)}/{len(runs)})")
                if best is None or key < best[0]:
                    best = (key, cfg)
            else:
                cells.append(f"{show(cfg)}: — (best loss {min(r['best'] for r in runs):.3f})")
        chosen[name] = best[1] if best else grid[0]
        print(f"  {name}: " + "; ".join(cells) + f"\n    → {show(chosen[name])}")

    print(
        f"\nSeeds 0, 1, 2 at the tuned settings: mean ± half-range; target test loss {args.target}, "
        f"{args.epochs} epochs"
    )
    print(
        f"{'optimiser':<24} {'setting':>20} {'reached':>8} {'epochs to target':>17} {'seconds to target':>18} "
        f"{'s/epoch':>8} {'best test loss':>15} {'final test acc':>15}"
    )
    for name, cfg in chosen.items():
        runs = [run(name, cfg, seed, train, test, args.target, args.epochs) for seed in (0, 1, 2)]
        hit = [r for r in runs if r["epoch"] is not None]
        print(
            f"{name:<24} {show(cfg):>20} {len(hit):>6}/3 {fmt([float(r['epoch']) for r in hit], 1):>17} "
            f"{fmt([r['seconds'] for r in hit], 2, 's'):>18} {statistics.mean(r['s_per_epoch'] for r in runs):>8.4f} "
            f"{fmt([r['best'] for r in runs], 3):>15} {fmt([r['acc'] for r in runs], 3):>15}"
        )
    print(f"\ntotal time {time.perf_counter() - t_all:.1f}s (torch threads: {args.threads})")


if __name__ == "__main__":
    main()
