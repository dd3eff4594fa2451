"""Exact KL of NaturalGradient's trust-region steps ÷ max_kl, per Fisher representation: before and after issue 13.

"quadratic" is the step scaled so that ½δᵀFδ = max_kl under the representation that preconditions it
(NaturalGradient before issue 13; ``fisherkl.kl_step(F_rep, g, max_kl)``); "exact" is today's
``NaturalGradient(max_kl=...)``: the step measured by the exact Fisher of the batch and confirmed by its
exact KL (line search). Every KL here is the exact mean KL of the step on the batch (``fisherkl.nn.kl``).

Tables:
1. one step from the same start (the setting of issue 13): Linear(6,16)–Tanh–Linear(16,3), 200 examples,
   float64, lr 1, damping 1e-3, categorical head;
2. the same with a Gaussian policy network (mean and a learned, state-independent log-std, head
   ``gaussian_var``), lr 1, damping 1e-3;
3. 20 training steps (minibatches of 50) on the MLP and on a small CNN: the largest and smallest exact
   KL ÷ max_kl over the steps, and the number of exact-KL evaluations beyond the first (backtracks);
4. families: the relative error of the exact KL of ``kl_step`` at max_kl 1e-2, matrix form vs model form.

    python examples/trust_region_table.py
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import fisherkl
import fisherkl.nn as fnn
from fisherkl.nn.optim import NaturalGradient

F64 = torch.float64
FAMILIES = [
    ("normal", [0.3, 1.2]), ("gamma", [2.5, 1.7]), ("beta", [2.0, 3.0]), ("poisson", [3.5]),
    ("categorical", [0.2, 0.5]), ("bernoulli", [0.3]), ("exponential", [1.7]), ("binomial", [0.3]),
    ("geometric", [0.4]), ("laplace", [0.3, 1.2]), ("dirichlet", [1.5, 2.0, 3.0]), ("weibull", [1.5, 2.0]),
    ("vonmises", [0.3, 2.0]), ("studentt", [0.3, 1.2]),
]  # fmt: skip
REPS = ["kfac", "ekfac", "diag", "block", "lowrank", "dense", "implicit"]


class GaussianPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))
        self.log_std = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.body(x)
        return torch.cat([mean, (2 * self.log_std).expand_as(mean)], -1)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(F64)


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 3)).to(F64)


def gaussian_policy() -> nn.Module:
    torch.manual_seed(0)
    return GaussianPolicy().to(F64)


def loss_of(head: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if head == "categorical":
        return nn.functional.cross_entropy(out, y)
    mean, logvar = out.chunk(2, -1)
    return (0.5 * (y - mean) ** 2 / logvar.exp() + 0.5 * logvar).sum(-1).mean()


def one_step(make, head: str, x, y, rep: str, max_kl: float) -> tuple[float, float]:
    net0 = make()
    # before: the representation's quadratic form sets the length (NaturalGradient before issue 13)
    net = copy.deepcopy(net0)
    fm = fnn.fisher(net, x, head, "exact", "implicit" if rep == "implicit" else rep)
    g = torch.autograd.grad(loss_of(head, net(x), y), list(net.parameters()))
    flat = torch.cat([t.reshape(-1) for t in g])
    delta = -fm.solve(flat, 1e-3)
    quad = 0.5 * float(fm.quad(delta))
    delta = delta * min(1.0, (max_kl / quad) ** 0.5)
    before = float(fnn.kl(net0, fnn.perturbed(net0, delta), x, head)) / max_kl
    # after: NaturalGradient's exact trust region
    net = copy.deepcopy(net0)
    opt = NaturalGradient(net.parameters(), rep, lr=1.0, damping=1e-3, max_kl=max_kl, net=net, head=head, ema=0.0)
    opt.zero_grad()
    loss_of(head, net(x), y).backward()
    opt.step(fisher_data=x)
    return before, float(fnn.kl(net0, net, x, head)) / max_kl


def training(make, x, y, rep: str, max_kl: float) -> tuple[float, float, int]:
    net = make()
    opt = NaturalGradient(net.parameters(), rep, lr=1.0, damping=1e-3, max_kl=max_kl, net=net, update_every=1, ema=0)
    ratios, backtracks = [], 0
    for i in range(20):
        xb, yb = x[50 * (i % 4) : 50 * (i % 4) + 50], y[50 * (i % 4) : 50 * (i % 4) + 50]
        old = copy.deepcopy(net)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step(fisher_data=xb)
        ratios.append(float(fnn.kl(old, net, xb)) / max_kl)
        backtracks += opt.last_step["backtracks"]
    return max(ratios), min(ratios), backtracks


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=g, dtype=F64)
    y = torch.randint(0, 3, (200,), generator=g)
    y_cont = torch.randn(200, 2, generator=g, dtype=F64)
    x_img = torch.randn(200, 1, 6, 6, generator=g, dtype=F64)

    kls = (1e-2, 1e-4, 1e-6)
    print("1. one step, MLP, categorical head: exact KL / max_kl, quadratic (before) → exact (after)")
    print("| representation | " + " | ".join(f"max_kl {k:g}" for k in kls) + " |")
    print("|---|" + "---|" * len(kls))
    for rep in REPS:
        cells = [one_step(mlp, "categorical", x, y, rep, k) for k in kls]
        print(f"| {rep} | " + " | ".join(f"{b:.2f} → {a:.3f}" for b, a in cells) + " |")

    kls = (1e-3, 1e-2, 5e-2)
    print("\n2. one step, Gaussian policy with learned std: exact KL / max_kl, quadratic → exact")
    print("| representation | " + " | ".join(f"max_kl {k:g}" for k in kls) + " |")
    print("|---|" + "---|" * len(kls))
    for rep in REPS:
        cells = [one_step(gaussian_policy, "gaussian_var", x, y_cont, rep, k) for k in kls]
        print(f"| {rep} | " + " | ".join(f"{b:.2f} → {a:.3f}" for b, a in cells) + " |")

    print("\n3. 20 steps with the exact trust region: max / min exact KL ÷ max_kl, backtracks in 20 steps")
    print("| representation | MLP 1e-2 | MLP 1e-4 | CNN 1e-2 | CNN 1e-4 |")
    print("|---|---|---|---|---|")
    for rep in REPS:
        cells = []
        for make, xs in ((mlp, x), (cnn, x_img)):
            for k in (1e-2, 1e-4):
                hi, lo, bt = training(make, xs, y, rep, k)
                cells.append(f"{hi:.3f} / {lo:.3f} ({bt})")
        print(f"| {rep} | " + " | ".join(cells) + " |")

    print("\n4. families: kl_step at max_kl 1e-2, exact KL / max_kl − 1 (KL by fisherkl.kl)")
    print("| family | θ | kl_step(fisher(model, θ), g, ε) | kl_step(model, θ, g, ε) |")
    print("|---|---|---|---|")
    for name, theta in FAMILIES:
        model, t = fisherkl.family(name), torch.tensor(theta, dtype=F64)
        grad = torch.tensor([0.7, -1.1, 0.4][: t.shape[0]], dtype=F64)
        quad = fisherkl.kl_step(fisherkl.fisher(model, t), grad, 1e-2)
        exact = fisherkl.kl_step(model, t, grad, 1e-2)
        errs = [float(fisherkl.kl(model, t, t + d)) / 1e-2 - 1 for d in (quad, exact)]
        print(f"| {name} | {theta} | {errs[0]:+.2e} | {errs[1]:+.1e} |")


if __name__ == "__main__":
    main()
