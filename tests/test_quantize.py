"""Quantisation: the round-to-nearest quantiser, per-layer sensitivity, bit allocation.

Independent oracles: the quantiser's defining properties checked by hypothesis (idempotent round trip,
error ≤ half a step, at most 2^b − 1 levels on an integer grid, odd symmetry, channels independent);
the predicted KL against the dense Fisher sliced by hand and the exact KL against ``nn.kl``; the knapsack
allocation against exhaustive search over every allocation.
"""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import nn

import fisherkl.nn as fnn
from fisherkl.errors import FisherKLError, ParameterError

F64 = torch.float64


def weights(seed: int, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    bits=st.integers(2, 8),
    rows=st.integers(1, 5),
    cols=st.integers(1, 7),
    scale=st.floats(1e-3, 1e3),
)
def test_round_to_nearest_round_trip(seed, bits, rows, cols, scale):
    w = weights(seed, (rows, cols), scale)
    q = fnn.round_to_nearest(w, bits)
    qmax = 2 ** (bits - 1) - 1
    step = w.abs().amax(1, keepdim=True) / qmax
    torch.testing.assert_close(fnn.round_to_nearest(q, bits), q, rtol=1e-12, atol=0)  # idempotent
    assert bool(((q - w).abs() <= step / 2 * (1 + 1e-12)).all())  # half a step at most
    k = q / step
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-9)  # on the integer grid
    assert bool((k.round().abs() <= qmax).all())
    for r in range(rows):
        assert q[r].unique().numel() <= 2**bits - 1
    torch.testing.assert_close(fnn.round_to_nearest(-w, bits), -q, rtol=0, atol=0)  # odd symmetry
    w2 = w.clone()
    w2[0] *= 7.0  # another scale in row 0 leaves the other channels alone
    torch.testing.assert_close(fnn.round_to_nearest(w2, bits)[1:], q[1:], rtol=0, atol=0)


def test_round_to_nearest_cases():
    w = torch.tensor([[0.0, 0.0], [1.0, -0.26]], dtype=F64)
    q = fnn.round_to_nearest(w, 3)  # 3 levels a side: step 1/3
    torch.testing.assert_close(q, torch.tensor([[0.0, 0.0], [1.0, -1 / 3]], dtype=F64))
    torch.testing.assert_close(fnn.round_to_nearest(torch.tensor([0.2, -1.0], dtype=F64), 2),
                               torch.tensor([0.0, -1.0], dtype=F64))  # fmt: skip
    conv = weights(0, (4, 2, 3, 3), 1.0)
    torch.testing.assert_close(fnn.round_to_nearest(conv, 4)[2], fnn.round_to_nearest(conv[2:3], 4)[0])
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ParameterError, match="bits"):
            fnn.round_to_nearest(w, bad)
    with pytest.raises(ParameterError, match="floating"):
        fnn.round_to_nearest(torch.ones(3, dtype=torch.long), 4)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 8), nn.Tanh(), nn.Linear(8, 4)).to(F64)


def test_sensitivity_against_the_dense_fisher_and_the_exact_kl():
    net = mlp()
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    dense = fnn.fisher(net, x, representation="dense")
    sens = fnn.quantization_sensitivity(net, {"dense": dense, "kfac": fnn.fisher(net, x)}, x, bits=(8, 3))
    m = dense.to_dense()
    layout = fnn.layout_of(net)
    w = fnn.parameters_vector(net)
    assert [(r.name, r.bits) for r in sens.rows] == [
        (n, b) for n in ("0.weight", "2.weight", "4.weight") for b in (8, 3)
    ]
    for r in sens.rows:
        qnet = fnn.quantize(net, {r.name: r.bits})
        d = fnn.parameters_vector(qnet) - w
        sl = layout.slice(r.name)
        assert bool((d[: sl.start] == 0).all()) and bool((d[sl.stop :] == 0).all())
        assert r.predicted["dense"] == pytest.approx(0.5 * float(d @ m @ d), rel=1e-10)
        assert r.exact == pytest.approx(float(fnn.kl(net, qnet, x)), rel=1e-12)
        diag_mean = float(m.diagonal()[sl].mean())
        assert r.trace["dense"] == pytest.approx(0.5 * diag_mean * float(d @ d), rel=1e-10)
        assert r.numel == sl.stop - sl.start
    costs = sens.costs("dense")
    assert set(costs) == {"0.weight", "2.weight", "4.weight"} and set(costs["0.weight"]) == {8, 3}
    assert sens.costs("exact")["2.weight"][3] == next(
        r.exact for r in sens.rows if r.name == "2.weight" and r.bits == 3
    )
    assert "exact" in str(sens)
    with pytest.raises(ParameterError, match="unknown source"):
        sens.costs("ekfac")


