"""A KL trust region that holds (issue 13): NaturalGradient(max_kl) and kl_step keep the exact KL of a step.

Independent oracles: the exact KL of each step from torch.distributions (``kl_divergence`` of the
networks' Categorical outputs before and after the step, a closed-form Gaussian KL written here, and
torch's KL registry for the families), a dense Fisher built here by brute force from per-example
Jacobians (torch.func) with ``torch.linalg.solve`` for natural-gradient directions (its sub-blocks for
parameter subsets), and a polynomial KL curve with known values for the line search.
"""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import Categorical, kl_divergence
from torch.func import functional_call, jacrev, vmap

import fisherkl
import fisherkl.nn as fnn
from fisherkl.errors import ConvergenceError, ParameterError
from fisherkl.nn.optim import NaturalGradient
from fisherkl.nn.trust_region import BatchGeometry, conjugate_gradient, kl_line_search

F64 = torch.float64
REPS = ["diag", "kfac", "ekfac", "block", "lowrank", "dense", "implicit"]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(F64)


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).to(F64)


def dataset(arch: str, n: int = 200, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 6) if arch == "mlp" else (n, 1, 6, 6)
    return torch.randn(*shape, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)


def categorical_kl(before: nn.Module, after: nn.Module, x: torch.Tensor) -> float:
    """mean KL[Cat(softmax before(x)) ‖ Cat(softmax after(x))] by torch.distributions."""
    with torch.no_grad():
        return float(kl_divergence(Categorical(logits=before(x)), Categorical(logits=after(x))).mean())


def flat(net: nn.Module, only_trainable: bool = False) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters() if p.requires_grad or not only_trainable])


