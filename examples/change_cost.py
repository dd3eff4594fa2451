"""What will pruning or quantising cost? Predicted KL ½δᵀFδ against the exact KL, on digits and a small GPT.

Trains the digits MLP 64-32-32-10 or a small digits CNN (scikit-learn's bundled digits, 20 epochs of Adam),
or the small GPT of examples/transformer_fisher.py (generated text), computes the Fisher representations
on the training inputs (digits: all 1437; GPT: 64 sequences of 32 tokens), and prints

1. Spearman correlations between predicted and exact KL, per representation, over (i) quantising one
   parameter tensor alone at 8/4/3 bits (round-to-nearest, per channel, symmetric) and (ii) pruning masks
   at 10–90 % sparsity (global, per-layer and single-layer magnitude masks, OBD masks, random masks);
2. OBS (KFAC, EKFAC, block, dense where it fits) vs OBD (diagonal) vs magnitude pruning at 50 % and 80 %
   of the weights, without retraining: exact KL and test accuracy;
3. bit allocation under a size budget of 4 (and 3) bits per weight on average (widths 2/3/4/5/6/8): the
   predicted-KL (knapsack) allocation vs uniform bits vs a Fisher-trace (HAWQ-style) allocation.

    python examples/change_cost.py --model mlp|cnn|gpt [--plots DIR] [--bits 4,3] [--cache DIR] [--quick]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

import fisherkl
import fisherkl.nn as fnn
from fisherkl.matrix.base import DenseTooLargeError, check_dense_fits
from fisherkl.nn.change_plots import pruning_plot
from fisherkl.nn.digits import digits_mlp, load_digits_split, train_classifier
from fisherkl.nn.prune import masked_copy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class DigitsCNN(nn.Module):
    """8×8 digits: Conv 1→8 (3×3, pad 1) – tanh – Conv 8→16 (3×3, stride 2, pad 1) – tanh – Linear 256→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x.reshape(-1, 1, 8, 8)))
        return self.fc(torch.tanh(self.conv2(h)).flatten(1))


class Setup:
    """A trained network, the data its Fisher and KL are taken on, and its test accuracy."""

    def __init__(self, net: nn.Module, data: Any, accuracy: Callable[[nn.Module], float], kind: str) -> None:
        self.net, self.data, self.accuracy, self.kind = net, data, accuracy, kind


def digits_setup(model: str, quick: bool) -> Setup:
    (x, y), (xt, yt) = load_digits_split(seed=0)
    if quick:
        x, y = x[:300], y[:300]
    net = digits_mlp(0) if model == "mlp" else _seeded(DigitsCNN)
    loss = train_classifier(net, x, y, epochs=3 if quick else 20)
    net.eval()

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(xt).argmax(1) == yt).float().mean())

    print(f"{model}: {sum(p.numel() for p in net.parameters())} parameters, train loss {loss:.4f}, "
          f"test accuracy {accuracy(net):.4f}")  # fmt: skip
    return Setup(net, (x, y), accuracy, "exact")


def _seeded(cls: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def gpt_setup(quick: bool) -> Setup:
    from transformer_fisher import GPT, corpus, windows

    text = corpus(400 if quick else 4000)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    other = corpus(1000, seed=1)
    if not set(other) <= set(chars):
        raise SystemExit("the held-out text has characters the training text lacks")
    test_ids = torch.tensor([chars.index(c) for c in other])
    context = 12 if quick else 32
    torch.manual_seed(0)
    net = GPT(len(chars), d=16 if quick else 32, context=context, layers=1 if quick else 2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30 if quick else 300):
        xb, yb = windows(ids, context, 32, gen)
        loss = F.cross_entropy(net(xb).transpose(1, 2), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    data = windows(ids, context, 8 if quick else 64, torch.Generator().manual_seed(2))
    xt, yt = windows(test_ids, context, 256, torch.Generator().manual_seed(3))

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(xt).argmax(-1) == yt).float().mean())

    print(f"gpt: {sum(p.numel() for p in net.parameters())} parameters, train loss/token {loss.item():.3f}, "
          f"held-out next-token accuracy {accuracy(net):.4f}")  # fmt: skip
    return Setup(net, data, accuracy, "exact")


def fishers(s: Setup, reps: list[str], cache: str | None, model: str) -> dict[str, Any]:
    """The Fisher representations (read from / written to ``cache`` when given: the training is seeded)."""
    out = {}
    for r in reps:
        path = os.path.join(cache, f"{model}_{r}.pt") if cache else None
        if path and os.path.exists(path):
            out[r] = fisherkl.load(path, net=s.net, representation=r)
            print(f"  Fisher {r:6s} read from {path}")
            continue
        t0 = time.perf_counter()
        out[r] = fnn.fisher(s.net, s.data, "categorical", s.kind, r, batch_size=64)
        print(f"  Fisher {r:6s} {time.perf_counter() - t0:6.1f}s")
        if path:
            out[r].save(path)
    return out


