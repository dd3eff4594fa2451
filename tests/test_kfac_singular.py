"""A singular KFAC/EKFAC is refused like a singular dense Fisher, naming its null directions (issue 17, item 7).

A categorical head's Fisher in the logits is singular (the logits' common shift changes nothing), so
the output layer's G factor has a null direction: (F + 0·I)⁻¹g does not exist. Oracle: the dense
Fisher of the same network (its own refusal, and its null space), and the residual of the damped solve
against the dense matrix.
"""

from __future__ import annotations

import pytest
import torch

import fisherkl as fk
from fisherkl import nn as fnn


def network(seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double()
    return net, torch.randn(40, 3, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
def test_singular_kronecker_fisher_is_refused_by_name(seed: int, rep: str) -> None:
    net, x = network(seed)
    f = fnn.fisher(net, x, "categorical", representation=rep)
    dense = fnn.fisher(net, x, "categorical", representation="dense")
    grad = [torch.randn_like(p) for p in net.parameters()]
    # the oracle: the dense Fisher is singular too, and refused
    eig = torch.linalg.eigvalsh(dense.to_dense())
    assert float(eig[0]) <= 1e-12 * float(eig[-1])
    with pytest.raises(fk.FisherKLError, match="singular"):
        fk.natural_gradient(dense, grad)
    for call in (lambda: fk.natural_gradient(f, grad), lambda: fk.kl_step(f, grad, 1e-3)):
        with pytest.raises(fk.FisherKLError, match=r"singular: null directions in 2\.weight \+ 2\.bias \(6 of 24"):
            call()
    # with damping the solve exists and is right (residual against the dense matrix of the same representation)
    step = fk.natural_gradient(f, grad, damping=1e-3)
    flat_g = torch.cat([g.reshape(-1) for g in grad])
    flat_x = torch.cat([s.reshape(-1) for s in step])
    m = f.to_dense() + 1e-3 * torch.eye(flat_g.numel(), dtype=torch.float64)
    assert float((m @ flat_x - flat_g).norm() / flat_g.norm()) < 1e-10
    delta = fk.kl_step(f, grad, 1e-3, damping=1e-3)
    flat_d = torch.cat([s.reshape(-1) for s in delta])
    assert abs(0.5 * float(flat_d @ f.to_dense() @ flat_d) - 1e-3) < 1e-12
