"""fisherkl.nn against a brute-force reference: per-example Jacobians Jₙ by torch.func (jacrev,
vmap) and head Fishers written out by hand, F_ref = mean over n of Jₙᵀ I_head Jₙ (float64).
KFAC against Kronecker factors computed by hand; KL against the heads' KL written out here.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import fisherkl.nn as fnn
from fisherkl.errors import ParameterError, RouteError

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-12}


# --- oracles ------------------------------------------------------------------------------------


def jacobians(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Jₙ ``[N, C, p]`` by torch.func, parameters in named_parameters order (on a copy: functional_call
    corrupts a module registered twice, e.g. nn.Sequential(lin, act, lin))."""
    net = copy.deepcopy(net)
    params = {n: p.detach() for n, p in net.named_parameters()}

    def f(pr, xi):
        return functional_call(net, pr, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    n, c = x.shape[0], next(iter(jac.values())).shape[1]
    return torch.cat([jac[k].reshape(n, c, -1) for k in params], -1)


def hand_head_fisher(head: str, f: torch.Tensor) -> torch.Tensor:
    if head == "categorical":
        p = torch.softmax(f, -1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    if head == "bernoulli":
        s = 1 / (1 + torch.exp(-f))
        return torch.diag_embed(s * (1 - s))
    if head == "gaussian":
        return torch.eye(f.shape[1], dtype=f.dtype).expand(f.shape[0], -1, -1)
    if head == "gaussian_var":
        c = f.shape[1] // 2
        return torch.diag_embed(torch.cat([torch.exp(-f[:, c:]), 0.5 * torch.ones_like(f[:, c:])], 1))
    if head == "poisson":
        return torch.diag_embed(torch.exp(f))
    if head == "normal_logscale":  # Normal(μ = f0, σ = exp f1): I = diag(1/σ², 2)
        return torch.diag_embed(torch.stack([torch.exp(-2 * f[:, 1]), 2 * torch.ones_like(f[:, 0])], 1))
    raise AssertionError(head)


def reference(net: nn.Module, x: torch.Tensor, head: str) -> torch.Tensor:
    j = jacobians(net, x)
    with torch.no_grad():
        i = hand_head_fisher(head, net(x))
    return torch.einsum("nci,ncd,ndj->ij", j, i, j) / x.shape[0]


def normal_logscale(f):
    return torch.distributions.Normal(f[..., 0], f[..., 1].exp())


HEAD_ARG = {"normal_logscale": normal_logscale}


# --- networks -------------------------------------------------------------------------------------


def mlp(c_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, c_out)
    ).double()


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 2, 2, stride=2, bias=False)
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1))