def spearman(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b)[0])


def quantisation_spearman(s: Setup, mats: dict[str, Any]) -> Any:
    sens = fnn.quantization_sensitivity(s.net, mats, s.data, bits=(8, 4, 3), params=lambda n, p: True)
    exact = [r.exact for r in sens.rows]
    print(f"\n(i) quantising one parameter tensor alone at 8/4/3 bits: {len(sens.rows)} cases "
          f"({len(sens.rows) // 3} tensors)")  # fmt: skip
    print(f"{'Fisher':<14}{'Spearman (all)':>16}{'within a width (mean)':>24}{'median pred/exact':>19}")
    sources = [(r, r) for r in mats] + ([("trace (diag)", "trace:diag")] if "diag" in mats else [])
    for label, src in sources:
        c = sens.costs(src)
        pred = [c[r.name][r.bits] for r in sens.rows]
        within = []
        for b in sens.bits:
            rows = [i for i, r in enumerate(sens.rows) if r.bits == b]
            within.append(spearman([pred[i] for i in rows], [exact[i] for i in rows]))
        ratio = torch.tensor([p / e for p, e in zip(pred, exact) if e > 0]).median()
        print(f"{label:<14}{spearman(pred, exact):>16.4f}{sum(within) / len(within):>24.4f}{float(ratio):>19.3f}")
    return sens


def pruning_masks(s: Setup, mats: dict[str, Any]) -> list[tuple[str, float, dict[str, torch.Tensor]]]:
    """(label, sparsity, masks) for global / per-layer / single-layer magnitude, OBD and random masks."""
    names = [n for n, p in s.net.named_parameters() if p.ndim >= 2]
    out = []
    gen = torch.Generator().manual_seed(0)
    for k in range(1, 10):
        sp = k / 10
        out.append(("magnitude global", sp, fnn.prune(s.net, None, sp, "magnitude").masks))
        out.append(("magnitude per layer", sp, fnn.prune(s.net, None, sp, "magnitude", "layer").masks))
        if "diag" in mats:
            out.append(("OBD global", sp, fnn.prune(s.net, mats["diag"], sp, "obd").masks))
        named = dict(s.net.named_parameters())
        out.append(("random", sp, {n: torch.rand(named[n].shape, generator=gen) >= sp for n in names}))
        for n in names:
            out.append((f"{n} alone", sp, fnn.prune(s.net, None, sp, "magnitude", params=[n]).masks))
    return out


def pruning_spearman(s: Setup, mats: dict[str, Any]) -> None:
    masks = pruning_masks(s, mats)
    w = fnn.parameters_vector(s.net)
    exact, deltas = [], []
    for _, _, m in masks:
        pruned = masked_copy(s.net, m)
        deltas.append(fnn.parameters_vector(pruned) - w)
        exact.append(float(fnn.kl(s.net, pruned, s.data, batch_size=64)))
    print(f"\n(ii) pruning masks at 10–90 % sparsity: {len(masks)} masks (no update)")
    print(f"{'Fisher':<14}{'Spearman':>10}{'median pred/exact':>19}{'  Spearman, masks with exact KL < 0.1':>38}")
    small = [i for i, e in enumerate(exact) if e < 0.1]
    for r, f in mats.items():
        pred = [0.5 * float(f.quad(d)) for d in deltas]
        ratio = float(torch.tensor([p / e for p, e in zip(pred, exact) if e > 0]).median())
        sm = spearman([pred[i] for i in small], [exact[i] for i in small]) if len(small) > 2 else float("nan")
        print(f"{r:<14}{spearman(pred, exact):>10.4f}{ratio:>19.3f}{sm:>38.4f}  ({len(small)} masks)")


