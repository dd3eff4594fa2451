"""Statistics taken inside the backward pass (fisherkl.nn.tap): streamed layers give the same numbers.

Above ``engine.STREAM_BYTES`` of recorded gradients the engine takes each layer's statistics as soon as the
backward pass reaches it and drops its gradients (and, after the last row, its inputs). Here streaming is
forced on (``STREAM_BYTES = -1``), rows come in several chunks of several rows (``ROW_BYTES`` small) over
several batches, and the results are checked against the brute-force Fisher (per-example Jacobians one output
entry at a time, tests/nn_reference.py) and against the batched route (all layers' gradients kept, then the
statistics), which shares only the layer rules with it.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import fisherkl.nn as fnn
from nn_reference import reference_fisher
from seq_models import F64, inputs, make

engine_mod = importlib.import_module("fisherkl.nn.engine")
fisher_mod = importlib.import_module("fisherkl.nn.fisher")  # the module (fisherkl.nn.fisher is the function)
TOL = {"rtol": 1e-10, "atol": 1e-12}
MODELS = ["gpt", "gpt_untied", "encoder", "cross", "conv1d", "conv2d", "gru", "resnet"]


def batches(x: tuple[torch.Tensor, ...], k: int = 2) -> list:
    """x split into k batches of positional inputs."""
    n = x[0].shape[0]
    cuts = [slice(i * n // k, (i + 1) * n // k) for i in range(k)]
    return [(tuple(t[c] for t in x),) for c in cuts]


def outputs_of(x: tuple[torch.Tensor, ...]):
    return lambda net, i: net(*(t[i : i + 1] for t in x))[0]


def streamed(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    monkeypatch.setattr(engine_mod, "STREAM_BYTES", -1 if on else 2**62)
    monkeypatch.setattr(fisher_mod._KeepOnlyBatch, "KEEP_BYTES", -1 if on else 2**62)
    monkeypatch.setattr(engine_mod, "ROW_BYTES", 1)  # one row per chunk: several chunks per batch


def count_streamed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the rules flushed inside a backward pass (so a test can tell that streaming happened)."""
    seen = [0]
    flush = engine_mod._Sink.flush

    def counting(self, rule):
        seen[0] += 1
        return flush(self, rule)

    monkeypatch.setattr(engine_mod._Sink, "flush", counting)
    return seen


@pytest.mark.parametrize("name", MODELS)
def test_streamed_diagonal_equals_brute_force(name, monkeypatch):
    net, x = make(name), inputs(name, n=6)
    ref = reference_fisher(net, outputs_of(x), x[0].shape[0]).diagonal()
    streamed(monkeypatch, True)
    seen = count_streamed(monkeypatch)
    got = fnn.fisher(net, batches(x), representation="diag").diag()
    assert seen[0] > 0
    torch.testing.assert_close(got, ref, **TOL)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", ["exact", "mc"])
def test_streamed_kfac_and_ekfac_equal_the_batched_route(name, kind, monkeypatch):
    net, x = make(name), inputs(name, n=6)
    got = {}
    seen = count_streamed(monkeypatch)
    for on in (False, True):
        streamed(monkeypatch, on)
        for rep in ("kfac", "ekfac"):
            f = fnn.fisher(net, batches(x), kind=kind, representation=rep, seed=4)
            got[on, rep] = f.to_dense()
        assert (seen[0] > 0) == on  # the streamed route ran only when forced on
    for rep in ("kfac", "ekfac"):
        torch.testing.assert_close(got[True, rep], got[False, rep], **TOL)


class InPlaceBlock(nn.Module):
    """torchvision's pattern: ReLU(inplace=True) right after BatchNorm; an in-place add on a convolution's output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.b1(self.c1(x)))
        h = self.c2(h)
        h += x.mean(1, keepdim=True)  # an in-place add on a recorded output
        return self.fc(self.relu(h).mean((2, 3)))


def in_place_nets() -> list[nn.Module]:
    torch.manual_seed(3)
    block = InPlaceBlock().to(F64).eval()
    with torch.no_grad():
        block.b1.running_mean.uniform_(-0.5, 0.5)
        block.b1.running_var.uniform_(0.5, 2.0)
    seq = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.0), nn.ReLU(inplace=True), nn.Linear(5, 3)).to(F64)
    return [block, seq]


@pytest.mark.parametrize("which", [0, 1], ids=["block", "sequential"])
@pytest.mark.parametrize("on", [False, True], ids=["batched", "streamed"])
def test_networks_that_edit_layer_outputs_in_place(which, on, monkeypatch):
    net = in_place_nets()[which]
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, 5, 5, generator=g, dtype=F64) if which == 0 else torch.randn(6, 4, generator=g, dtype=F64)
    ref = reference_fisher(net, lambda m, i: m(x[i : i + 1])[0], 6)
    streamed(monkeypatch, on)
    data = [x[:3], x[3:]]
    torch.testing.assert_close(fnn.fisher(net, data, representation="diag").diag(), ref.diagonal(), **TOL)
    torch.testing.assert_close(fnn.fisher(net, data, representation="dense").to_dense(), ref, **TOL)


class InPlaceOnLargeBatches(nn.Module):
    """Edits a layer's output in place only in batches of more than 3 examples: the first-batch probe (2–3
    examples) cannot see it, so the engine meets autograd's refusal and must recover."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if x.shape[0] > 3:
            h.tanh_()
        else:
            h = h.tanh()
        return self.b(h)