def brute_fisher(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F = mean Jₙᵀ(diag p − ppᵀ)Jₙ over all parameters (named_parameters order), Jₙ from torch.func."""
    net = copy.deepcopy(net)
    params = {n: p.detach() for n, p in net.named_parameters()}

    def f(pr, xi):
        return functional_call(net, pr, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    j = torch.cat([t.reshape(x.shape[0], t.shape[1], -1) for t in jac.values()], -1)  # [n, C, p]
    with torch.no_grad():
        p = torch.softmax(net(x), -1)
    head = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("nci,ncd,ndj->ij", j, head, j) / x.shape[0]


def batch_grad(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.cross_entropy(net(x), y)
    grads = torch.autograd.grad(loss, [p for p in net.parameters() if p.requires_grad])
    return torch.cat([g.reshape(-1) for g in grads])


# --- the guarantee, for every representation ------------------------------------------------------------


@pytest.mark.parametrize("max_kl", [1e-2, 1e-4])
@pytest.mark.parametrize("rep", REPS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_every_accepted_step_keeps_exact_kl_within_max_kl(arch, rep, max_kl):
    net = mlp() if arch == "mlp" else cnn()
    x, y = dataset(arch)
    opt = NaturalGradient(net.parameters(), rep, lr=1.0, damping=1e-3, max_kl=max_kl, net=net, update_every=1, ema=0.0)
    over = 0
    for i in range(20):
        xb, yb = x[50 * (i % 4) : 50 * (i % 4) + 50], y[50 * (i % 4) : 50 * (i % 4) + 50]
        before = copy.deepcopy(net)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step(fisher_data=(xb, yb))
        ls = opt.last_step
        assert ls["accepted"]
        exact = categorical_kl(before, net, xb)
        assert exact <= 1.02 * max_kl, (i, exact / max_kl)
        assert exact == pytest.approx(ls["exact_kl"], rel=1e-8, abs=1e-15)
        # the proposed (unclipped) step δ₀ = Δw / scale, and its exact KL
        proposed = (flat(net) - flat(before)) / ls["scale"]
        unclipped = categorical_kl(before, fnn.perturbed(before, proposed), xb)
        if unclipped > max_kl:
            over += 1
            assert exact >= 0.5 * max_kl, (i, exact / max_kl, unclipped / max_kl)
    assert over > 0  # the trust region was active (not a vacuous check)


def test_representation_scaling_alone_overshoots_where_the_exact_one_holds():
    """The bug of issue 13: ½δᵀF_kfacδ = max_kl lets the exact KL reach several times max_kl."""
    net, (x, y) = mlp(), dataset("mlp")
    kfac = fnn.fisher(net, x, "categorical", "exact", "kfac")
    g = batch_grad(net, x, y)
    step = fisherkl.kl_step(kfac, g, 1e-4, damping=1e-3)
    assert categorical_kl(net, fnn.perturbed(net, step), x) > 1.5e-4
    opt = NaturalGradient(net.parameters(), "kfac", lr=1.0, damping=1e-3, max_kl=1e-4, net=net)
    before = copy.deepcopy(net)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step(fisher_data=x)
    assert categorical_kl(before, net, x) <= 1e-4


# --- the exact batch geometry against brute force ---------------------------------------------------------


def test_batch_geometry_matches_brute_force_fisher_and_kl():
    net, (x, _) = mlp(), dataset("mlp", 40)
    geom = BatchGeometry(net, list(net.parameters()), x, "categorical")
    fb = brute_fisher(net, x)
    g = torch.Generator().manual_seed(4)
    v = torch.randn(fb.shape[0], generator=g, dtype=F64)
    assert geom.quad(v) == pytest.approx(float(v @ fb @ v), rel=1e-11)
    torch.testing.assert_close(geom.mv(v), fb @ v, rtol=1e-11, atol=1e-14)
    torch.testing.assert_close(geom.mv(2 * v), 2 * fb @ v, rtol=1e-11, atol=1e-14)  # the cached graph is reused
    w0 = flat(net)
    parts = geom.split(0.1 * v)
    kl = geom.kl(parts, 0.7)
    torch.testing.assert_close(flat(net), w0 + 0.07 * v, rtol=0, atol=1e-15)  # left at w + sδ
    geom.restore()
    assert torch.equal(flat(net), w0)
    assert kl == pytest.approx(categorical_kl(net, fnn.perturbed(net, 0.07 * v), x), rel=1e-12)
    # the Fisher is taken at the starting point even after the parameters moved
    geom.place(parts, 1.0)
    assert geom.quad(v) == pytest.approx(float(v @ fb @ v), rel=1e-11)
    geom.restore()


def test_batch_geometry_gaussian_head_and_restored_buffers():
    """A Gaussian policy with learned log-variance, and BatchNorm in train mode (buffers must not move)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 4)).to(F64).train()
    x = torch.randn(30, 4, dtype=F64)
    with torch.no_grad():  # outputs before and after the step, on copies (train mode: batch statistics)
        v = torch.randn(sum(p.numel() for p in net.parameters()), dtype=F64)
        out_p = copy.deepcopy(net)(x)
        out_q = fnn.perturbed(net, 0.05 * v)(x)
    stats = [b.clone() for b in net.buffers()]
    geom = BatchGeometry(net, list(net.parameters()), x, "gaussian_var")
    geom.quad(v), geom.mv(v)
    kl = geom.kl(geom.split(0.05 * v), 1.0)
    for a, b in zip(stats, net.buffers()):
        assert torch.equal(a, b)
    mp, sp = out_p.chunk(2, -1)
    mq, sq = out_q.chunk(2, -1)
    # KL of diagonal Gaussians N(mp, e^sp) ‖ N(mq, e^sq), written out
    want = 0.5 * (sq - sp + (sp.exp() + (mp - mq) ** 2) / sq.exp() - 1).sum(-1).mean()
    assert kl == pytest.approx(float(want), rel=1e-10)


def test_conjugate_gradient_solves_the_damped_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 12, generator=g, dtype=F64)
    f = a @ a.T
    b = torch.randn(12, generator=g, dtype=F64)
    x, taken, residual = conjugate_gradient(lambda v: f @ v, b, 0.1, 100, 1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(f + 0.1 * torch.eye(12, dtype=F64), b), rtol=1e-9, atol=1e-12)
    assert residual <= 1e-12 and taken <= 40
    _, taken, residual = conjugate_gradient(lambda v: f @ v, b, 0.1, 3)
    assert taken == 3 and residual > 1e-6  # truncated, as TRPO's 10 iterations are
    assert conjugate_gradient(lambda v: f @ v, torch.zeros(12, dtype=F64), 0.1, 5)[1] == 0


# --- conjugate gradients with the exact FVP ------------------------------------------------------------------


