"""Benchmark: batched Fisher information of the normal, gamma and beta families, fisherkl vs geomstats.

What is measured, per family, on the same N random parameter points θ (default N = 10⁶, fixed seed):

* ``fisherkl.fisher(model, θ, "closed")``: the family's closed-form Fisher matrix, ``[N, 2, 2]``;
* ``fisherkl.fisher(model, θ, "kl_hessian")``: the autodiff Hessian ∇²_δ KL[p_θ ‖ p_θ+δ] at δ = 0;
* geomstats 2.8 (numpy backend) ``space.metric.metric_matrix(points)`` for ``NormalDistributions(sample_dim=1)``
  (``UnivariateNormalMetric``), ``GammaDistributions`` and ``BetaDistributions``.

Wall-clock time is the median of ``--repeats`` calls after one warm-up call (``time.perf_counter``), for the call
alone: θ is drawn, converted to geomstats' coordinates and to numpy beforehand, outside the timed region. fisherkl's
time includes its public-API validation of θ. torch runs on CPU with its default thread count.

Parametrisations. fisherkl uses torch's: normal (loc, scale), gamma (concentration α, rate β), beta
(concentration1 a, concentration0 b). geomstats' normal is (mean, std) and its beta (a, b) — the same — but its gamma
uses "standard" coordinates (κ, γ) = (α, α/β) (shape and mean). Its gamma matrices G(κ, γ) are pulled back to
(α, β) as Jᵀ G J with J = ∂(κ, γ)/∂(α, β) before comparing. Agreement is checked on every compared point: the
reported disagreement is max over points of ‖I_fisherkl − I_geomstats‖_F / ‖I_fisherkl‖_F. The same measure between
fisherkl's two routes (kl_hessian vs closed) is printed below the table.

If geomstats' metric_matrix would take longer than ``--gs-budget`` seconds in total at size N, it is timed on a
subset (10⁵ or 10⁴ points), its time is scaled per point to N, and the table says so.

Usage: ``python benchmarks/bench_families.py [--n N] [--repeats R] [--quick] [--seed S] [--gs-budget SECONDS]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import fisherkl

FAMILIES: tuple[str, ...] = ("normal", "gamma", "beta")
TARGET_GS_OVER_CLOSED = 10.0  # closed should be at least this many times faster than geomstats
TARGET_KH_OVER_CLOSED = 10.0  # kl_hessian should be within this factor of closed


@dataclass
class Row:
    """One family's results."""

    family: str
    n: int
    closed_s: float
    khess_s: float
    gs_s: float  # geomstats, scaled to n points if timed on a subset
    gs_n: int  # number of points geomstats was actually timed (and compared) on
    rel_gs: float  # max relative disagreement, fisherkl closed vs geomstats
    rel_kh: float  # max relative disagreement, fisherkl kl_hessian vs closed


def load_geomstats() -> dict[str, Any]:
    """Import geomstats with the numpy backend and return the metric of each family."""
    os.environ["GEOMSTATS_BACKEND"] = "numpy"
    if not hasattr(np, "trapz"):  # geomstats 2.8's numpy backend imports numpy.trapz (removed in numpy 2.4)
        np.trapz = np.trapezoid  # type: ignore[attr-defined]
    from geomstats.information_geometry.beta import BetaDistributions
    from geomstats.information_geometry.gamma import GammaDistributions
    from geomstats.information_geometry.normal import NormalDistributions, UnivariateNormalMetric

    normal = NormalDistributions(sample_dim=1)
    assert isinstance(normal.metric, UnivariateNormalMetric), type(normal.metric)
    return {"normal": normal.metric, "gamma": GammaDistributions().metric, "beta": BetaDistributions().metric}


