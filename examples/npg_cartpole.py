"""Natural policy gradient / TRPO on gymnasium's CartPole-v1 (or Pendulum-v1) with fisherkl's KL trust region.

Each update collects ``--steps`` environment steps with the current policy, estimates advantages (GAE,
γ = 0.99, λ = 0.95, a separate value network fitted by Adam, as TRPO does), and moves the policy along
the natural gradient of the surrogate loss −mean(A·π_new/π_old) with a trust region of ``--max-kl`` nats.
Variants (same environment, seeds, networks and hyper-parameters):

* ``exact+LS``   — ``NaturalGradient(fisher="implicit", line_search="kl+loss")``: conjugate gradients
  with the exact Fisher-vector product, step measured by the exact Fisher, confirmed by the exact KL
  and a decreasing surrogate (TRPO's recipe, in fisherkl);
* ``kfac+LS``    — the same trust region with a KFAC direction;
* ``exact-quad`` — the exact-Fisher direction scaled by the quadratic form only (NPG without a line search);
* ``kfac-quad``  — KFAC's direction scaled so that ½δᵀF_kfacδ = max_kl (``fisherkl.kl_step(F_kfac, g, ε)``),
  the uncorrected quadratic scaling of NaturalGradient before issue 13;
* ``sb3 TRPO``   — sb3-contrib's TRPO (``--sb3``; when installed), same env, seeds and settings. It
  reports KL[new ‖ old] of its accepted step; the others report KL[old ‖ new], both exact on the batch.

Printed per update: the mean return of the episodes that ended during the update's rollout, and the
exact mean KL between the old and new policy on the rollout's states divided by max_kl (measured here
with torch.distributions, independently of the optimiser's own report).

    python examples/npg_cartpole.py [--env cartpole|pendulum] [--updates 40] [--steps 1024] [--seeds 0 1 2]
                                    [--max-kl 0.01] [--sb3] [--variants exact+LS kfac+LS exact-quad kfac-quad]

Needs gymnasium (``pip install -e ".[rl]"``). No downloads: the classic-control environments are code.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import fisherkl
import fisherkl.nn as fnn
from fisherkl.nn.optim import NaturalGradient

ENVS = {"cartpole": ("CartPole-v1", "categorical"), "pendulum": ("Pendulum-v1", "gaussian_var")}
VARIANTS = ("exact+LS", "kfac+LS", "exact-quad", "kfac-quad")
LR = 1e3  # large: every step is set by the trust region (TRPO steps to its boundary)
GAMMA, LAM, HIDDEN, DAMPING, CG_ITERS, CRITIC_EPOCHS, CRITIC_BATCH, CRITIC_LR = 0.99, 0.95, 64, 0.1, 15, 10, 128, 1e-3


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, n_out)
    )


class GaussianPolicy(nn.Module):
    """Outputs [mean, log-variance] (fisherkl's ``gaussian_var`` head); a learned, state-independent std."""

    def __init__(self, n_obs: int, n_act: int) -> None:
        super().__init__()
        self.body = mlp(n_obs, n_act)
        self.log_std = nn.Parameter(torch.zeros(n_act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.body(x)
        return torch.cat([mean, (2 * self.log_std).expand_as(mean)], -1)


def policy_distribution(head: str, out: torch.Tensor) -> torch.distributions.Distribution:
    if head == "categorical":
        return torch.distributions.Categorical(logits=out)
    mean, logvar = out.chunk(2, -1)
    return torch.distributions.Independent(torch.distributions.Normal(mean, (0.5 * logvar).exp()), 1)


class Rollouts:
    """One environment stepped by the current policy; keeps the episode in progress across updates."""

    def __init__(self, env: Any, seed: int) -> None:
        self.env = env
        self.obs, _ = env.reset(seed=seed)
        self.ep_return = 0.0

    def collect(self, policy: nn.Module, value: nn.Module, head: str, n: int) -> dict[str, Any]:
        obs, acts, rews, dones, finished = [], [], [], [], []
        with torch.no_grad():
            for _ in range(n):
                o = torch.as_tensor(self.obs, dtype=torch.float32)
                a = policy_distribution(head, policy(o.unsqueeze(0))).sample()[0]
                act = a.item() if head == "categorical" else np.clip(a.numpy(), -2.0, 2.0)
                nxt, r, terminated, truncated, _ = self.env.step(act)
                self.ep_return += float(r)
                if truncated and not terminated:  # time limit: bootstrap from the value of the last state
                    r = float(r) + GAMMA * float(value(torch.as_tensor(nxt, dtype=torch.float32).unsqueeze(0)))
                obs.append(o)
                acts.append(a)
                rews.append(float(r))
                dones.append(terminated or truncated)
                if terminated or truncated:
                    finished.append(self.ep_return)
                    self.ep_return = 0.0
                    nxt, _ = self.env.reset()
                self.obs = nxt
            x = torch.stack(obs)
            v = value(x).squeeze(-1)
            last = float(value(torch.as_tensor(self.obs, dtype=torch.float32).unsqueeze(0)))
        adv = torch.zeros(n)
        gae = 0.0
        for t in reversed(range(n)):
            nv = last if t == n - 1 else float(v[t + 1])
            nonterminal = 0.0 if dones[t] else 1.0
            delta = rews[t] + GAMMA * nv * nonterminal - float(v[t])
            gae = delta + GAMMA * LAM * nonterminal * gae
            adv[t] = gae
        return {"x": x, "a": torch.stack(acts), "adv": adv, "ret": adv + v, "finished": finished}


def fit_value(value: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, ret: torch.Tensor, gen: Any) -> None:
    for _ in range(CRITIC_EPOCHS):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], CRITIC_BATCH):
            idx = perm[i : i + CRITIC_BATCH]
            opt.zero_grad()
            nn.functional.mse_loss(value(x[idx]).squeeze(-1), ret[idx]).backward()
            opt.step()


def policy_step(variant: str, policy: nn.Module, head: str, opt: Any, batch: dict[str, Any], max_kl: float) -> float:
    """One policy update; returns its exact mean KL[π_old ‖ π_new] on the batch's states."""
    x, a = batch["x"], batch["a"]
    adv = (batch["adv"] - batch["adv"].mean()) / (batch["adv"].std() + 1e-8)
    with torch.no_grad():
        out_old = policy(x)
        logp_old = policy_distribution(head, out_old).log_prob(a)

    def surrogate() -> torch.Tensor:
        return -(adv * (policy_distribution(head, policy(x)).log_prob(a) - logp_old).exp()).mean()

    policy.zero_grad()
    surrogate().backward()
    if variant == "kfac-quad":  # ½δᵀF_kfacδ = max_kl: the representation's quadratic form alone
        fm = fnn.fisher(policy, x, head, "exact", "kfac")
        g = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
        step = fisherkl.kl_step(fm, g, max_kl, damping=DAMPING)
        with torch.no_grad():
            at = 0
            for p in policy.parameters():
                p.add_(step[at : at + p.numel()].reshape(p.shape))
                at += p.numel()
    else:
        opt.step(fisher_data=x, loss=surrogate)
    with torch.no_grad():
        new = policy_distribution(head, policy(x))
        return float(torch.distributions.kl_divergence(policy_distribution(head, out_old), new).mean())


def make_optimizer(variant: str, policy: nn.Module, head: str, max_kl: float) -> Any:
    common = dict(lr=LR, damping=DAMPING, max_kl=max_kl, net=policy, head=head)
    if variant == "exact+LS":
        return NaturalGradient(policy.parameters(), "implicit", line_search="kl+loss", cg_iters=CG_ITERS, **common)
    if variant == "kfac+LS":
        return NaturalGradient(policy.parameters(), "kfac", update_every=1, ema=0.0, line_search="kl+loss", **common)
    if variant == "exact-quad":
        return NaturalGradient(policy.parameters(), "implicit", line_search=None, cg_iters=CG_ITERS, **common)
    return None


def run(variant: str, env_key: str, seed: int, updates: int, steps: int, max_kl: float) -> dict[str, list[float]]:
    import gymnasium as gym

    env_id, head = ENVS[env_key]
    env = gym.make(env_id)
    torch.manual_seed(seed)
    n_obs = env.observation_space.shape[0]
    policy: nn.Module = mlp(n_obs, env.action_space.n) if head == "categorical" else GaussianPolicy(n_obs, 1)
    value = mlp(n_obs, 1)
    vopt = torch.optim.Adam(value.parameters(), lr=CRITIC_LR)
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(variant, policy, head, max_kl)
    roll = Rollouts(env, seed)
    out: dict[str, list[float]] = {"ret": [], "kl": [], "sec": []}
    for _ in range(updates):
        t0 = time.perf_counter()
        batch = roll.collect(policy, value, head, steps)
        out["kl"].append(policy_step(variant, policy, head, opt, batch, max_kl))
        fit_value(value, vopt, batch["x"], batch["ret"], gen)
        out["ret"].append(float(np.mean(batch["finished"])) if batch["finished"] else math.nan)
        out["sec"].append(time.perf_counter() - t0)
    return out


def run_sb3(env_key: str, seed: int, updates: int, steps: int, max_kl: float) -> dict[str, list[float]]:
    from sb3_contrib import TRPO
    from stable_baselines3.common.callbacks import BaseCallback

    class Record(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.ret: list[float] = []
            self.kl: list[float] = []
            self.now: list[float] = []

        def _on_step(self) -> bool:
            self.now += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]
            return True

        def _on_rollout_end(self) -> None:
            self.ret.append(float(np.mean(self.now)) if self.now else math.nan)
            self.now = []
            if "train/kl_divergence_loss" in self.model.logger.name_to_value:  # the previous update's KL
                self.kl.append(float(self.model.logger.name_to_value["train/kl_divergence_loss"]))

    rec = Record()
    model = TRPO(
        "MlpPolicy", ENVS[env_key][0], n_steps=steps, batch_size=CRITIC_BATCH, learning_rate=CRITIC_LR,
        cg_max_steps=CG_ITERS, cg_damping=DAMPING, target_kl=max_kl, n_critic_updates=CRITIC_EPOCHS,
        gamma=GAMMA, gae_lambda=LAM, seed=seed, device="cpu", policy_kwargs={"net_arch": [HIDDEN, HIDDEN]},
    )  # fmt: skip
    t0 = time.perf_counter()
    model.learn(total_timesteps=updates * steps, callback=rec)
    rec.kl.append(float(model.logger.name_to_value.get("train/kl_divergence_loss", math.nan)))
    sec = (time.perf_counter() - t0) / updates
    return {"ret": rec.ret[:updates], "kl": rec.kl[:updates], "sec": [sec] * updates}


def summarise(name: str, runs: list[dict[str, list[float]]], max_kl: float, show: Callable[[str], None]) -> None:
    kl = np.array([r["kl"] for r in runs]) / max_kl
    ret = np.array([r["ret"] for r in runs])
    last = np.nanmean(ret[:, -5:], axis=1)
    show(
        f"| {name} | {np.nanmean(last):.1f} ± {(np.nanmax(last) - np.nanmin(last)) / 2:.1f} | {np.nanmax(kl):.2f} | "
        f"{np.mean(kl):.2f} | {np.mean(kl > 1.0):.0%} | {np.mean([np.mean(r['sec']) for r in runs]):.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", choices=list(ENVS), default="cartpole")
    ap.add_argument("--updates", type=int, default=40)
    ap.add_argument("--steps", type=int, default=1024)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-kl", type=float, default=0.01)
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--sb3", action="store_true", help="also run sb3-contrib's TRPO (if installed)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, list[dict[str, list[float]]]] = {}
    for variant in args.variants:
        results[variant] = [run(variant, args.env, s, args.updates, args.steps, args.max_kl) for s in args.seeds]
    if args.sb3:
        try:
            results["sb3 TRPO"] = [run_sb3(args.env, s, args.updates, args.steps, args.max_kl) for s in args.seeds]
        except ImportError as exc:
            print(f"sb3-contrib not available ({exc}); skipping its TRPO")
    names = list(results)
    print(f"\n{ENVS[args.env][0]}, {args.steps} steps per update, max_kl {args.max_kl:g}, seeds {args.seeds}")
    print("per update: mean return over seeds (episodes ended in the rollout) / largest exact KL ÷ max_kl over seeds")
    print("| update | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for u in range(args.updates):
        cells = []
        for n in names:
            ret = (
                np.nanmean([r["ret"][u] for r in results[n]])
                if any(not math.isnan(r["ret"][u]) for r in results[n])
                else math.nan
            )
            cells.append(f"{ret:.1f} / {max(r['kl'][u] for r in results[n]) / args.max_kl:.2f}")
        print(f"| {u + 1} | " + " | ".join(cells) + " |")
    print(
        "\n| variant | return, last 5 updates (mean ± half-range over seeds) | max KL/max_kl | mean KL/max_kl | "
        "updates over max_kl | s/update |"
    )
    print("|---|---|---|---|---|---|")
    for n in names:
        summarise(n, results[n], args.max_kl, print)


if __name__ == "__main__":
    main()