def test_implicit_step_is_the_damped_exact_natural_gradient():
    net, (x, y) = mlp(), dataset("mlp", 60)
    fb, g = brute_fisher(net, x), batch_grad(net, x, y)
    p = fb.shape[0]
    w0 = flat(net)
    opt = NaturalGradient(net.parameters(), "implicit", lr=0.3, damping=1e-2, net=net, cg_iters=4 * p, cg_tol=1e-13)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step(fisher_data=(x, y))
    want = -0.3 * torch.linalg.solve(fb + 1e-2 * torch.eye(p, dtype=F64), g)
    torch.testing.assert_close(flat(net) - w0, want, rtol=1e-8, atol=1e-12)
    assert opt.last_step["cg_residual"] <= 1e-13 and opt.fisher is None
    assert opt.last_step["representation_kl"] is None and opt.last_step["exact_kl"] is None


# --- frozen parameters, subsets, a Fisher computed elsewhere ---------------------------------------------


def test_frozen_parameters_are_skipped_and_held():
    net, (x, y) = mlp(), dataset("mlp", 60)
    for p in net[0].parameters():
        p.requires_grad_(False)
    full = brute_fisher(net, x)
    n0 = sum(p.numel() for p in net[0].parameters())
    sub = full[n0:, n0:]
    g = batch_grad(net, x, y)
    w_frozen, w0 = flat(net[0]), flat(net, only_trainable=True)
    opt = NaturalGradient(net.parameters(), "dense", lr=0.5, damping=1e-2, net=net)  # all of them, as torch.optim
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step(fisher_data=x)
    assert torch.equal(flat(net[0]), w_frozen)
    want = -0.5 * torch.linalg.solve(sub + 1e-2 * torch.eye(sub.shape[0], dtype=F64), g)
    torch.testing.assert_close(flat(net, only_trainable=True) - w0, want, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("rep", ["dense", "implicit"])
def test_a_subset_of_trainable_parameters_is_optimised_alone(rep):
    net, (x, y) = mlp(), dataset("mlp", 60)
    full = brute_fisher(net, x)
    n0 = sum(p.numel() for p in net[0].parameters())
    sub = full[n0:, n0:]  # the Fisher over the last layer: a sub-block of the full one
    g = batch_grad(net, x, y)[n0:]
    w_first, w_last = flat(net[0]), flat(net[2])
    opt = NaturalGradient(net[2].parameters(), rep, lr=0.5, damping=1e-2, net=net, cg_iters=500, cg_tol=1e-13)
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step(fisher_data=x)
    assert torch.equal(flat(net[0]), w_first)
    assert all(p.requires_grad for p in net.parameters())  # held fixed only while the Fisher was taken
    want = -0.5 * torch.linalg.solve(sub + 1e-2 * torch.eye(sub.shape[0], dtype=F64), g)
    torch.testing.assert_close(flat(net[2]) - w_last, want, rtol=1e-8, atol=1e-12)


def test_a_fisher_computed_elsewhere_with_the_exact_trust_region():
    net, (x, y) = mlp(), dataset("mlp")
    wrapper = nn.Sequential(net)  # another module path to the same parameters ("0.0.weight", ...)
    fixed = fnn.fisher(wrapper, x, "categorical", "exact", "kfac")
    opt = NaturalGradient(net.parameters(), fixed, lr=1.0, damping=1e-3, max_kl=1e-3, net=net)
    for i in range(3):
        xb, yb = x[50 * i : 50 * i + 50], y[50 * i : 50 * i + 50]
        before = copy.deepcopy(net)
        opt.zero_grad()
        nn.functional.cross_entropy(net(xb), yb).backward()
        opt.step(fisher_data=xb)
        assert 0.5e-3 <= categorical_kl(before, net, xb) <= 1e-3
    assert opt.fisher is fixed
    with pytest.raises(ParameterError, match="manages"):
        NaturalGradient(net[2].parameters(), fixed, net=net)
    with pytest.raises(ParameterError, match="needs net"):
        NaturalGradient(net.parameters(), fixed, max_kl=1e-3)


# --- the line search --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    a=st.floats(1e-3, 1e3),
    c=st.floats(-0.6, 3.0),
    max_kl=st.sampled_from([1e-4, 1e-2, 1.0]),
    first=st.floats(0.01, 1.0),
    known_curvature=st.booleans(),
)
def test_line_search_on_a_known_kl_curve(a, c, max_kl, first, known_curvature):
    """KL(s) = a·s²·(1 + c·s), increasing on [0, 1] for c > −2/3: the accepted scale is checked on the curve."""

    def curve(s: float) -> float:
        return a * s * s * (1 + c * s)

    res = kl_line_search(curve, max_kl, first, curvature=a if known_curvature else None, max_backtracks=10)
    assert res.accepted and 0 < res.scale <= 1
    assert curve(res.scale) == pytest.approx(res.kl, rel=1e-12)
    assert curve(res.scale) <= max_kl
    if curve(1.0) > max_kl or res.scale < 1.0:
        assert curve(res.scale) >= 0.5 * max_kl
    if curve(1.0) <= max_kl:  # the whole step fits: tried first, it is taken whole
        assert kl_line_search(curve, max_kl, 1.0).scale == 1.0
    assert res.evaluations <= 11