@pytest.mark.parametrize("on", [False, True], ids=["batched", "streamed"])
def test_an_in_place_edit_the_probe_cannot_see(on, monkeypatch):
    net = InPlaceOnLargeBatches().to(F64)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(6), dtype=F64)
    ref = reference_fisher(net, lambda m, i: m(x[i : i + 1])[0], 8)
    streamed(monkeypatch, on)
    engine = engine_mod.Engine(net)
    with engine:
        engine.prepare(engine.adapter.batch(x))
    assert engine._clone == {engine.rules[0]}  # found by the recovery, for the layer that is edited only
    torch.testing.assert_close(fnn.fisher(net, [x], representation="dense").to_dense(), ref, **TOL)


def test_in_place_edits_are_found_without_a_failed_forward():
    """The probe (or, for a plain Sequential, the layer list) finds them: only those layers' outputs are copied."""
    block, seq = in_place_nets()
    for net, x, edited in [
        (block, torch.randn(6, 2, 5, 5, dtype=F64), {"b1", "c2"}),
        (seq, torch.randn(6, 4, dtype=F64), {"0"}),
    ]:
        engine = engine_mod.Engine(net)
        with engine:
            engine.prepare(engine.adapter.batch(x))
        assert {r.module_name for r in engine._clone} == edited
        assert not engine._copy_all


@pytest.mark.parametrize("name", ["gpt", "encoder", "conv2d", "gru", "resnet"])
@pytest.mark.parametrize("kind", ["exact", "mc"])
def test_split_fisher_vector_products_equal_the_fused_ones_and_brute_force(name, kind, monkeypatch):
    """Products on large batches run the tangent forward without a graph, then one forward and backward shared
    by the columns; small ones run fused. Both against each other (every kind) and the brute force (exact)."""
    implicit = importlib.import_module("fisherkl.nn.implicit")
    net, x = make(name), inputs(name, n=6)
    p = sum(q.numel() for q in net.parameters())
    v = torch.randn(p, 3, generator=torch.Generator().manual_seed(8), dtype=F64)
    got = {}
    for split in (False, True):
        monkeypatch.setattr(implicit, "SPLIT_BYTES", -1 if split else 2**62)
        f = fnn.fisher(net, batches(x), kind=kind, representation="implicit", seed=5)
        got[split] = f._mm(v)  # the matrix-free product on a block of columns
    torch.testing.assert_close(got[True], got[False], **TOL)
    if kind == "exact":
        ref = reference_fisher(net, outputs_of(x), x[0].shape[0])
        torch.testing.assert_close(got[True], ref @ v, **TOL)


@pytest.mark.parametrize("name", ["conv1d", "conv2d", "resnet"])
@pytest.mark.parametrize("ratio", [0.0, float("inf")], ids=["conv-kernel", "unfolded"])
def test_per_example_convolution_gradients_both_ways(name, ratio, monkeypatch):
    """Convolutions' per-example weight gradients come from the layer's own weight-gradient kernel (examples as
    groups) where outputs have many positions, else from the unfolded input: each way against brute force."""
    conv = importlib.import_module("fisherkl.nn.rules.conv")
    monkeypatch.setattr(conv, "DIRECT_RATIO", ratio)
    monkeypatch.setattr(conv, "DIRECT_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "DIRECT_MIN_TAPS", 1)
    net, x = make(name), inputs(name, n=6)
    ref = reference_fisher(net, outputs_of(x), x[0].shape[0])
    torch.testing.assert_close(fnn.fisher(net, batches(x), representation="diag").diag(), ref.diagonal(), **TOL)
    torch.testing.assert_close(fnn.fisher(net, batches(x), representation="dense").to_dense(), ref, **TOL)
