"""On a GPU, every head, kind and representation gives the CPU's result, on the network's device.

Runs where CUDA is available (this file is skipped, with its reason, on machines without a GPU; the
device-independence of the per-batch loop is checked on the CPU by test_no_host_copies_per_batch)."""

from __future__ import annotations

import copy

import pytest
import torch

import fisherkl.nn as fnn
from seq_models import inputs, make

if not torch.cuda.is_available():
    pytest.skip("CUDA is not available on this machine", allow_module_level=True)

HEADS = {"categorical": 3, "bernoulli": 3, "gaussian": 3, "gaussian_var": 4, "poisson": 3}
KINDS = ("exact", "mc", "empirical")
REPS = ("dense", "diag", "block", "kfac", "ekfac", "lowrank", "implicit")


def labels(head: str, out: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if head == "categorical":
        return torch.randint(0, out.shape[-1], out.shape[:-1], generator=g)
    if head == "gaussian_var":
        return torch.randn(*out.shape[:-1], out.shape[-1] // 2, generator=g, dtype=out.dtype)
    if head == "poisson":
        return torch.poisson(torch.ones(out.shape, dtype=out.dtype), generator=g)
    if head == "bernoulli":
        return torch.bernoulli(torch.full(out.shape, 0.5, dtype=out.dtype), generator=g)
    return torch.randn(out.shape, generator=g, dtype=out.dtype)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rep", REPS)
def test_gpu_equals_cpu(head, kind, rep):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, HEADS[head])).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    y = labels(head, net(x).detach())
    gnet, gdata = copy.deepcopy(net).cuda(), (x.cuda(), y.cuda())
    gpu = fnn.fisher(gnet, gdata, head, kind, rep, seed=1, rank=3)
    assert gpu.device.type == "cuda"
    if kind == "mc":  # the GPU draws other labels than the CPU: compare with the GPU's own dense Fisher
        dense = fnn.fisher(gnet, gdata, head, kind, "dense", seed=1).to_dense()
        if rep in ("diag", "block", "implicit"):
            torch.testing.assert_close(gpu.diag(), dense.diagonal(), rtol=1e-8, atol=1e-10)
        assert bool(torch.isfinite(gpu.diag()).all())
        return
    cpu = fnn.fisher(net, (x, y), head, kind, rep, seed=1, rank=3)
    v = torch.randn(cpu.p, dtype=torch.float64)
    torch.testing.assert_close(gpu.mv(v.cuda()).cpu(), cpu.mv(v), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["gpt", "conv2d", "encoder"])
def test_gpu_sequence_models_equal_cpu(name):
    net, x = make(name), inputs(name)
    for rep in ("diag", "kfac"):
        cpu = fnn.fisher(net, [(x,)], representation=rep)
        gpu = fnn.fisher(copy.deepcopy(net).cuda(), [tuple(t.cuda() for t in x)], representation=rep)
        torch.testing.assert_close(gpu.diag().cpu(), cpu.diag(), rtol=1e-8, atol=1e-10)