def test_line_search_rejects_when_nothing_is_acceptable_and_honours_the_loss():
    res = kl_line_search(lambda s: math.inf, 1e-3, 1.0, max_backtracks=5)
    assert not res.accepted and res.scale == 0.0 and res.evaluations == 6
    # the loss decreases only below s = 0.1: classic backtracking finds it
    res = kl_line_search(lambda s: s * s * 1e-4, 1e-2, 1.0, loss_at=lambda s: (s - 0.1) * s, loss0=0.0)
    assert res.accepted and res.scale < 0.1 and res.loss < 0


def test_kl_plus_loss_never_increases_the_batch_loss():
    x, y = dataset("mlp")
    ups = {}
    for ls in ("kl", "kl+loss"):
        net = mlp()
        opt = NaturalGradient(net.parameters(), "diag", lr=1.0, damping=1e-3, max_kl=0.5, net=net, line_search=ls)
        ups[ls] = 0
        for i in range(20):
            xb, yb = x[50 * (i % 4) : 50 * (i % 4) + 50], y[50 * (i % 4) : 50 * (i % 4) + 50]

            def loss_fn(xb=xb, yb=yb, net=net):
                return nn.functional.cross_entropy(net(xb), yb)

            with torch.no_grad():
                before = float(loss_fn())
            opt.zero_grad()
            loss_fn().backward()
            opt.step(fisher_data=xb, loss=loss_fn)
            with torch.no_grad():
                after = float(loss_fn())
            ups[ls] += after > before
            if ls == "kl+loss" and opt.last_step["accepted"]:
                assert opt.last_step["loss_after"] == pytest.approx(after, rel=1e-12)
                assert opt.last_step["loss_before"] == pytest.approx(before, rel=1e-12)
    assert ups["kl"] > 0  # at this KL the loss sometimes rises: the loss check has work to do
    assert ups["kl+loss"] == 0


# --- resuming ----------------------------------------------------------------------------------------------


def _train(net, opt, sched, x, y, steps, start, line_search):
    for i in range(start, start + steps):
        xb, yb = x[(8 * i) % 96 : (8 * i) % 96 + 32], y[(8 * i) % 96 : (8 * i) % 96 + 32]

        def closure(xb=xb, yb=yb):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xb), yb)
            loss.backward()
            return loss

        opt.step(closure, fisher_data=xb)
        sched.step()


@pytest.mark.parametrize(
    "rep,line_search,kind", [("kfac", "kl", "mc"), ("implicit", "kl", "exact"), ("ekfac", "kl+loss", "exact")]
)
def test_state_dict_resume_is_bitwise_with_the_line_search(rep, line_search, kind):
    x, y = dataset("mlp", 96)

    def build(net):
        opt = NaturalGradient(
            net.parameters(), rep, lr=1.0, damping=1e-2, update_every=3, ema=0.8, momentum=0.5, max_kl=1e-2,
            net=net, kind=kind, seed=5, line_search=line_search,
        )  # fmt: skip
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.9)

    net = mlp()
    opt, sched = build(net)
    _train(net, opt, sched, x, y, 4, 0, line_search)
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    backtracks = 0
    for i in range(6):
        _train(net, opt, sched, x, y, 1, 4 + i, line_search)
        backtracks += opt.last_step["backtracks"]
    assert backtracks > 0  # the line search did work after the checkpoint

    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    net2 = mlp(seed=99)
    net2.load_state_dict(ck["net"])
    opt2, sched2 = build(net2)
    opt2.load_state_dict(ck["opt"])
    sched2.load_state_dict(ck["sched"])
    _train(net2, opt2, sched2, x, y, 6, 4, line_search)
    assert torch.equal(flat(net), flat(net2))
    assert opt2.last_step == opt.last_step and opt2.steps == opt.steps == 10


