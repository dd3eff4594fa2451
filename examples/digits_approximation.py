"""Which Fisher approximation predicts the KL best, on an MLP trained on scikit-learn's digits?

Trains an MLP 64-32-32-10 (tanh) with Adam for 20 epochs on 1437 digits, then runs
``fisherkl.nn.approximation_report`` on 600 training inputs (float64 copy of the network): the
predicted KL ½δᵀFδ of the diagonal, KFAC, EKFAC, per-layer block and exact dense Fisher against the
exact mean KL, for random, gradient, natural-gradient, SGD-step and Adam-step directions, at steps
whose predicted KL under the exact Fisher is 1e-6 … 1e-1; and the angle of each representation's
natural-gradient direction to the exact one.

    python examples/digits_approximation.py [--plot approx.png] [--damping 1e-3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from fisherkl.nn.approx import approximation_report
from fisherkl.nn.digits import digits_mlp, load_digits_split, train_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plot", default=None, help="write the ratio plot to this PNG")
    ap.add_argument("--damping", type=float, default=1e-3, help="λ of the natural-gradient directions")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    (x, y), _ = load_digits_split(seed=0)
    net = digits_mlp(seed=0)
    train_loss = train_classifier(net, x, y, epochs=20)
    print(f"trained: train loss {train_loss:.4f} ({time.perf_counter() - t0:.1f}s)\n")

    report = approximation_report(
        net,
        (x[:600], y[:600]),
        "categorical",
        representations=("diag", "kfac", "ekfac", "block", "dense"),
        directions=("random", "gradient", "natural", "sgd_step", "adam_step"),
        step_sizes=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        damping=args.damping,
    )
    print(report)
    if args.plot:
        report.plot(args.plot)
        print(f"plot: {args.plot}")
    print(f"\ntotal time {time.perf_counter() - t0:.1f}s (torch threads: {args.threads})")


if __name__ == "__main__":
    main()
