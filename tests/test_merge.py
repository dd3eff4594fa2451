"""Fisher merging: θ* = (Σᵢ wᵢFᵢ + λI)⁻¹(Σᵢ wᵢFᵢθᵢ + λθ̄).

Independent oracles: the hand-written formula — elementwise for diagonal Fishers; for KFAC, the dense
Σᵢ wᵢ Gᵢ ⊗ Aᵢ of every block built here with ``torch.kron`` from the factors and solved by numpy, the rest
elementwise; one numpy solve for dense Fishers; the plain mean for averaging; and the exact KL (``nn.kl``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fisherkl.nn as fnn
from fisherkl.errors import FisherKLError, ParameterError
from fisherkl.matrix import KFAC
from fisherkl.nn.blocks import block_index

F64 = torch.float64


class Net(nn.Module):
    """Linear layers (KFAC blocks) and a LayerNorm (KFAC's exact diagonal part)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.norm(self.a(x))))


def nets_and_data(k: int = 2) -> tuple[list[nn.Module], list[torch.Tensor]]:
    nets, data = [], []
    for i in range(k):
        torch.manual_seed(10 + i)
        net = Net().to(F64)
        with torch.no_grad():
            net.norm.weight.add_(0.3 * torch.randn(5, dtype=F64))
            net.norm.bias.add_(0.3 * torch.randn(5, dtype=F64))
        nets.append(net)
        data.append(torch.randn(40, 4, generator=torch.Generator().manual_seed(20 + i), dtype=F64))
    return nets, data


def test_diag_merge_is_the_elementwise_formula():
    nets, data = nets_and_data(3)
    fs = [fnn.fisher(n, d, representation="diag") for n, d in zip(nets, data)]
    w = [0.5, 0.3, 0.2]
    th = [fnn.parameters_vector(n) for n in nets]
    d = [f.diag() for f in fs]
    for lam in (0.0, 1e-2):
        res = fnn.merge(nets, fs, [5.0, 3.0, 2.0], damping=lam)  # weights are normalised
        avg = sum(wi * t for wi, t in zip(w, th))
        hand = (sum(wi * di * t for wi, di, t in zip(w, d, th)) + lam * avg) / (
            sum(wi * di for wi, di in zip(w, d)) + lam
        )
        torch.testing.assert_close(fnn.parameters_vector(res.net), hand, rtol=1e-12, atol=1e-14)
        assert res.weights == pytest.approx(w) and res.method == "fisher"


def test_kfac_merge_is_an_exact_solve_per_block():
    nets, data = nets_and_data(2)
    fs = [fnn.fisher(n, d, representation="kfac") for n, d in zip(nets, data)]
    assert all(isinstance(f, KFAC) for f in fs)
    th = [fnn.parameters_vector(n).numpy() for n in nets]
    lam = 1e-3
    res = fnn.merge(nets, fs, damping=lam)
    got = fnn.parameters_vector(res.net).numpy()
    avg = 0.5 * (th[0] + th[1])
    covered = []
    for j, b in enumerate(fs[0].blocks):
        idx = block_index(b, fs[0]).numpy()
        covered += idx.tolist()
        mats = [torch.kron(f.blocks[j].tensors["G"], f.blocks[j].tensors["A"]).numpy() for f in fs]
        m = 0.5 * (mats[0] + mats[1]) + lam * np.eye(len(idx))
        rhs = 0.5 * (mats[0] @ th[0][idx] + mats[1] @ th[1][idx]) + lam * avg[idx]
        np.testing.assert_allclose(got[idx], np.linalg.solve(m, rhs), rtol=1e-9, atol=1e-12)
    rest = fnn.layout_of(nets[0]).indices(fs[0].rest).numpy()
    d = [f.rest_diag.numpy() for f in fs]
    hand = (0.5 * (d[0] * th[0][rest] + d[1] * th[1][rest]) + lam * avg[rest]) / (0.5 * (d[0] + d[1]) + lam)
    np.testing.assert_allclose(got[rest], hand, rtol=1e-10)
    assert sorted(covered + rest.tolist()) == list(range(len(got)))
    # conjugate gradients on Kronecker products for blocks above direct_max: the same answer
    cg = fnn.merge(nets, fs, damping=lam, direct_max=0)
    np.testing.assert_allclose(fnn.parameters_vector(cg.net).numpy(), got, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("rep", ["dense", "block", "ekfac"])
def test_dense_block_ekfac_merge_is_one_solve_of_the_dense_formula(rep):
    nets, data = nets_and_data(2)
    fs = [fnn.fisher(n, d, representation=rep) for n, d in zip(nets, data)]
    th = [fnn.parameters_vector(n).numpy() for n in nets]
    lam = 1e-3
    res = fnn.merge(nets, fs, [1.0, 3.0], damping=lam)
    ms = [f.to_dense().numpy() for f in fs]
    avg = 0.25 * th[0] + 0.75 * th[1]
    m = 0.25 * ms[0] + 0.75 * ms[1] + lam * np.eye(len(avg))
    hand = np.linalg.solve(m, 0.25 * ms[0] @ th[0] + 0.75 * ms[1] @ th[1] + lam * avg)
    np.testing.assert_allclose(fnn.parameters_vector(res.net).numpy(), hand, rtol=1e-8, atol=1e-11)
    # predicted KL to each source = ½(θ* − θᵢ)ᵀFᵢ(θ* − θᵢ), exact KL on each one's data
    res = fnn.merge(nets, fs, [1.0, 3.0], damping=lam, data=data)
    assert res.predicted is not None and res.exact is not None
    for i in range(2):
        dd = hand - th[i]
        assert res.predicted[i] == pytest.approx(0.5 * dd @ ms[i] @ dd, rel=1e-6)
        assert res.exact[i] == pytest.approx(float(fnn.kl(nets[i], res.net, data[i])), rel=1e-12)


def test_mixed_representations_fall_back_to_one_system():
    nets, data = nets_and_data(2)
    fs = [fnn.fisher(nets[0], data[0], representation="kfac"), fnn.fisher(nets[1], data[1], representation="diag")]
    th = [fnn.parameters_vector(n) for n in nets]
    res = fnn.merge(nets, fs, damping=1e-3)
    ms = [f.to_dense() for f in fs]
    m = 0.5 * (ms[0] + ms[1]) + 1e-3 * torch.eye(th[0].numel(), dtype=F64)
    hand = torch.linalg.solve(m, 0.5 * (ms[0] @ th[0] + ms[1] @ th[1]) + 1e-3 * 0.5 * (th[0] + th[1]))
    torch.testing.assert_close(fnn.parameters_vector(res.net), hand, rtol=1e-8, atol=1e-11)


def test_average_identity_and_one_sided_weights():
    nets, data = nets_and_data(2)
    res = fnn.merge(nets, data=data)
    torch.testing.assert_close(
        fnn.parameters_vector(res.net), 0.5 * (fnn.parameters_vector(nets[0]) + fnn.parameters_vector(nets[1]))
    )
    assert res.method == "average" and res.predicted is None and res.exact is not None and len(res.exact) == 2
    f = fnn.fisher(nets[0], data[0], representation="kfac")
    same = fnn.merge([nets[0], nets[0]], [f, f])
    torch.testing.assert_close(fnn.parameters_vector(same.net), fnn.parameters_vector(nets[0]), rtol=1e-7, atol=1e-9)
    g = fnn.fisher(nets[1], data[1], representation="kfac")
    one = fnn.merge(nets, [f, g], [1.0, 0.0])
    torch.testing.assert_close(fnn.parameters_vector(one.net), fnn.parameters_vector(nets[0]), rtol=1e-7, atol=1e-9)


def test_merge_errors():
    nets, data = nets_and_data(2)
    f = fnn.fisher(nets[0], data[0], representation="diag")
    with pytest.raises(ParameterError, match="two or more"):
        fnn.merge(nets[:1])
    with pytest.raises(ParameterError, match="differ"):
        fnn.merge([nets[0], nn.Linear(4, 3).to(F64)])
    with pytest.raises(ParameterError, match="weights"):
        fnn.merge(nets, weights=[1.0, -1.0])
    with pytest.raises(ParameterError, match="one per network"):
        fnn.merge(nets, [f])
    with pytest.raises(ParameterError, match="list"):
        fnn.merge(nets, data=(data[0], data[1]))
    with pytest.raises(ParameterError, match="FisherMatrix"):
        fnn.merge(nets, [f, "diag"])
    zero = f * 0.0
    with pytest.raises(FisherKLError, match="damping"):
        fnn.merge(nets, [zero, zero], damping=0.0)