# --- errors -----------------------------------------------------------------------------------------------


def test_clear_errors():
    net, (x, y) = mlp(), dataset("mlp", 20)
    with pytest.raises(ParameterError, match="line_search"):
        NaturalGradient(net.parameters(), "kfac", net=net, line_search="loss")
    with pytest.raises(ParameterError, match="cg_iters"):
        NaturalGradient(net.parameters(), "implicit", net=net, cg_iters=0)
    with pytest.raises(ParameterError, match="not parameters of net"):
        NaturalGradient([*net.parameters(), nn.Parameter(torch.zeros(2))], "kfac", net=net)
    frozen = mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ParameterError, match="frozen"):
        NaturalGradient(frozen.parameters(), "kfac", net=frozen)
    opt = NaturalGradient(net.parameters(), "kfac", net=net, max_kl=1e-3)
    opt.update_fisher(x)
    nn.functional.cross_entropy(net(x), y).backward()
    with pytest.raises(ParameterError, match="fisher_data"):
        opt.step()  # the trust region needs the batch
    opt = NaturalGradient(net.parameters(), "kfac", net=net, max_kl=1e-3, line_search="kl+loss")
    with pytest.raises(ParameterError, match="needs the loss"):
        opt.step(fisher_data=x)


# --- families: kl_step(model, θ, g, ε) has exact KL ε -----------------------------------------------------

D = torch.distributions
FAMILY_CASES = [
    ("normal", [0.3, 1.2], lambda t: D.Normal(t[0], t[1])),
    ("gamma", [2.5, 1.7], lambda t: D.Gamma(t[0], t[1])),
    ("beta", [2.0, 3.0], lambda t: D.Beta(t[0], t[1])),
    ("poisson", [3.5], lambda t: D.Poisson(t[0])),
    ("categorical", [0.2, 0.5], lambda t: D.Categorical(torch.cat([t, 1 - t.sum(-1, keepdim=True)]))),
    ("bernoulli", [0.3], lambda t: D.Bernoulli(t[0])),
    ("exponential", [1.7], lambda t: D.Exponential(t[0])),
    ("binomial", [0.3], lambda t: D.Binomial(10, t[0])),
    ("geometric", [0.4], lambda t: D.Geometric(t[0])),
    ("laplace", [0.3, 1.2], lambda t: D.Laplace(t[0], t[1])),
    ("dirichlet", [1.5, 2.0, 3.0], lambda t: D.Dirichlet(t)),
    ("lognormal", [0.3, 1.2], lambda t: D.LogNormal(t[0], t[1])),
]


@pytest.mark.parametrize("case", FAMILY_CASES, ids=[c[0] for c in FAMILY_CASES])
def test_family_kl_step_has_the_exact_kl(case):
    name, theta, make = case
    model, theta = fisherkl.family(name), torch.tensor(theta, dtype=F64)
    grad = torch.tensor([0.7, -1.1, 0.4][: theta.shape[0]], dtype=F64)
    step = fisherkl.kl_step(model, theta, grad, 1e-2)
    exact = float(kl_divergence(make(theta), make(theta + step)))
    assert abs(exact / 1e-2 - 1) < 1e-6, exact
    # along the natural direction: parallel to the quadratic-form step, which misses the budget here
    quadratic = fisherkl.kl_step(fisherkl.fisher(model, theta), grad, 1e-2)
    cos = float(step @ quadratic) / float(step.norm() * quadratic.norm())
    assert cos == pytest.approx(1.0, abs=1e-12)


