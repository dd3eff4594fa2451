"""Pruning: magnitude, OBD and OBS, and the block structure they solve in.

Independent oracles: for one weight, a brute-force search over every weight of a tiny network, each
solving the constrained problem min ½δᵀ(F + λI)δ s.t. δ_q = −w_q with numpy on the dense matrix (against
Hassibi & Stork's closed form and the chosen update); for a set of weights, the closed form
−(F+λI)⁻¹E_Q(E_Qᵀ(F+λI)⁻¹E_Q)⁻¹w_Q by numpy; the inverse diagonal against numpy's inverse of the dense form;
magnitude / OBD selections against sorting by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fisherkl.nn as fnn
from fisherkl.errors import ParameterError
from fisherkl.nn.blocks import block_structure, inverse_diagonal
from fisherkl.nn.obs import obs_step
from fisherkl.nn.prune import masked_copy
from seq_models import inputs as seq_inputs
from seq_models import make

F64 = torch.float64


def tiny(seed: int = 0) -> nn.Module:
    """Weights of magnitude 0.5–1.5: the cheapest weight to remove is not simply the smallest."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(F64)
    with torch.no_grad():
        for p in (net[0].weight, net[2].weight):
            p.copy_(torch.sign(torch.randn_like(p)) * (0.5 + torch.rand_like(p)))
    return net


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 8), nn.Tanh(), nn.Linear(8, 4)).to(F64)


