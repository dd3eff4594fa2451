"""Merging two digits models trained on different classes: Fisher merging vs plain averaging.

Two copies of the digits MLP 64-32-32-10 start from one network — trained for ``--pretrain`` epochs on all
ten digits (0 = only the same initialisation) — and are fine-tuned with Adam, one on the digits 0–4 (A),
the other on 5–9 (B). They are merged by plain averaging and by Fisher merging,
θ* = (Σᵢ Fᵢ + λI)⁻¹(Σᵢ Fᵢθᵢ + λθ̄), with each model's Fisher on its own training inputs (diag, KFAC,
EKFAC, block, dense), λ = ``--damping`` × tr(ΣF)/p. Printed, mean ± sd over ``--seeds``: test accuracy on
A, on B and on all digits, and the exact KL from each parent to the merge on the parent's data
(with the predicted ½(θ* − θᵢ)ᵀFᵢ(θ* − θᵢ)).

    python examples/digits_merge.py [--pretrain 2] [--seeds 3] [--damping 1e-3,1e-2,1e-1] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import fisherkl.nn as fnn
from fisherkl.nn.digits import digits_mlp, load_digits_split, train_classifier


def run(seed: int, pretrain: int, reps: list[str], dampings: list[float]) -> dict[str, list[float]]:
    (x, y), (xt, yt) = load_digits_split(seed=seed)
    a, b = y < 5, y >= 5
    at, bt = yt < 5, yt >= 5
    base = digits_mlp(seed)
    if pretrain:
        train_classifier(base, x, y, epochs=pretrain, seed=seed)
    na, nb = copy.deepcopy(base), copy.deepcopy(base)
    train_classifier(na, x[a], y[a], epochs=10, lr=3e-3, seed=seed + 1)
    train_classifier(nb, x[b], y[b], epochs=10, lr=3e-3, seed=seed + 2)
    da, db = (x[a], y[a]), (x[b], y[b])

    def acc(m: torch.nn.Module, mask: torch.Tensor | None = None) -> float:
        with torch.no_grad():
            xx, yy = (xt, yt) if mask is None else (xt[mask], yt[mask])
            return float((m(xx).argmax(1) == yy).float().mean())

    rows: dict[str, list[float]] = {}

    def record(label: str, res: fnn.MergeResult | None, net: torch.nn.Module) -> None:
        ex = res.exact if res is not None and res.exact is not None else [float("nan")] * 2
        pred = res.predicted if res is not None and res.predicted is not None else [float("nan")] * 2
        rows[label] = [acc(net, at), acc(net, bt), acc(net), ex[0], ex[1], pred[0], pred[1]]

    record("model A (0–4)", None, na)
    record("model B (5–9)", None, nb)
    avg = fnn.merge([na, nb], data=[da, db])
    record("average", avg, avg.net)
    for r in reps:
        fa = fnn.fisher(na, da, representation=r)
        fb = fnn.fisher(nb, db, representation=r)
        scale = float(fa.trace() + fb.trace()) / 2 / fa.p
        for lam in dampings:
            res = fnn.merge([na, nb], [fa, fb], damping=lam * scale, data=[da, db])
            record(f"Fisher {r}, λ={lam:g}", res, res.net)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain", type=int, default=2, help="epochs on all digits before the split (0: none)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--damping", default="1e-3,1e-2,1e-1", help="λ / (tr ΣF / p), comma-separated")
    ap.add_argument("--reps", default="diag,kfac,ekfac,block,dense")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    reps = args.reps.split(",")
    dampings = [float(v) for v in args.damping.split(",")]
    runs = [run(s, args.pretrain, reps, dampings) for s in range(args.seeds)]
    print(f"digits MLP, shared pre-training {args.pretrain} epochs, A = digits 0–4, B = 5–9; "
          f"mean ± sd over {args.seeds} seeds")  # fmt: skip
    cols = ["acc A", "acc B", "acc all", "KL(A‖merge)", "KL(B‖merge)", "pred A", "pred B"]
    print(f"{'':<24}" + "".join(f"{c:>20}" for c in cols))
    for label in runs[0]:
        vals = [[r[label][j] for r in runs] for j in range(len(cols))]
        cells = []
        for v in vals:
            if any(x != x for x in v):  # nan: not applicable
                cells.append(f"{'—':>20}")
                continue
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):>10.3g} ± {sd:<7.2g}")
        print(f"{label:<24}" + "".join(f"{c:>20}" for c in cells))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