def obs_comparison(s: Setup, mats: dict[str, Any], plots: str | None, model: str) -> None:
    print("\n(2) pruning 50 % / 80 % of the weights (global), no retraining: exact KL and test accuracy")
    print(f"{'method':<22}{'sparsity':>9}{'predicted':>12}{'exact KL':>11}{'accuracy':>10}{'time':>8}")
    print(f"{'(unpruned)':<22}{0:>9.0%}{'':>12}{0:>11.4g}{s.accuracy(s.net):>10.4f}")
    runs: list[tuple[str, Any, str, str]] = [("magnitude", None, "magnitude", "global")]
    runs.append(("magnitude per layer", None, "magnitude", "layer"))
    if "diag" in mats:
        runs.append(("OBD (diag)", mats["diag"], "obd", "global"))
    for r in ("kfac", "ekfac", "block", "dense"):
        if r in mats:
            runs.append((f"OBS ({r})", mats[r], "obs", "global"))
    best: dict[float, dict[str, float]] = {}
    for sp in (0.5, 0.8):
        for label, f, method, scope in runs:
            t0 = time.perf_counter()
            res = fnn.prune(s.net, f, sp, method, scope, data=s.data, batch_size=64, direct_max=5000)
            took = time.perf_counter() - t0
            pred = "—" if res.predicted is None else f"{res.predicted:.4g}"
            print(f"{label:<22}{sp:>9.0%}{pred:>12}{res.exact:>11.4g}{s.accuracy(res.net):>10.4f}{took:>7.1f}s")
            best.setdefault(sp, {})[label] = res.exact
    for sp, row in best.items():
        obs = {k: v for k, v in row.items() if k.startswith("OBS")}
        if obs:
            k = min(obs, key=obs.get)  # type: ignore[arg-type]
            print(f"  at {sp:.0%}: magnitude / {k} exact KL = {row['magnitude'] / obs[k]:.1f}×")
    if plots:
        sps = [k / 10 for k in range(1, 10)]
        curves = {}
        for label, f, method, scope in runs:
            if label in ("magnitude", "OBD (diag)", "OBS (kfac)"):
                rs = fnn.pruning_curve(s.net, f, sps, method, scope, data=s.data, batch_size=64, direct_max=5000)
                pred_f = mats.get("kfac")
                curves[label] = (
                    [None if pred_f is None else 0.5 * float(pred_f.quad(r.delta)) for r in rs],
                    [r.exact for r in rs],
                )
        path = os.path.join(plots, f"change_{model}_pruning.png")
        pruning_plot(sps, curves, path, f"{model}: pruning, predicted (KFAC) vs exact KL")
        print(f"  wrote {path}")


def bit_allocation(s: Setup, mats: dict[str, Any], budgets: list[float]) -> None:
    widths = (2, 3, 4, 5, 6, 8)
    sens = fnn.quantization_sensitivity(s.net, mats, s.data, bits=widths)
    total = sum(sens.sizes.values())
    for avg_bits in budgets:
        print(f"\n(3) bit allocation, {avg_bits:g} bits per weight on average (biases and norms in full precision)")
        print(f"{'allocation':<22}{'exact KL':>11}{'accuracy':>10}{'avg bits':>10}  bits per tensor")
        plans = {}
        if float(avg_bits).is_integer() and int(avg_bits) in widths:
            plans[f"uniform {avg_bits:g} bits"] = dict.fromkeys(sens.sizes, int(avg_bits))
        for r in ("kfac", "ekfac", "block", "dense", "diag"):
            if r in mats:
                plans[f"predicted KL ({r})"] = fnn.allocate_bits(sens.costs(r), sens.sizes, avg_bits)
        if "diag" in mats:
            plans["Fisher trace (diag)"] = fnn.allocate_bits(sens.costs("trace:diag"), sens.sizes, avg_bits)
        plans["exact KL per layer"] = fnn.allocate_bits(sens.costs("exact"), sens.sizes, avg_bits)
        for label, plan in plans.items():
            q = fnn.quantize(s.net, plan)
            ex = float(fnn.kl(s.net, q, s.data, batch_size=64))
            avg = sum(sens.sizes[n] * b for n, b in plan.items()) / total
            bits = " ".join(str(plan[n]) for n in sens.sizes)
            print(f"{label:<22}{ex:>11.4g}{s.accuracy(q):>10.4f}{avg:>10.2f}  {bits}")
    print("  tensors: " + ", ".join(f"{n} ({sens.sizes[n]})" for n in sens.sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn", "gpt"])
    ap.add_argument("--plots", default=None, help="directory for the PNG figures")
    ap.add_argument("--quick", action="store_true", help="a small run (a smoke test)")
    ap.add_argument("--bits", default="4,3", help="average bit budgets for the allocation, comma-separated")
    ap.add_argument("--cache", default=None, help="directory to keep the Fishers in between runs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    s = gpt_setup(args.quick) if args.model == "gpt" else digits_setup(args.model, args.quick)
    reps = ["diag", "kfac"] if args.quick else ["diag", "kfac", "ekfac", "block", "dense"]
    p = sum(q.numel() for q in s.net.parameters())
    try:
        check_dense_fits(p, torch.float32, "dense", max_bytes=512 * 1024**2)
    except DenseTooLargeError:
        if "dense" in reps:
            reps.remove("dense")
            print(f"  (dense left out: p = {p})")
    mats = fishers(s, reps, args.cache, args.model + ("-quick" if args.quick else ""))
    print("\n(1) Spearman rank correlation between predicted ½δᵀFδ and exact KL")
    sens = quantisation_spearman(s, mats)
    pruning_spearman(s, mats)
    obs_comparison(s, mats, args.plots, args.model)
    bit_allocation(s, mats, [float(b) for b in args.bits.split(",")])
    if args.plots:
        path = os.path.join(args.plots, f"change_{args.model}_quantisation.png")
        sens.plot(path)
        print(f"  wrote {path}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
