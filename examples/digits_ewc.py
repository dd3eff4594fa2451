"""Continual learning on scikit-learn's digits: task 1 = digits 0–4, task 2 = digits 5–9, with and without EWC.

An MLP 64-64-10 (tanh) with one 5-way output group per task (task-incremental: each task's
prediction is a softmax over its own 5 logits). Train task 1 (Adam, 20 epochs), then task 2
(SGD, 20 epochs) with the loss of task 2 plus, optionally, the EWC penalty
½λ(w − w*)ᵀF₁(w − w*) with F₁ the exact Fisher of the task-1 model on the task-1 training inputs
(diagonal or KFAC). Reported: test accuracy on task 1 after task 1 and after task 2, and on task 2,
for 3 seeds (mean ± half-range). λ is a small grid, shown in full (no selection on test data).

    python examples/digits_ewc.py [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import Tensor, nn

import fisherkl.nn as fnn
from fisherkl.nn.digits import load_digits_split
from fisherkl.nn.ewc import EWC


class TaskHead(fnn.Categorical):
    """A categorical head over the logits ``cols`` of a multi-task output (the other logits are ignored)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.name = f"categorical[{start}:{stop}]"

    def _sub(self, out: Tensor) -> Tensor:
        return out[..., self.start : self.stop]

    def _pad(self, t: Tensor, out: Tensor) -> Tensor:
        full = t.new_zeros(*t.shape[:-1], out.shape[-1])
        full[..., self.start : self.stop] = t
        return full

    def distribution(self, out):
        return super().distribution(self._sub(out))

    def fisher(self, out):
        f = super().fisher(self._sub(out))
        full = f.new_zeros(*f.shape[:-2], out.shape[-1], out.shape[-1])
        full[..., self.start : self.stop, self.start : self.stop] = f
        return full

    def sqrt_fisher(self, out):
        return self._pad(super().sqrt_fisher(self._sub(out)), out)

    def fisher_mv(self, out, v):
        return self._pad(super().fisher_mv(self._sub(out), self._sub(v)), out)

    def sample(self, out, k=1, generator=None):
        return super().sample(self._sub(out), k, generator) + self.start

    def log_prob(self, out, y):
        return super().log_prob(self._sub(out), y - self.start)

    def score(self, out, y):
        return self._pad(super().score(self._sub(out), y - self.start), out)

    def kl(self, out_p, out_q):
        return super().kl(self._sub(out_p), self._sub(out_q))


def load(seed: int = 0):
    (x_tr, y_tr), (x_te, y_te) = load_digits_split(seed)
    tasks = []
    for lo in (0, 5):
        tr = (y_tr >= lo) & (y_tr < lo + 5)
        te = (y_te >= lo) & (y_te < lo + 5)
        tasks.append(((x_tr[tr], y_tr[tr]), (x_te[te], y_te[te])))
    return tasks


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


def task_loss(net: nn.Module, x: Tensor, y: Tensor, lo: int) -> Tensor:
    return nn.functional.cross_entropy(net(x)[:, lo : lo + 5], y - lo)


def accuracy(net: nn.Module, data, lo: int) -> float:
    x, y = data
    with torch.no_grad():
        return float((net(x)[:, lo : lo + 5].argmax(1) + lo == y).float().mean())


def train(net, data, lo, opt, epochs, seed, penalty=None, batch=32):
    x, y = data
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = task_loss(net, x[idx], y[idx], lo)
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            opt.step()


def run(seed: int, tasks, method: str, strength: float) -> tuple[float, float, float]:
    (tr1, te1), (tr2, te2) = tasks
    net = mlp(seed)
    train(net, tr1, 0, torch.optim.Adam(net.parameters(), lr=3e-3), 20, seed)
    after1 = accuracy(net, te1, 0)
    penalty = None
    if method != "none":
        penalty = EWC.from_data(net, tr1[0], TaskHead(0, 5), representation=method, strength=strength)
    train(net, tr2, 5, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), 20, seed + 1, penalty)
    return after1, accuracy(net, te1, 0), accuracy(net, te2, 5)


def fmt(v: list[float]) -> str:
    return f"{statistics.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = load()
    t0 = time.perf_counter()
    settings = [("none", 0.0)] + [(m, lam) for m in ("diag", "kfac") for lam in (10.0, 100.0, 1000.0)]
    print("Task-incremental split digits (0–4 then 5–9): test accuracy, 3 seeds, mean ± half-range")
    print(f"{'EWC Fisher':<11} {'λ':>7} | {'task 1 after task 1':>20} {'task 1 after task 2':>20} {'task 2':>14}")
    for method, lam in settings:
        res = [run(seed, tasks, method, lam) for seed in (0, 1, 2)]
        a1, f1, a2 = ([r[i] for r in res] for i in range(3))
        lam_s = "—" if method == "none" else f"{lam:g}"
        print(f"{method:<11} {lam_s:>7} | {fmt(a1):>20} {fmt(f1):>20} {fmt(a2):>14}")
    print(f"\ntotal time {time.perf_counter() - t0:.1f}s (torch threads: {args.threads})")


if __name__ == "__main__":
    main()
