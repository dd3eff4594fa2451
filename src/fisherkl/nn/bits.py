"""Mixed-precision bit allocation under a size budget: minimise Σ_l cost_l(b_l) subject to Σ_l n_l·b_l ≤ B.

The costs are per layer and bit width (additive across layers — true of the predicted KL when the Fisher has
no cross-layer terms, and a first approximation otherwise), e.g. from
:meth:`fisherkl.nn.quantize.Sensitivity.costs`. ``knapsack`` solves the multiple-choice knapsack exactly by
dynamic programming over the budget in units of the greatest common divisor of the layer sizes (coarsened,
rounding sizes up so the budget still holds, when that would exceed ``max_states`` states); ``greedy`` starts
at the widest width everywhere and repeatedly narrows the layer whose next narrower width costs the least
extra per bit saved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import ParameterError


def _check(costs: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int]) -> list[str]:
    names = list(costs)
    if not names:
        raise ParameterError("costs: no layers")
    for n in names:
        if n not in sizes or int(sizes[n]) <= 0:
            raise ParameterError(f"sizes: need a positive size for {n!r}")
        if not costs[n]:
            raise ParameterError(f"costs[{n!r}]: no bit widths")
        for b, c in costs[n].items():
            if int(b) <= 0 or not math.isfinite(float(c)):
                raise ParameterError(f"costs[{n!r}][{b!r}]: bit widths must be positive and costs finite, got {c!r}")
    return names


def allocate_bits(
    costs: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, int],
    average_bits: float,
    method: str = "knapsack",
    *,
    max_states: int = 2_000_000,
) -> dict[str, int]:
    """name → bits minimising Σ cost under Σ sizes·bits ≤ average_bits·Σ sizes (see the module doc)."""
    names = _check(costs, sizes)
    if method not in ("knapsack", "greedy"):
        raise ParameterError(f"method must be 'knapsack' or 'greedy', got {method!r}")
    total = sum(int(sizes[n]) for n in names)
    budget = float(average_bits) * total
    least = sum(int(sizes[n]) * min(int(b) for b in costs[n]) for n in names)
    if least > budget + 1e-9:
        raise ParameterError(
            f"average_bits={average_bits}: even the narrowest widths need {least / total:.3f} bits on average"
        )
    if method == "greedy":
        return _greedy(costs, sizes, names, budget)
    return _knapsack(costs, sizes, names, budget, max_states)


def _greedy(
    costs: Mapping[str, Mapping[int, float]], sizes: Mapping[str, int], names: list[str], budget: float
) -> dict[str, int]:
    plan = {n: max(int(b) for b in costs[n]) for n in names}
    used = sum(int(sizes[n]) * plan[n] for n in names)
    while used > budget + 1e-9:
        best, best_rate = None, math.inf
        for n in names:
            lower = [int(b) for b in costs[n] if int(b) < plan[n]]
            if not lower:
                continue
            b = max(lower)
            saved = int(sizes[n]) * (plan[n] - b)
            rate = (float(costs[n][b]) - float(costs[n][plan[n]])) / saved
            if rate < best_rate:
                best, best_rate = (n, b), rate
        assert best is not None  # feasibility was checked
        n, b = best
        used -= int(sizes[n]) * (plan[n] - b)
        plan[n] = b
    return plan


def _knapsack(
    costs: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, int],
    names: list[str],
    budget: float,
    max_states: int,
) -> dict[str, int]:
    unit = math.gcd(*[int(sizes[n]) for n in names])
    cap = math.floor(budget / unit + 1e-9)
    if cap > max_states:  # coarser units; sizes rounded up keep every plan within the budget
        unit = math.ceil(budget / max_states)
        cap = math.floor(budget / unit + 1e-9)
    weights = {n: math.ceil(int(sizes[n]) / unit) for n in names}
    inf = math.inf
    dp = np.full(cap + 1, inf)
    dp[0] = 0.0
    choice = np.zeros((len(names), cap + 1), dtype=np.int64)
    for i, n in enumerate(names):
        new = np.full(cap + 1, inf)
        pick = np.zeros(cap + 1, dtype=np.int64)
        for b, c in costs[n].items():
            wgt = weights[n] * int(b)
            if wgt > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[wgt:] = dp[: cap + 1 - wgt] + float(c)
            better = cand < new
            new[better] = cand[better]
            pick[better] = int(b)
        dp, choice[i] = new, pick
    end = int(np.argmin(dp))
    if not math.isfinite(dp[end]):
        raise ParameterError("allocate_bits: no allocation fits the budget at this resolution; raise max_states")
    plan: dict[str, int] = {}
    at = end
    for i in range(len(names) - 1, -1, -1):
        b = int(choice[i, at])
        plan[names[i]] = b
        at -= weights[names[i]] * b
    return {n: plan[n] for n in names}


__all__ = ["allocate_bits"]