class Mixed(nn.Module):
    """Embedding, LayerNorm, BatchNorm (eval), a weight shared over positions, a tied weight."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.emb = nn.Embedding(7, 4)
        self.ln = nn.LayerNorm(4)
        self.seq = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.out = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.tensor(1.3))
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2)
        self.bn.weight.data.uniform_(0.5, 1.5)
        self.bn.bias.data.uniform_(-0.5, 0.5)

    def forward(self, tokens):
        h = self.seq(self.ln(self.emb(tokens)))  # [n, T, 3]: Linear shared over T
        h = self.bn(torch.tanh(h).mean(1))
        return self.scale * self.out(h)


def data_for(net: nn.Module, n: int = 24, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    if isinstance(net, CNN):
        return torch.randn(n, 1, 6, 6, generator=g, dtype=F64)
    if isinstance(net, Mixed):
        return torch.randint(0, 7, (n, 5), generator=g)
    return torch.randn(n, 4, generator=g, dtype=F64)


# --- dense exact = reference -----------------------------------------------------------------------


@pytest.mark.parametrize("head", ["categorical", "bernoulli", "gaussian", "gaussian_var", "poisson", "normal_logscale"])
def test_dense_exact_equals_reference_every_head(head):
    net = mlp(c_out=2 if head in ("gaussian_var", "normal_logscale") else 3)
    x = data_for(net)
    f = fnn.fisher(net, (x,), HEAD_ARG.get(head, head), representation="dense", batch_size=10)
    torch.testing.assert_close(f.to_dense(), reference(net, x, head), **TOL)


@pytest.mark.parametrize("make", [CNN, Mixed], ids=["cnn", "mixed"])
def test_dense_exact_equals_reference_other_layers(make):
    net = make().double().eval()
    x = data_for(net)
    f = fnn.fisher(net, x, "categorical", representation="dense", batch_size=9)
    torch.testing.assert_close(f.to_dense(), reference(net, x, "categorical"), **TOL)


def test_tied_weights():
    torch.manual_seed(4)
    lin = nn.Linear(3, 3).double()
    net = nn.Sequential(lin, nn.Tanh(), lin)
    x = torch.randn(10, 3, dtype=F64)
    ref = reference(net, x, "categorical")
    for rep in ("dense", "diag", "block"):
        f = fnn.fisher(net, x, representation=rep)
        torch.testing.assert_close(f.diag(), ref.diagonal(), **TOL)
    assert torch.isfinite(fnn.fisher(net, x, representation="kfac").diag()).all()  # two calls: expand over calls
    torch.testing.assert_close(fnn.fisher(net, x, representation="dense").to_dense(), ref, **TOL)


# --- restrictions: diag, block -----------------------------------------------------------------------


@pytest.mark.parametrize("make", [mlp, CNN, Mixed], ids=["mlp", "cnn", "mixed"])
def test_diag_and_block_are_restrictions(make):
    net = make().double().eval()
    x = data_for(net)
    ref = reference(net, x, "categorical")
    d = fnn.fisher(net, x, representation="diag", batch_size=7)
    torch.testing.assert_close(d.diag(), ref.diagonal(), **TOL)
    b = fnn.fisher(net, x, representation="block", batch_size=7)
    layout = fnn.layout_of(net)
    mask = torch.zeros_like(ref, dtype=torch.bool)
    owner = [n.rsplit(".", 1)[0] if "." in n else "" for n in layout.names]
    for i, oi in enumerate(owner):
        for j, oj in enumerate(owner):
            if oi == oj:
                mask[layout.slice(layout.names[i]), layout.slice(layout.names[j])] = True
    torch.testing.assert_close(b.to_dense(), torch.where(mask, ref, torch.zeros_like(ref)), **TOL)


# --- KFAC -------------------------------------------------------------------------------------------


def test_kfac_equals_hand_kronecker_formula_mlp():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(30, 4, dtype=F64)
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    h = torch.tanh(x @ w1.T + b1)
    f = h @ w2.T + b2
    i_head = hand_head_fisher("categorical", f)  # Σᵣ bᵣbᵣᵀ = I_head for any square root B
    ones = torch.ones(30, 1, dtype=F64)
    a0, a1 = torch.cat([x, ones], 1), torch.cat([h, ones], 1)
    A0, A1 = a0.T @ a0 / 30, a1.T @ a1 / 30
    G1 = i_head.mean(0)
    dphi = 1 - h**2  # J of layer-1 outputs: diag(dphi) W2ᵀ
    G0 = torch.einsum("ni,ci,ncd,dj,nj->ij", dphi, w2, i_head, w2, dphi) / 30
    k = fnn.fisher(net, x, representation="kfac")
    dense = k.to_dense()
    for G, A, w, b, d_in in ((G0, A0, "0.weight", "0.bias", 4), (G1, A1, "2.weight", "2.bias", 5)):
        layout = k.layout
        idx = [
            layout.slice(w).start + i * d_in + j if j < d_in else layout.slice(b).start + i
            for i in range(G.shape[0])
            for j in range(d_in + 1)
        ]
        idx = torch.tensor(idx)
        torch.testing.assert_close(dense[idx[:, None], idx[None, :]], torch.kron(G.contiguous(), A.contiguous()), **TOL)
    torch.testing.assert_close(dense[:25, 25:], torch.zeros(25, 18, dtype=F64))


def test_kfac_exact_for_single_linear_gaussian_head():
    torch.manual_seed(6)
    net = nn.Linear(5, 3).double()
    x = torch.randn(40, 5, dtype=F64)
    ref = reference(net, x, "gaussian")
    torch.testing.assert_close(fnn.fisher(net, x, "gaussian", representation="kfac").to_dense(), ref, **TOL)
    torch.testing.assert_close(fnn.fisher(net, x, "gaussian", representation="ekfac").to_dense(), ref, **TOL)


def test_kfac_expand_exact_for_single_conv_gaussian_head():
    torch.manual_seed(7)
    net = nn.Sequential(nn.Conv2d(2, 3, 2), nn.Flatten()).double()
    x = torch.randn(12, 2, 4, 4, dtype=F64)
    ref = reference(net, x, "gaussian")
    k = fnn.fisher(net, x, "gaussian", representation="kfac", kfac_mode="expand")
    torch.testing.assert_close(k.to_dense(), ref, **TOL)
    r = fnn.fisher(net, x, "gaussian", representation="kfac", kfac_mode="reduce")
    assert not torch.allclose(r.to_dense(), ref)


def test_kfac_reduce_exact_when_positions_are_summed():
    torch.manual_seed(8)

    class SumOver(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):  # x [n, T, 3]
            return self.lin(x).sum(1)

    net = SumOver().double()
    x = torch.randn(15, 4, 3, dtype=F64)
    ref = reference(net, x, "gaussian")
    torch.testing.assert_close(
        fnn.fisher(net, x, "gaussian", representation="kfac", kfac_mode="reduce").to_dense(), ref, **TOL
    )
    assert not torch.allclose(fnn.fisher(net, x, "gaussian", representation="kfac").to_dense(), ref)


@pytest.mark.parametrize("batch_size", [10, 1000], ids=["two-passes", "one-batch-reused"])
def test_ekfac_diagonal_in_kfac_basis_is_exact(batch_size):
    net = CNN().double()
    x = data_for(net)
    ref = reference(net, x, "categorical")
    e = fnn.fisher(net, x, representation="ekfac", batch_size=batch_size)
    torch.testing.assert_close(e.trace(), ref.trace(), **TOL)  # S is the exact diagonal in the eigenbasis
    for b in e.blocks:
        layout = e.layout
        q = torch.kron(b.tensors["QG"], b.tensors["QA"])
        d_in, width = b.d_in, b.d_in + (b.bias is not None)
        idx = torch.tensor(
            [
                layout.slice(b.weight).start + i * d_in + j if j < d_in else layout.slice(b.bias).start + i
                for i in range(b.d_out)
                for j in range(width)
            ]
        )
        blk = ref[idx[:, None], idx[None, :]]
        torch.testing.assert_close((q.T @ blk @ q).diagonal(), b.tensors["S"].reshape(-1), **TOL)


class _NoLen:
    """One batch behind an iterable of unknown length: EKFAC must take its second pass over the data."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return iter([self.batch])