def test_quantize_with_a_user_quantizer_and_errors():
    net = mlp()
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(1), dtype=F64)

    def halve(w: torch.Tensor, bits: int) -> torch.Tensor:
        return w / 2

    q = fnn.quantize(net, 4, halve)
    for p, p0 in zip(q.parameters(), net.parameters()):
        torch.testing.assert_close(p, p0 / 2 if p.ndim >= 2 else p0)
    sens = fnn.quantization_sensitivity(net, "diag", x, bits=(4,), quantizer=halve, params=["4.weight"], exact=False)
    assert len(sens.rows) == 1 and sens.rows[0].exact is None
    with pytest.raises(FisherKLError, match="quantizer"):
        fnn.quantize(net, 4, lambda w, b: w[:1])
    with pytest.raises(ParameterError, match="unknown parameter"):
        fnn.quantize(net, {"nope": 4})
    with pytest.raises(ParameterError, match="data is needed"):
        fnn.quantization_sensitivity(net, fnn.fisher(net, x, representation="diag"), None, bits=(4,))


def brute_force(costs, sizes, avg):
    names = list(costs)
    budget = avg * sum(sizes.values())
    best, plan = float("inf"), None
    for combo in itertools.product(*[sorted(costs[n]) for n in names]):
        if sum(sizes[n] * b for n, b in zip(names, combo)) <= budget + 1e-9:
            c = sum(costs[n][b] for n, b in zip(names, combo))
            if c < best:
                best, plan = c, dict(zip(names, combo))
    return best, plan


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    avg=st.sampled_from([2.5, 3.0, 4.0, 5.5]),
)
def test_knapsack_is_optimal_and_greedy_within_budget(layers, seed, avg):
    g = torch.Generator().manual_seed(seed)
    bits = [2, 3, 4, 6, 8]
    sizes = {f"l{i}": int(s) * 8 for i, s in enumerate(torch.randint(1, 40, (layers,), generator=g))}
    sens = torch.rand(layers, generator=g) * 10
    costs = {f"l{i}": {b: float(sens[i]) * 4.0 ** (-b) * (1 + 0.3 * float(torch.rand(1, generator=g))) for b in bits}
             for i in range(layers)}  # fmt: skip
    best, _ = brute_force(costs, sizes, avg)
    plan = fnn.allocate_bits(costs, sizes, avg, "knapsack")
    assert sum(sizes[n] * b for n, b in plan.items()) <= avg * sum(sizes.values()) + 1e-9
    assert sum(costs[n][b] for n, b in plan.items()) == pytest.approx(best, rel=1e-12)
    greedy = fnn.allocate_bits(costs, sizes, avg, "greedy")
    assert sum(sizes[n] * b for n, b in greedy.items()) <= avg * sum(sizes.values()) + 1e-9
    assert sum(costs[n][b] for n, b in greedy.items()) >= best * (1 - 1e-12)


def test_knapsack_coarse_units_keep_the_budget_and_errors():
    costs = {"a": {2: 5.0, 4: 1.0, 8: 0.1}, "b": {2: 3.0, 4: 0.5, 8: 0.01}}
    sizes = {"a": 1001, "b": 999}
    plan = fnn.allocate_bits(costs, sizes, 4.0, max_states=50)
    assert sum(sizes[n] * b for n, b in plan.items()) <= 4.0 * 2000
    assert fnn.allocate_bits(costs, sizes, 8.0) == {"a": 8, "b": 8}
    with pytest.raises(ParameterError, match="narrowest"):
        fnn.allocate_bits(costs, sizes, 1.5)
    with pytest.raises(ParameterError, match="method"):
        fnn.allocate_bits(costs, sizes, 4.0, "anneal")
    with pytest.raises(ParameterError, match="sizes"):
        fnn.allocate_bits(costs, {"a": 10}, 4.0)
    with pytest.raises(ParameterError, match="finite"):
        fnn.allocate_bits({"a": {4: float("nan")}}, {"a": 3}, 4.0)
