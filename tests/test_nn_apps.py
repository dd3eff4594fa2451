"""The network Fisher at work: approximation_report, NaturalGradient, EWC.

Independent oracles: the exact mean KL (``nn.kl``) against the predicted ½δᵀFδ; a dense Fisher
built here by brute force from per-example Jacobians (torch.func) and ``torch.linalg.solve`` for
natural-gradient directions; the analytic EWC value ½λdᵀFd and gradient λFd by plain matmuls.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import fisherkl.nn as fnn
from fisherkl.errors import ParameterError
from fisherkl.matrix import KFAC, Dense, Diagonal
from fisherkl.nn.approx import approximation_report, loss_gradient
from fisherkl.nn.ewc import EWC, merge_fishers
from fisherkl.nn.heads import get_head
from fisherkl.nn.optim import NaturalGradient, average_fishers

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    # tiny networks: threads only contend (other suites run concurrently on 2 cores)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make_net(seed: int = 0, dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4)).to(dtype)


def make_data(n: int = 96, seed: int = 1, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (n,), generator=g)
    return x, y


def brute_fisher(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F = mean Jₙᵀ (diag p − ppᵀ) Jₙ with Jₙ from torch.func, named_parameters order."""
    net = copy.deepcopy(net)
    params = {n: p.detach() for n, p in net.named_parameters()}

    def f(pr, xi):
        return functional_call(net, pr, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    n, c = x.shape[0], next(iter(jac.values())).shape[1]
    j = torch.cat([jac[k].reshape(n, c, -1) for k in params], -1)
    with torch.no_grad():
        p = torch.softmax(net(x), -1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("nci,ncd,ndj->ij", j, h, j) / n


def brute_grad(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    net = copy.deepcopy(net)
    loss = nn.functional.cross_entropy(net(x), y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])


def flat_params(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


# --- approximation_report ---------------------------------------------------------------------------


def test_report_dense_ratios_are_one_at_small_steps(tmp_path):
    net, (x, y) = make_net(), make_data()
    rep = approximation_report(
        net,
        (x, y),
        representations=("diag", "kfac", "dense"),
        directions=("random", "gradient", "natural", "sgd_step"),
        step_sizes=(1e-8, 1e-7, 1e-6, 1e-2),
        damping=1e-2,
    )
    for d in ("random", "gradient", "natural", "sgd_step"):
        for s in (1e-8, 1e-7, 1e-6):
            assert rep.ratio("dense", d, s) == pytest.approx(1.0, abs=0.01), (d, s)
    # with scale="kl" every shared direction is scaled to predicted KL = step under the exact Fisher
    for r in rep.rows:
        if r.representation == "dense":
            assert r.predicted == pytest.approx(r.step, rel=1e-9)
    text = str(rep)
    assert "natural" in text and "dense" in text and "angle" in text
    rep.plot(str(tmp_path / "approx.png"))
    assert (tmp_path / "approx.png").stat().st_size > 1000
    assert rep.best(approximations_only=False)["random"] == "dense"
    assert rep.best()["random"] in ("diag", "kfac")


def test_report_natural_directions_match_bruteforce_solve():
    net, (x, y) = make_net(), make_data()
    lam = 3e-2
    rep = approximation_report(
        net, (x, y), representations=("kfac", "dense"), directions=("natural",), step_sizes=(1e-6,), damping=lam
    )
    fb = brute_fisher(net, x)
    g = brute_grad(net, x, y)
    eye = torch.eye(fb.shape[0], dtype=F64)
    x_ref = torch.linalg.solve(fb + lam * eye, g)
    kfac = fnn.fisher(net, (x, y), "categorical", "exact", "kfac")
    x_k = torch.linalg.solve(kfac.to_dense() + lam * eye, g)
    cos = float(x_k @ x_ref / (x_k.norm() * x_ref.norm()))
    rows = {r.representation: r for r in rep.directions}
    assert rows["dense"].angle_deg == pytest.approx(0.0, abs=1e-4)
    assert rows["dense"].rel_error < 1e-8
    assert rows["kfac"].angle_deg == pytest.approx(math.degrees(math.acos(min(1.0, cos))), abs=1e-6)
    assert rows["kfac"].rel_error == pytest.approx(float((x_k - x_ref).norm() / x_ref.norm()), rel=1e-8)


def test_report_norm_scale_and_errors():
    net, (x, y) = make_net(), make_data(48)
    rep = approximation_report(
        net, (x, y), representations=("diag",), directions=("random",), step_sizes=(1e-3,), scale="norm"
    )
    r = rep.rows[0]
    assert r.norm == pytest.approx(1e-3 * float(flat_params(net).norm()), rel=1e-9)
    with pytest.raises(ParameterError, match="representations"):
        approximation_report(net, (x, y), representations=("nope",))
    with pytest.raises(ParameterError, match="directions"):
        approximation_report(net, (x, y), directions=("sideways",))


# --- NaturalGradient ------------------------------------------------------------------------------------


def test_natural_gradient_step_is_damped_fisher_solve():
    net, (x, y) = make_net(), make_data()
    lam, lr = 1e-2, 0.3
    w0 = flat_params(net)
    fb, g = brute_fisher(net, x), brute_grad(net, x, y)
    opt = NaturalGradient(net.parameters(), "dense", lr=lr, damping=lam, update_every=1, ema=0.0, net=net)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step(fisher_data=x)
    want = -lr * torch.linalg.solve(fb + lam * torch.eye(fb.shape[0], dtype=F64), g)
    torch.testing.assert_close(flat_params(net) - w0, want, rtol=1e-8, atol=1e-12)


def test_natural_gradient_kfac_step_uses_kfac_matrix():
    net, (x, y) = make_net(), make_data()
    lam, lr = 1e-2, 0.3
    kfac = fnn.fisher(net, x, "categorical", "exact", "kfac").to_dense()
    g = brute_grad(net, x, y)
    w0 = flat_params(net)
    opt = NaturalGradient(net.parameters(), "kfac", lr=lr, damping=lam, net=net)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step(fisher_data=x)
    want = -lr * torch.linalg.solve(kfac + lam * torch.eye(kfac.shape[0], dtype=F64), g)
    torch.testing.assert_close(flat_params(net) - w0, want, rtol=1e-7, atol=1e-12)


def test_max_kl_steps_have_exact_kl_near_max_kl():
    net, (x, y) = make_net(), make_data()
    max_kl = 1e-5
    opt = NaturalGradient(
        net.parameters(), "dense", lr=10.0, damping=1e-2, update_every=1, ema=0.0, max_kl=max_kl, net=net
    )
    for _ in range(5):
        before = copy.deepcopy(net)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step(fisher_data=(x, y))
        assert opt.last_step["scale"] < 1  # the trust region was active
        exact = float(fnn.kl(before, net, (x, y)))
        assert exact == pytest.approx(opt.last_step["exact_kl"], rel=1e-9)
        assert 0.9 * max_kl <= exact <= max_kl  # the exact KL, not only ½δᵀFδ, is within the trust region


def test_max_kl_never_enlarges_a_small_step():
    net, (x, y) = make_net(), make_data()
    opt = NaturalGradient(net.parameters(), "diag", lr=1e-4, damping=1e-2, max_kl=1.0, net=net)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step(fisher_data=x)
    assert opt.last_step["scale"] == 1.0 and opt.last_step["predicted_kl"] < 1.0


def _train(net, opt, sched, x, y, steps, start):
    for i in range(start, start + steps):
        xb, yb = x[(8 * i) % 96 : (8 * i) % 96 + 32], y[(8 * i) % 96 : (8 * i) % 96 + 32]
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step(fisher_data=xb)
        sched.step()


@pytest.mark.parametrize("rep", ["kfac", "ekfac", "diag"])
def test_state_dict_round_trip_resumes_identically(rep):
    x, y = make_data()

    def build(net):
        opt = NaturalGradient(
            net.parameters(), rep, lr=0.2, damping=1e-2, update_every=3, ema=0.8, momentum=0.5,
            max_kl=1e-2, net=net, kind="mc", seed=5,
        )  # fmt: skip
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.7)

    net = make_net()
    opt, sched = build(net)
    _train(net, opt, sched, x, y, 4, 0)
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    _train(net, opt, sched, x, y, 5, 4)

    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    net2 = make_net(seed=99)
    net2.load_state_dict(ck["net"])
    opt2, sched2 = build(net2)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    _train(net2, opt2, sched2, x, y, 5, 4)
    assert torch.equal(flat_params(net), flat_params(net2))
    assert opt2.steps == opt.steps == 9 and opt2.refreshes == opt.refreshes


def test_lr_scheduler_scales_the_step():
    net, (x, _) = make_net(), make_data()
    fixed = fnn.fisher(net, x, "categorical", "exact", "diag")
    opt = NaturalGradient(net.parameters(), fixed, lr=0.1, damping=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    deltas = []
    for _ in range(2):
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        w0 = flat_params(net)
        opt.step()
        sched.step()
        deltas.append(flat_params(net) - w0)
    torch.testing.assert_close(deltas[1], 0.5 * deltas[0], rtol=1e-12, atol=1e-15)
    want = -0.1 * torch.ones(fixed.p, dtype=F64) / (fixed.diag() + 1e-2)
    torch.testing.assert_close(deltas[0], want, rtol=1e-10, atol=1e-14)


def test_natural_gradient_trains_and_errors():
    net, (x, y) = make_net(), make_data()
    opt = NaturalGradient(net.parameters(), "kfac", lr=0.5, damping=1e-2, update_every=5, max_kl=1e-2, net=net)
    first = float(nn.functional.cross_entropy(net(x), y).detach())
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step(fisher_data=x)
    assert float(nn.functional.cross_entropy(net(x), y).detach()) < first - 0.05
    with pytest.raises(ParameterError, match="needs the network"):
        NaturalGradient(net.parameters(), "kfac")
    with pytest.raises(ParameterError, match="no data"):
        fresh = NaturalGradient(net.parameters(), "kfac", net=net)
        fresh.step()
    with pytest.raises(ParameterError, match="not parameters of net"):
        NaturalGradient([nn.Parameter(torch.zeros(3))], "kfac", net=net)


def test_average_fishers_keeps_structure():
    net, (x, _) = make_net(), make_data()
    k1 = fnn.fisher(net, x[:48], "categorical", "exact", "kfac")
    k2 = fnn.fisher(net, x[48:], "categorical", "exact", "kfac")
    avg = average_fishers(k1, k2, 0.25)
    assert isinstance(avg, KFAC)
    for b, b1, b2 in zip(avg.blocks, k1.blocks, k2.blocks):
        torch.testing.assert_close(b.tensors["A"], 0.25 * b1.tensors["A"] + 0.75 * b2.tensors["A"])
    e = fnn.fisher(net, x, "categorical", "exact", "ekfac")
    torch.testing.assert_close(average_fishers(e, e, 0.5).to_dense(), e.to_dense(), rtol=1e-10, atol=1e-12)
    d1, d2 = (fnn.fisher(net, x[s], "categorical", "exact", "dense") for s in (slice(0, 48), slice(48, 96)))
    torch.testing.assert_close(average_fishers(d1, d2, 0.5).to_dense(), 0.5 * (d1.to_dense() + d2.to_dense()))


# --- EWC ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rep", ["diag", "kfac", "ekfac", "block", "dense"])
def test_ewc_penalty_and_gradient(rep):
    net, (x, _) = make_net(), make_data()
    fm = fnn.fisher(net, x, "categorical", "exact", rep)
    dense = fm.to_dense()
    g = torch.Generator().manual_seed(3)
    anchor = flat_params(net) + 0.1 * torch.randn(fm.p, generator=g, dtype=F64)
    lam = 7.0
    ewc = EWC(net, fm, anchor, lam)
    pen = ewc()
    d = flat_params(net) - anchor
    assert float(pen.detach()) == pytest.approx(0.5 * lam * float(d @ dense @ d), rel=1e-10)
    grads = torch.autograd.grad(pen, list(net.parameters()))
    torch.testing.assert_close(torch.cat([q.reshape(-1) for q in grads]), lam * dense @ d, rtol=1e-9, atol=1e-13)
    assert float(ewc.predicted_kl()) == pytest.approx(0.5 * float(d @ dense @ d), rel=1e-10)


def test_ewc_dense_gradient_is_bruteforce_fisher_times_displacement():
    net, (x, _) = make_net(), make_data()
    anchor = copy.deepcopy(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05)
    fm = fnn.fisher(anchor, x, "categorical", "exact", "dense")
    ewc = EWC(net, fm, anchor.state_dict(), strength=2.0)
    loss = ewc()
    loss.backward()
    fb = brute_fisher(anchor, x)
    d = flat_params(net) - flat_params(anchor)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in net.parameters()]), 2.0 * fb @ d)
    assert float(loss.detach()) == pytest.approx(float(d @ fb @ d), rel=1e-9)