@pytest.mark.parametrize("kind", ["mc", "exact", "empirical"])
def test_ekfac_of_one_batch_reuses_the_pass_with_the_same_result(kind):
    net = mlp().double()
    x = data_for(net)
    y = torch.randint(0, 3, (len(x),))
    one = fnn.fisher(net, (x, y), kind=kind, representation="ekfac", batch_size=len(x), seed=3)
    two = fnn.fisher(net, _NoLen((x, y)), kind=kind, representation="ekfac", seed=3)
    torch.testing.assert_close(one.to_dense(), two.to_dense(), rtol=1e-12, atol=1e-14)
    for a, b in zip(one.blocks, two.blocks, strict=True):
        torch.testing.assert_close(a.tensors["S"], b.tensors["S"], rtol=1e-12, atol=1e-14)


# --- implicit, lowrank ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [mlp, CNN], ids=["mlp", "cnn"])
def test_implicit_mv_equals_dense(make):
    net = make().double()
    x = data_for(net)
    ref = reference(net, x, "categorical")
    f = fnn.fisher(net, x, representation="implicit", batch_size=10)
    v = torch.randn(ref.shape[0], 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(f.mv(v), ref @ v, **TOL)
    torch.testing.assert_close(f.diag(), ref.diagonal(), **TOL)
    # Monte Carlo: the implicit products reuse the labels the dense Fisher drew with the same seed
    fm = fnn.fisher(net, x, kind="mc", representation="implicit", seed=11, mc_samples=3, batch_size=10)
    dm = fnn.fisher(net, x, kind="mc", representation="dense", seed=11, mc_samples=3, batch_size=10)
    torch.testing.assert_close(fm.mv(v), dm.to_dense() @ v, **TOL)


def test_lowrank_top_eigenpairs():
    net = mlp()
    x = data_for(net)
    ref = reference(net, x, "categorical")
    lr = fnn.fisher(net, x, representation="lowrank", rank=4)
    w = torch.linalg.eigvalsh(ref).flip(0)[:4]
    torch.testing.assert_close(lr.values, w, **TOL)
    torch.testing.assert_close(ref @ lr.vectors, lr.vectors * lr.values, rtol=1e-8, atol=1e-10)


# --- ½ δᵀFδ vs the exact KL -------------------------------------------------------------------------


def test_quadratic_form_predicts_kl():
    net = mlp()
    x = data_for(net)
    p = fnn.layout_of(net).numel
    d = torch.randn(p, generator=torch.Generator().manual_seed(9), dtype=F64)
    d /= d.norm()
    dense = fnn.fisher(net, x, representation="dense")
    implicit = fnn.fisher(net, x, representation="implicit")
    block = fnn.fisher(net, x, representation="block")
    d_block = torch.zeros_like(d)
    d_block[fnn.layout_of(net).slice("2.weight")] = d[:30]  # a step inside one block
    errs = []
    for eps in (1e-1, 1e-2, 1e-3):
        kl = fnn.kl(net, fnn.perturbed(net, eps * d), x)
        r_dense = 0.5 * dense.quad(eps * d) / kl
        r_impl = 0.5 * implicit.quad(eps * d) / kl
        kl_b = fnn.kl(net, fnn.perturbed(net, eps * d_block), x)
        r_block = 0.5 * block.quad(eps * d_block) / kl_b
        errs.append([abs(float(r) - 1) for r in (r_dense, r_impl, r_block)])
    for j in range(3):
        assert errs[2][j] < 2e-3
        assert errs[2][j] < errs[1][j] < errs[0][j]  # O(|δ|)
        assert errs[1][j] / errs[2][j] > 5


def test_kl_matches_torch_distributions():
    net_p, net_q = mlp(seed=0), mlp(seed=1)
    x = data_for(net_p)
    with torch.no_grad():
        fp, fq = net_p(x), net_q(x)
    want = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=fp), torch.distributions.Categorical(logits=fq)
    ).mean()
    torch.testing.assert_close(fnn.kl(net_p, net_q, x, batch_size=5), want, **TOL)
    want_pois = (
        torch.distributions.kl_divergence(torch.distributions.Poisson(fp.exp()), torch.distributions.Poisson(fq.exp()))
        .sum(1)
        .mean()
    )
    torch.testing.assert_close(fnn.kl(net_p, net_q, x, "poisson"), want_pois, **TOL)


