"""Benchmark: Fisher–Rao distances, fisherkl vs geomstats 2.8 (numpy backend), time and agreement in one run.

Measured on the same random pairs (fixed seed), θ drawn log-uniform for positive parameters:

* closed forms, N pairs (default 10⁶): normal (loc, scale), poisson (rate), categorical (k = 3) —
  ``fisherkl.geometry.fisher_rao_distance(model, θ₁, θ₂)`` (public API, with validation) against
  geomstats' ``NormalDistributions(sample_dim=1)``, ``PoissonDistributions()`` and
  ``CategoricalDistributions(dim=2)`` ``metric.dist``;
* numerical geodesics, P pairs (default 1,000): beta (a, b) and gamma (α, β) — fisherkl's spectral
  boundary-value solver (``method="geodesic"``) at two tolerances (rtol 1e-10, and 1e-6 for a like-for-like
  accuracy) against geomstats' ``BetaDistributions`` / ``GammaDistributions`` ``metric.dist`` (a
  scipy boundary-value solve per pair). geomstats' gamma uses (κ, γ) = (α, α/β); points are converted
  (the distance is invariant).

geomstats is slow on geodesics (~0.03–0.1 s per pair), so it is timed on ``--gs-pairs`` of the P pairs
(default 100) and its time is scaled per pair to P; the table says so. Agreement is the max relative
difference over the compared pairs; "fk err" is the solver's own error estimate (max relative change at
its last doubling of the Legendre degree). Wall-clock times are single calls (``time.perf_counter``),
after one warm-up call of each fisherkl routine on a few pairs; torch uses its default threads on CPU.

Usage: ``python benchmarks/bench_geometry.py [--n N] [--pairs P] [--gs-pairs G] [--seed S]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

import numpy as np
import torch

import fisherkl
from fisherkl.geometry import fisher_rao_distance


def load_geomstats() -> dict[str, Any]:
    os.environ["GEOMSTATS_BACKEND"] = "numpy"
    if not hasattr(np, "trapz"):  # geomstats 2.8 imports numpy.trapz (removed in numpy 2.4)
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    from geomstats.information_geometry.beta import BetaDistributions
    from geomstats.information_geometry.categorical import CategoricalDistributions
    from geomstats.information_geometry.gamma import GammaDistributions
    from geomstats.information_geometry.normal import NormalDistributions
    from geomstats.information_geometry.poisson import PoissonDistributions

    return {
        "normal": NormalDistributions(sample_dim=1).metric,
        "poisson": PoissonDistributions().metric,
        "categorical": CategoricalDistributions(dim=2).metric,
        "beta": BetaDistributions().metric,
        "gamma": GammaDistributions().metric,
    }


def log_uniform(rng: np.random.Generator, low: float, high: float, size: Any) -> np.ndarray:
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def draw(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if name == "normal":
        return np.stack([rng.uniform(-3, 3, n), log_uniform(rng, 0.2, 5, n)], -1)
    if name == "poisson":
        return log_uniform(rng, 0.1, 50, (n, 1))
    if name == "categorical":
        return rng.dirichlet(np.ones(3), n)[:, :2] * 0.98 + 0.003
    if name in ("beta", "gamma"):
        return log_uniform(rng, 0.3, 8, (n, 2))
    raise KeyError(name)


def to_geomstats(name: str, theta: np.ndarray) -> np.ndarray:
    if name == "poisson":
        return theta[:, 0]
    if name == "categorical":
        return np.concatenate([theta, 1 - theta.sum(-1, keepdims=True)], -1)
    if name == "gamma":
        return np.stack([theta[:, 0], theta[:, 0] / theta[:, 1]], -1)
    return theta


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def rel_median(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.median(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pairs for closed forms")
    parser.add_argument("--pairs", type=int, default=1000, help="pairs for numerical geodesics")
    parser.add_argument("--gs-pairs", type=int, default=100, help="of those, pairs geomstats is timed on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    gs = load_geomstats()
    rows = []
    medians: list[tuple[str, float, int, int]] = []

    for name in ("normal", "poisson", "categorical"):
        model = fisherkl.family(name)
        t1, t2 = draw(name, args.n, rng), draw(name, args.n, rng)
        a, b = torch.as_tensor(t1), torch.as_tensor(t2)
        fisher_rao_distance(model, a[:10], b[:10])  # warm-up
        fk, fk_s = timed(lambda: fisher_rao_distance(model, a, b).numpy())  # noqa: B023
        g1, g2 = to_geomstats(name, t1), to_geomstats(name, t2)
        ref, gs_s = timed(lambda: np.asarray(gs[name].dist(g1, g2)))  # noqa: B023
        rows.append((name, "closed", args.n, fk_s, gs_s, args.n, rel(fk, ref), float("nan")))

    for name in ("beta", "gamma"):
        model = fisherkl.family(name)
        t1, t2 = draw(name, args.pairs, rng), draw(name, args.pairs, rng)
        a, b = torch.as_tensor(t1), torch.as_tensor(t2)
        fisher_rao_distance(model, a[:4], b[:4], method="geodesic")  # warm-up
        fk, fk_s = timed(lambda: fisher_rao_distance(model, a, b, method="geodesic").numpy())  # noqa: B023
        fk6, fk6_s = timed(lambda: fisher_rao_distance(model, a, b, method="geodesic", rtol=1e-6).numpy())  # noqa: B023
        m = min(args.gs_pairs, args.pairs)
        g1, g2 = to_geomstats(name, t1[:m]), to_geomstats(name, t2[:m])
        ref, gs_m_s = timed(lambda: np.asarray(gs[name].dist(g1, g2)))  # noqa: B023
        gs_s = gs_m_s * args.pairs / m
        rows.append((name, "geodesic rtol 1e-10", args.pairs, fk_s, gs_s, m, rel(ref, fk[:m]), rel(fk6, fk)))
        medians.append((name, rel_median(ref, fk[:m]), int(np.sum(np.abs(ref - fk[:m]) > 1e-4 * fk[:m])), m))
        rows.append((name, "geodesic rtol 1e-6", args.pairs, fk6_s, gs_s, m, rel(ref, fk6[:m]), rel(fk6, fk)))

    print(
        f"fisherkl {fisherkl.__version__} | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"numpy {np.__version__} | geomstats 2.8 numpy backend | {platform.processor() or platform.machine()}"
    )
    cols = ["family", "method", "pairs", "fisherkl s", "geomstats s", "gs/fk", "gs pairs", "max rel diff"]
    widths = [12, 20, 9, 11, 12, 8, 9, 13]
    head = " ".join(f"{c:{'<' if i < 2 else '>'}{w}s}" for i, (c, w) in enumerate(zip(cols, widths)))
    head += f" {'vs rtol 1e-10':>14s}"
    print(head)
    print("-" * len(head))
    for name, method, n, fk_s, gs_s, gs_n, diff, self_diff in rows:
        scaled = "*" if gs_n < n else " "
        sd = "" if np.isnan(self_diff) else f"{self_diff:.1e}"
        line = f"{name:12s} {method:20s} {n:9d} {fk_s:11.4f} {gs_s:11.3f}{scaled} {gs_s / fk_s:8.1f} {gs_n:9d}"
        print(f"{line} {diff:13.1e} {sd:>14s}")
    print("* geomstats timed on the first 'gs pairs' pairs and scaled per pair; 'max rel diff' is over those pairs.")
    for name, med, n_off, m in medians:
        print(
            f"{name}: median relative difference fisherkl vs geomstats {med:.1e}; {n_off} of {m} pairs differ by > 1e-4"
        )
    print("'vs rtol 1e-10': max relative difference of that fisherkl run from fisherkl at rtol 1e-10 (all pairs).")


if __name__ == "__main__":
    sys.exit(main())