def test_ewc_module_state_and_from_data():
    net, (x, y) = make_net(), make_data()
    ewc = EWC.from_data(net, (x, y), representation="kfac", strength=3.0)
    assert list(ewc.parameters()) == [] and float(ewc().detach()) == 0.0
    with torch.no_grad():
        net[0].weight.add_(0.1)
    sd = ewc.state_dict()
    other = EWC(net, fnn.fisher(make_net(5), x, "categorical", "exact", "kfac"), None, 1.0)
    other.load_state_dict(sd)
    assert float(other().detach()) == pytest.approx(float(ewc().detach()), rel=1e-12) and other.strength == 3.0
    with pytest.raises(ParameterError, match="layout"):
        EWC(nn.Linear(2, 2).double(), ewc.fisher)


def test_merge_fishers():
    net, (x, _) = make_net(), make_data()
    parts = [slice(0, 40), slice(40, 96)]
    w = [40 / 96, 56 / 96]
    diag = [fnn.fisher(net, x[s], "categorical", "exact", "diag") for s in parts]
    merged = merge_fishers(diag, w)
    assert isinstance(merged, Diagonal)
    whole = fnn.fisher(net, x, "categorical", "exact", "diag")
    torch.testing.assert_close(merged.diag(), whole.diag(), rtol=1e-10, atol=1e-14)
    dense = [fnn.fisher(net, x[s], "categorical", "exact", "dense") for s in parts]
    md = merge_fishers(dense, w)
    assert isinstance(md, Dense)
    torch.testing.assert_close(md.to_dense(), brute_fisher(net, x), rtol=1e-9, atol=1e-12)
    kf = [fnn.fisher(net, x[s], "categorical", "exact", "kfac") for s in parts]
    v = torch.randn(whole.p, dtype=F64, generator=torch.Generator().manual_seed(0))
    exact = merge_fishers(kf, w)
    assert float(exact.quad(v)) == pytest.approx(sum(wi * float(k.quad(v)) for wi, k in zip(w, kf)), rel=1e-10)
    fac = merge_fishers(kf, w, kronecker="factors")
    assert isinstance(fac, KFAC)
    with pytest.raises(ParameterError, match="weights"):
        merge_fishers(kf, [1.0])


def test_loss_gradient_matches_autograd():
    net, (x, y) = make_net(), make_data()
    torch.testing.assert_close(loss_gradient(net, (x, y), get_head("categorical")), brute_grad(net, x, y))