# --- Monte Carlo and empirical kinds -------------------------------------------------------------------


def test_mc_converges_to_exact():
    net = mlp()
    x = data_for(net, n=8)
    ref = reference(net, x, "categorical")
    errs = {}
    for s in (4, 256):
        e = [
            (fnn.fisher(net, x, kind="mc", mc_samples=s, representation="dense", seed=k).to_dense() - ref).norm()
            for k in range(6)
        ]
        errs[s] = float(torch.stack(e).pow(2).mean().sqrt())
    ratio = errs[256] / errs[4]  # expected √(4/256) = 0.125
    assert 0.06 < ratio < 0.25, ratio


def test_empirical_is_mean_outer_product_of_loss_gradients():
    net = mlp()
    x = data_for(net)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    params = {n: p.detach() for n, p in net.named_parameters()}

    def logp(pr, xi, yi):
        return torch.log_softmax(functional_call(net, pr, (xi.unsqueeze(0),)), -1)[0].gather(0, yi.reshape(1))[0]

    g = vmap(jacrev(logp), in_dims=(None, 0, 0))(params, x, y)
    g = torch.cat([g[k].reshape(x.shape[0], -1) for k in params], 1)
    f = fnn.fisher(net, (x, y), kind="empirical", representation="dense", batch_size=7)
    torch.testing.assert_close(f.to_dense(), g.T @ g / x.shape[0], **TOL)
    with pytest.raises(ParameterError, match="labels"):
        fnn.fisher(net, x, kind="empirical", representation="diag")