def draw_theta(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """N parameter points [n, 2] in fisherkl's (torch's) parametrisation, log-uniform for positive parameters."""

    def log_uniform(low: float, high: float) -> np.ndarray:
        return np.exp(rng.uniform(np.log(low), np.log(high), n))

    if name == "normal":  # loc, scale
        return np.stack([rng.uniform(-10.0, 10.0, n), log_uniform(0.05, 20.0)], -1)
    if name == "gamma":  # concentration α, rate β
        return np.stack([log_uniform(0.05, 50.0), log_uniform(0.05, 20.0)], -1)
    if name == "beta":  # concentration1 a, concentration0 b
        return np.stack([log_uniform(0.05, 50.0), log_uniform(0.05, 50.0)], -1)
    raise ValueError(name)


def to_geomstats_point(name: str, theta: np.ndarray) -> np.ndarray:
    """θ in fisherkl's coordinates → the same distribution in geomstats' coordinates."""
    if name == "gamma":  # (α, β) → standard coordinates (κ, γ) = (α, α/β)
        alpha, beta = theta[:, 0], theta[:, 1]
        return np.stack([alpha, alpha / beta], -1)
    return theta  # normal (mean, std) and beta (a, b) coincide with torch's parameters


def pull_back(name: str, theta: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """geomstats' metric matrix at φ(θ) → the Fisher matrix in fisherkl's coordinates θ, Jᵀ G J."""
    if name != "gamma":
        return mat
    alpha, beta = theta[:, 0], theta[:, 1]
    jac = np.zeros((theta.shape[0], 2, 2))  # ∂(κ, γ)/∂(α, β) with κ = α, γ = α/β
    jac[:, 0, 0] = 1.0
    jac[:, 1, 0] = 1.0 / beta
    jac[:, 1, 1] = -alpha / beta**2
    return np.einsum("nki,nkl,nlj->nij", jac, mat, jac)


def max_rel_disagreement(ref: np.ndarray, other: np.ndarray) -> float:
    """max over points of ‖ref − other‖_F / ‖ref‖_F (NaN anywhere counts as a total mismatch)."""
    num = np.linalg.norm((ref - other).reshape(ref.shape[0], -1), axis=-1)
    den = np.linalg.norm(ref.reshape(ref.shape[0], -1), axis=-1)
    rel = num / den
    return float("inf") if not np.all(np.isfinite(rel)) else float(rel.max())


def time_call(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall-clock time of ``repeats`` calls after one warm-up call, and the last result."""
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def geomstats_size(metric: Any, point: np.ndarray, repeats: int, budget: float) -> int:
    """Number of points to time geomstats on: all of them unless (repeats + 1) calls would exceed ``budget``."""
    n = point.shape[0]
    probe = min(n, 10_000)
    t0 = time.perf_counter()
    metric.metric_matrix(point[:probe])
    per_point = (time.perf_counter() - t0) / probe
    for size in (n, 100_000, 10_000):
        if size <= n and per_point * size * (repeats + 1) <= budget:
            return size
    return min(n, 10_000)


def bench_family(name: str, metric: Any, n: int, repeats: int, budget: float, rng: np.random.Generator) -> Row:
    model = fisherkl.family(name)
    theta_np = draw_theta(name, n, rng)
    theta = torch.from_numpy(theta_np).to(torch.float64)

    closed_s, closed = time_call(lambda: fisherkl.fisher(model, theta, "closed"), repeats)
    khess_s, khess = time_call(lambda: fisherkl.fisher(model, theta, "kl_hessian"), repeats)
    closed_np, khess_np = closed.numpy(), khess.detach().numpy()

    gs_point = to_geomstats_point(name, theta_np)
    m = geomstats_size(metric, gs_point, repeats, budget)
    sub = np.ascontiguousarray(gs_point[:m])
    gs_sub_s, gs_mat = time_call(lambda: metric.metric_matrix(sub), repeats)
    gs_mat = np.asarray(gs_mat).reshape(m, 2, 2)
    gs_ours = pull_back(name, theta_np[:m], gs_mat)

    return Row(
        family=name,
        n=n,
        closed_s=closed_s,
        khess_s=khess_s,
        gs_s=gs_sub_s * n / m,
        gs_n=m,
        rel_gs=max_rel_disagreement(closed_np[:m], gs_ours),
        rel_kh=max_rel_disagreement(closed_np, khess_np),
    )


def print_table(rows: list[Row], n: int, repeats: int) -> None:
    header = (
        f"{'family':<7} {'closed s':>9} {'kl_hess s':>9} {'geomst s':>9} "
        f"{'closed µs/pt':>12} {'kl_hess µs/pt':>13} {'geomst µs/pt':>12} "
        f"{'geomst/closed':>13} {'≥10×':>4} {'kl_hess/closed':>14} {'≤10×':>4} {'max rel dis vs geomst':>21}"
    )
    print(f"N = {n:,} points per family, median of {repeats} repeats after 1 warm-up")
    print(header)
    print("-" * len(header))
    for r in rows:
        us = 1e6 / r.n
        gs_ratio = r.gs_s / r.closed_s
        kh_ratio = r.khess_s / r.closed_s
        star = "*" if r.gs_n < r.n else " "
        print(
            f"{r.family:<7} {r.closed_s:9.4g} {r.khess_s:9.4g} {r.gs_s:8.4g}{star} "
            f"{r.closed_s * us:12.4f} {r.khess_s * us:13.4f} {r.gs_s * us:12.4f} "
            f"{gs_ratio:12.2f}× {'ok' if gs_ratio >= TARGET_GS_OVER_CLOSED else 'MISS':>4} "
            f"{kh_ratio:13.2f}× {'ok' if kh_ratio <= TARGET_KH_OVER_CLOSED else 'MISS':>4} "
            f"{r.rel_gs:21.2e}"
        )
    print(
        f"targets: closed ≥ {TARGET_GS_OVER_CLOSED:g}× faster than geomstats (geomst/closed ≥ "
        f"{TARGET_GS_OVER_CLOSED:g}); kl_hessian within {TARGET_KH_OVER_CLOSED:g}× of closed "
        f"(kl_hess/closed ≤ {TARGET_KH_OVER_CLOSED:g})"
    )
    for r in rows:
        if r.gs_n < r.n:
            print(f"* {r.family}: geomstats timed on {r.gs_n:,} of the {r.n:,} points and scaled per point to N")
    print("max rel dis = max over points of ‖A − B‖_F / ‖A‖_F, A = fisherkl closed; geomstats gamma pulled back JᵀGJ")
    print("check, fisherkl kl_hessian vs closed, max rel dis: " + ", ".join(f"{r.family} {r.rel_kh:.2e}" for r in rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_000_000, help="points per family (default 1_000_000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats after a warm-up (default 5)")
    parser.add_argument("--quick", action="store_true", help="n = 10⁴")
    parser.add_argument("--seed", type=int, default=20240501, help="seed of the random points")
    parser.add_argument("--gs-budget", type=float, default=60.0, help="max seconds for geomstats at full size")
    args = parser.parse_args(argv)
    n = 10_000 if args.quick else args.n
    if n < 2 or args.repeats < 1:
        parser.error("need --n ≥ 2 and --repeats ≥ 1")

    metrics = load_geomstats()
    import geomstats

    print(
        f"fisherkl {fisherkl.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}, geomstats {geomstats.__version__} (numpy backend), "
        f"python {platform.python_version()}, seed {args.seed}"
    )
    rng = np.random.default_rng(args.seed)
    rows = [bench_family(name, metrics[name], n, args.repeats, args.gs_budget, rng) for name in FAMILIES]
    print_table(rows, n, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