def inputs(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def constrained_min(m: np.ndarray, w: np.ndarray, q: list[int]) -> tuple[float, np.ndarray]:
    """min ½δᵀMδ s.t. δ_Q = −w_Q, by solving M_RR δ_R = −M_RQ δ_Q directly."""
    p = len(w)
    r = [i for i in range(p) if i not in q]
    d = np.zeros(p)
    d[q] = -w[q]
    d[r] = np.linalg.solve(m[np.ix_(r, r)], -m[np.ix_(r, q)] @ d[q])
    return 0.5 * d @ m @ d, d


def test_obs_removes_the_single_weight_of_least_cost_by_brute_force():
    net = tiny()
    x = inputs(50, 3)
    f = fnn.fisher(net, x, representation="dense")
    lam = 1e-3
    m = f.to_dense().numpy() + lam * np.eye(f.p)
    w = fnn.parameters_vector(net).numpy()
    layout = fnn.layout_of(net)
    cands = layout.indices(["0.weight", "2.weight"]).tolist()
    costs = {q: constrained_min(m, w, [q]) for q in cands}
    best = min(costs, key=lambda q: costs[q][0])
    assert best != cands[int(np.argmin(np.abs(w[cands])))]  # the search below can tell OBS from magnitude
    res = fnn.prune(net, f, 1 / len(cands), "obs", damping=lam, rounds=1)
    kept = torch.cat([res.masks[n].reshape(-1) for n in ("0.weight", "2.weight")])  # in the order of cands
    assert [q for q, k in zip(cands, kept.tolist()) if not k] == [best]
    d = res.delta.numpy()
    assert 0.5 * d @ m @ d == pytest.approx(costs[best][0], rel=1e-9)
    np.testing.assert_allclose(d, costs[best][1], rtol=1e-7, atol=1e-12)
    # Hassibi & Stork's closed form w_q² / (2 [(F + λI)⁻¹]_qq) is the same minimum, for every weight
    inv = np.linalg.inv(m)
    for q in cands:
        assert w[q] ** 2 / (2 * inv[q, q]) == pytest.approx(costs[q][0], rel=1e-8)
    assert res.predicted == pytest.approx(0.5 * d @ f.to_dense().numpy() @ d, rel=1e-10)


@pytest.mark.parametrize("rep", ["kfac", "ekfac", "block", "dense", "diag"])
def test_obs_step_for_a_set_matches_the_closed_form(rep):
    net = mlp()
    x = inputs(80, 6)
    f = fnn.fisher(net, x, representation=rep)
    lam = 1e-2
    w = fnn.parameters_vector(net)
    g = torch.Generator().manual_seed(2)
    removed = torch.rand(f.p, generator=g) < 0.3
    m = f.to_dense().numpy() + lam * np.eye(f.p)
    inv = np.linalg.inv(m)
    q = torch.nonzero(removed).reshape(-1).numpy()
    e_inv = inv[:, q]
    hand = -e_inv @ np.linalg.solve(inv[np.ix_(q, q)], w.numpy()[q])
    direct = obs_step(f, w, removed, lam)
    np.testing.assert_allclose(direct.numpy(), hand, rtol=1e-7, atol=1e-10)
    iterative = obs_step(f, w, removed, lam, direct_max=0, rtol=1e-12)  # preconditioned CG in every block
    np.testing.assert_allclose(iterative.numpy(), hand, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rep", ["kfac", "ekfac", "block", "dense", "diag"])
def test_inverse_diagonal_and_block_products(rep):
    net = mlp()
    x = inputs(60, 6)
    f = fnn.fisher(net, x, representation=rep)
    lam = 1e-3
    dense = f.to_dense()
    want = torch.linalg.inv(dense + lam * torch.eye(f.p, dtype=F64)).diagonal()
    torch.testing.assert_close(inverse_diagonal(f, lam), want, rtol=1e-7, atol=0)
    torch.testing.assert_close(inverse_diagonal(2.0 * f, lam), torch.linalg.inv(2 * dense + lam * torch.eye(f.p,
                               dtype=F64)).diagonal(), rtol=1e-7, atol=0)  # fmt: skip
    st = block_structure(f)
    covered = torch.cat([b.index for b in st.blocks] + [st.diag_index]).sort().values
    assert torch.equal(covered, torch.arange(f.p))
    v = torch.randn(f.p, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for b in st.blocks:
        sub = dense[b.index][:, b.index]
        torch.testing.assert_close(b.dense(), sub, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(b.mv(v[b.index]), sub @ v[b.index], rtol=1e-10, atol=1e-14)
        a = sub + lam * torch.eye(b.size, dtype=F64)
        torch.testing.assert_close(b.inv_mv(v[b.index], lam), torch.linalg.solve(a, v[b.index]), rtol=1e-7, atol=0)


def test_magnitude_and_obd_select_by_hand_and_scopes():
    net = mlp()
    x = inputs(60, 6)
    f = fnn.fisher(net, x, representation="diag")
    layout = fnn.layout_of(net)
    names = ["0.weight", "2.weight", "4.weight"]
    idx = layout.indices(names)
    w = fnn.parameters_vector(net)
    n_cut = round(0.4 * len(idx))
    mag = fnn.prune(net, None, 0.4, "magnitude", data=x)
    want = set(idx[torch.argsort(w[idx].abs())[:n_cut]].tolist())
    got = {int(i) for i in torch.nonzero(mag.delta != 0).reshape(-1)}
    assert got == want
    assert mag.sparsity == pytest.approx(n_cut / len(idx)) and mag.predicted is None
    assert mag.exact == pytest.approx(float(fnn.kl(net, masked_copy(net, mag.masks), x)), rel=1e-12)
    obd = fnn.prune(net, f, 0.4, "obd")
    sal = 0.5 * f.diag()[idx] * w[idx] ** 2
    want = set(idx[torch.argsort(sal)[:n_cut]].tolist())
    assert {int(i) for i in torch.nonzero(obd.delta != 0).reshape(-1)} == want
    assert obd.predicted == pytest.approx(float(sal.sort().values[:n_cut].sum()), rel=1e-10)  # diag: Σ saliencies
    layer = fnn.prune(net, f, 0.5, "obd", "layer")
    for n in names:
        assert layer.layer_sparsity[n] == pytest.approx(round(0.5 * layer.masks[n].numel()) / layer.masks[n].numel())
    for n, p in layer.net.named_parameters():
        if n in names:
            assert bool((p[~layer.masks[n]] == 0).all())
    only = fnn.prune(net, f, 1.0, "obd", params=["2.weight"])
    assert list(only.masks) == ["2.weight"] and not bool(only.masks["2.weight"].any())


def test_obs_beats_obd_in_predicted_kl_and_keeps_zeros():
    net = mlp()
    x = inputs(120, 6)
    f = fnn.fisher(net, x, representation="kfac")
    obd = fnn.prune(net, f, 0.5, "obd")
    for rounds in (1, 3):
        obs = fnn.prune(net, f, 0.5, "obs", rounds=rounds, data=x)
        assert obs.predicted is not None and obd.predicted is not None
        assert obs.predicted < obd.predicted
        for n, p in obs.net.named_parameters():
            if n in obs.masks:
                assert bool((p[~obs.masks[n]] == 0).all())
        assert obs.sparsity == pytest.approx(obd.sparsity)
        assert obs.exact is not None and obs.exact > 0


def test_pruning_curve_and_float32():
    net = mlp().float()
    x = inputs(60, 6).float()
    f = fnn.fisher(net, x, representation="kfac")
    curve = fnn.pruning_curve(net, f, [0.2, 0.6], "obs", data=x)
    assert [round(r.sparsity, 2) for r in curve] == [0.2, 0.6]
    assert curve[0].exact < curve[1].exact
    assert next(curve[0].net.parameters()).dtype == torch.float32


def test_prune_errors():
    net = mlp()
    x = inputs(30, 6)
    f = fnn.fisher(net, x, representation="diag")
    with pytest.raises(ParameterError, match="sparsity"):
        fnn.prune(net, f, 1.5)
    with pytest.raises(ParameterError, match="method"):
        fnn.prune(net, f, 0.5, "obc")
    with pytest.raises(ParameterError, match="scope"):
        fnn.prune(net, f, 0.5, scope="row")
    with pytest.raises(ParameterError, match="needs a Fisher"):
        fnn.prune(net, None, 0.5, "obs")
    with pytest.raises(ParameterError, match="unknown parameter"):
        fnn.prune(net, f, 0.5, params=["nope"])
    with pytest.raises(ParameterError, match="no parameters"):
        fnn.prune(net, f, 0.5, params=lambda n, p: False)
    with pytest.raises(ParameterError, match="rounds"):
        fnn.prune(net, f, 0.5, rounds=0)
    with pytest.raises(ParameterError, match="damping"):
        fnn.prune(net, f, 0.5, damping=-1.0)
    with pytest.raises(ParameterError, match="masks"):
        masked_copy(net, {"0.weight": torch.ones(2, 2, dtype=torch.bool)})


@pytest.mark.parametrize("rep", ["kfac", "ekfac"])
def test_block_structure_of_a_transformer(rep):
    """Embeddings (diagonal A, stored transposed), attention blocks, a tied head in the diagonal part."""
    net = make("gpt")
    (x,) = seq_inputs("gpt", 6)
    f = fnn.fisher(net, x, representation=rep)
    dense = f.to_dense()
    st = block_structure(f)
    assert len(st.blocks) == len(f.blocks) and st.diag_index.numel() > 0
    for b in st.blocks:
        torch.testing.assert_close(b.dense(), dense[b.index][:, b.index], rtol=1e-9, atol=1e-13)
    lam = 1e-3 * float(f.trace()) / f.p
    want = torch.linalg.inv(dense + lam * torch.eye(f.p, dtype=F64)).diagonal()
    torch.testing.assert_close(inverse_diagonal(f, lam), want, rtol=1e-6, atol=0)