# --- heads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["categorical", "bernoulli", "gaussian", "gaussian_var", "poisson"])
def test_head_statistics(name):
    head = fnn.get_head(name)
    f = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    i = hand_head_fisher(name, f)
    torch.testing.assert_close(head.fisher(f), i, **TOL)
    b = head.sqrt_fisher(f)
    torch.testing.assert_close(b.mT @ b, i, **TOL)
    v = torch.randn(6, 4, dtype=F64)
    torch.testing.assert_close(head.fisher_mv(f, v), (i @ v[..., None])[..., 0], **TOL)
    y = head.sample(f, 5, torch.Generator().manual_seed(3))
    assert y.shape[:2] == (5, 6)
    # the score has mean zero and covariance I_head: checked against autograd of log_prob
    fr = f.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(head.log_prob(fr, y).sum(), fr)
    torch.testing.assert_close(head.score(f, y).sum(0), auto, **TOL)
    q = f + 0.3
    torch.testing.assert_close(
        head.kl(f, q), torch.distributions.kl_divergence(head.distribution(f), head.distribution(q)), **TOL
    )
    torch.testing.assert_close(head.log_prob(f, y), head.distribution(f).log_prob(y), **TOL)


def test_categorical_square_root_has_c_minus_1_rows():
    f = torch.tensor([[30.0, 0.0, -30.0, 1.0]], dtype=F64)  # extreme probabilities
    b = fnn.Categorical().sqrt_fisher(f)
    assert b.shape == (1, 3, 4)
    assert torch.isfinite(b).all()
    torch.testing.assert_close(b.mT @ b, hand_head_fisher("categorical", f), rtol=1e-10, atol=1e-15)


# --- data forms, progress, errors -----------------------------------------------------------------------


def test_data_forms_agree(capsys):
    net = mlp()
    x = data_for(net)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    want = fnn.fisher(net, (x, y), representation="diag", batch_size=24).diag()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    for data in (loader, [(x[:10], y[:10]), (x[10:], y[10:])], iter([x[:3], x[3:]]), x):
        torch.testing.assert_close(fnn.fisher(net, data, representation="diag", progress=True).diag(), want, **TOL)
    assert "batch" in capsys.readouterr().err


def test_float32_network():
    net = mlp().float()
    x = data_for(net).float()
    ref = reference(net.double(), x.double(), "categorical")
    f = fnn.fisher(net.float(), x, representation="diag")
    assert f.dtype == torch.float32
    torch.testing.assert_close(f.diag().double(), ref.diagonal(), rtol=1e-4, atol=1e-6)


def test_errors_name_the_problem():
    net = mlp()
    x = data_for(net)
    with pytest.raises(RouteError, match="kind"):
        fnn.fisher(net, x, kind="fisher")
    with pytest.raises(RouteError, match="representation"):
        fnn.fisher(net, x, representation="full")
    with pytest.raises(ParameterError, match="head"):
        fnn.fisher(net, x, head="gumbel")
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).double()
    with pytest.raises(RouteError, match=r"'1' \(BatchNorm1d\).*eval"):
        fnn.fisher(bn, x)
    with pytest.raises(ParameterError, match=r"\[n, C\]"):
        fnn.fisher(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)).double(), x, "gaussian")
    with pytest.raises(ParameterError, match="more than once"):
        fnn.fisher(net, iter([x]), representation="implicit")

    class Sneaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x) + torch.nn.functional.linear(x, self.lin.weight)

    # a weight used outside its layer's forward is found by the first-batch check and handled by torch.func
    # on the whole network: the result is still exact
    sneaky = Sneaky().double()
    ref = reference(sneaky, x, "categorical")
    torch.testing.assert_close(fnn.fisher(sneaky, x, representation="diag").diag(), ref.diagonal(), **TOL)
    torch.testing.assert_close(fnn.fisher(sneaky, x, representation="dense").to_dense(), ref, **TOL)


def test_memory_stays_flat_in_number_of_batches():
    import tracemalloc

    net = mlp()

    def stream(k):
        g = torch.Generator().manual_seed(0)
        for _ in range(k):
            yield torch.randn(64, 4, generator=g, dtype=F64)

    peaks = []
    for k in (2, 40):
        tracemalloc.start()
        fnn.fisher(net, stream(k), representation="kfac")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 2 * peaks[0] + 100_000


def test_solve_natural_gradient_on_dense():
    net = mlp()
    x = data_for(net)
    ref = reference(net, x, "categorical")
    f = fnn.fisher(net, x, representation="dense")
    g = torch.randn(ref.shape[0], dtype=F64)
    torch.testing.assert_close(
        f.solve(g, 1e-3), torch.linalg.solve(ref + 1e-3 * torch.eye(ref.shape[0], dtype=F64), g), rtol=1e-8, atol=1e-8
    )
    assert math.isfinite(float(f.trace()))