def test_family_kl_step_batched_damped_and_edge_cases():
    model = fisherkl.family("gamma")
    theta = torch.tensor([[2.5, 1.7], [0.5, 3.0], [10.0, 0.1]], dtype=F64)
    grad = torch.tensor([0.3, -1.0], dtype=F64)
    steps = fisherkl.kl_step(model, theta, grad, 0.5, damping=0.1)
    exact = kl_divergence(D.Gamma(theta[:, 0], theta[:, 1]), D.Gamma(*(theta + steps).unbind(-1)))
    torch.testing.assert_close(exact, torch.full((3,), 0.5, dtype=F64), rtol=1e-8, atol=0)
    zero = fisherkl.kl_step(model, theta[0], torch.zeros(2, dtype=F64), 1e-2)
    assert torch.equal(zero, torch.zeros(2, dtype=F64))
    with pytest.raises(ParameterError, match="max_kl"):
        fisherkl.kl_step(model, theta[0], grad, -1.0)
    with pytest.raises(ParameterError, match="grad"):
        fisherkl.kl_step(model, theta[0], torch.ones(3, dtype=F64), 1e-2)
    # von Mises along its location: the KL is periodic in μ and never reaches 10 nats at κ = 0.5
    with pytest.raises(ConvergenceError, match="lower max_kl"):
        fisherkl.kl_step(fisherkl.family("vonmises"), torch.tensor([0.0, 0.5], dtype=F64), [1.0, 0.0], 10.0)


# --- sequences: outputs [n, T, C], masked positions, HuggingFace batches ------------------------------------


def masked_sequence_kl(before: torch.Tensor, after: torch.Tensor, keep: torch.Tensor) -> float:
    """Σ over kept positions of KL[Cat(before) ‖ Cat(after)], mean over sequences (torch.distributions)."""
    k = kl_divergence(Categorical(logits=before), Categorical(logits=after))
    return float(torch.where(keep, k, torch.zeros_like(k)).sum() / before.shape[0])


@pytest.mark.parametrize("rep", ["dense", "kfac", "implicit"])
def test_sequence_outputs_with_masked_positions(rep):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Embedding(13, 8), nn.Tanh(), nn.Linear(8, 5)).to(F64)  # [n, T] tokens → [n, T, 5]
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 13, (12, 6), generator=g)
    labels = torch.randint(0, 5, (12, 6), generator=g)
    labels[:4, 3:] = -100  # padding: these positions count nowhere
    opt = NaturalGradient(net.parameters(), rep, lr=1.0, damping=1e-3, max_kl=1e-3, net=net, update_every=1, ema=0.0)
    for _ in range(3):
        with torch.no_grad():
            before = net(tokens)
        opt.zero_grad()
        nn.functional.cross_entropy(net(tokens).reshape(-1, 5), labels.reshape(-1), ignore_index=-100).backward()
        opt.step(fisher_data=(tokens, labels))
        with torch.no_grad():
            exact = masked_sequence_kl(before, net(tokens), labels != -100)
        assert exact == pytest.approx(opt.last_step["exact_kl"], rel=1e-9)
        assert 0.5e-3 <= exact <= 1e-3


def test_huggingface_causal_lm_batches():
    transformers = pytest.importorskip("transformers", reason="the 'hf' extra (make install installs it)")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).to(F64).eval()
    ids = torch.randint(0, 13, (4, 6), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, 4:] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    lm = fnn.causal_lm()
    opt = NaturalGradient(
        model.parameters(), "kfac", lr=1.0, damping=1e-2, max_kl=1e-3, net=model, fisher_kwargs={"adapter": lm}
    )
    keep = labels[:, 1:] != -100  # position t predicts token t + 1
    for _ in range(2):
        with torch.no_grad():
            before = model(input_ids=ids).logits[:, :-1]
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step(fisher_data=[batch])
        with torch.no_grad():
            exact = masked_sequence_kl(before, model(input_ids=ids).logits[:, :-1], keep)
        assert exact == pytest.approx(opt.last_step["exact_kl"], rel=1e-9)
        assert 0.5e-3 <= exact <= 1e-3


def test_batches_are_read_as_the_fisher_reads_them():
    from fisherkl.nn.trust_region import raw_batches

    x, y = dataset("mlp", 8)
    assert len(raw_batches(x)) == 1 and len(raw_batches((x, y))) == 1 and len(raw_batches({"x": x})) == 1
    assert len(raw_batches([(x, y), (x, y)])) == 2
    assert len(raw_batches([x, x])) == 2  # a list is always a list of batches, as in fisherkl.nn.fisher
    with pytest.raises(ParameterError, match=r"\(x,\) or \(x, y\)"):
        raw_batches((x, y, y))
    with pytest.raises(ParameterError, match="iterable of batches"):
        raw_batches(5)
    with pytest.raises(ParameterError, match="no batches"):
        raw_batches([])
