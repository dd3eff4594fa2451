"""fisherkl.nn on sequence and transformer models: per-position heads with masks, attention, embeddings,
norms, recurrent and grouped convolutional layers, tied and functional weights.

Oracles (tests/nn_reference.py, independent of fisherkl's engine): the dense Fisher from per-example
Jacobians taken one output entry at a time, head Fishers written out, positions and masks summed by hand;
KFAC factors from forward hooks (inputs) and Jacobians with respect to a zero added to a layer's output
(output gradients); the empirical Fisher from per-example score gradients.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fisherkl.nn as fnn
from fisherkl.errors import ParameterError
from fisherkl.matrix import from_state_dict
from nn_reference import flat_index, hand_kfac, reference_empirical, reference_fisher
from seq_models import F64, GroupedConv2dNet, TinyGPT, inputs, make

TOL = {"rtol": 1e-10, "atol": 1e-12}

MODELS = [
    ("gpt", "categorical"),
    ("gpt_untied", "categorical"),
    ("encoder", "categorical"),
    ("cross", "categorical"),
    ("rmsnorm", "gaussian"),
    ("conv1d", "categorical"),
    ("conv2d", "categorical"),
    ("gru", "categorical"),
    ("resnet", "categorical"),
]


def outputs_of(x: tuple[torch.Tensor, ...]):
    return lambda net, i: net(*(t[i : i + 1] for t in x))[0]


def data(x: tuple[torch.Tensor, ...], y: torch.Tensor | None = None) -> list:
    """One batch whose inputs are the tuple x (positional arguments)."""
    return [(x,) if y is None else (x, y)]


# --- the dense Fisher against brute force, every model -------------------------------------------------
@pytest.mark.parametrize(("name", "head"), MODELS, ids=[m for m, _ in MODELS])
def test_dense_equals_brute_force(name, head):
    net, x = make(name), inputs(name)
    ref = reference_fisher(net, outputs_of(x), x[0].shape[0], head)
    f = fnn.fisher(net, data(x), head, representation="dense")
    torch.testing.assert_close(f.to_dense(), ref, **TOL)


@pytest.mark.parametrize("name", ["gpt", "encoder", "cross", "conv2d", "gru", "resnet"])
def test_diag_and_block_are_restrictions(name):
    net, x = make(name), inputs(name)
    ref = reference_fisher(net, outputs_of(x), x[0].shape[0])
    torch.testing.assert_close(fnn.fisher(net, data(x), representation="diag").diag(), ref.diagonal(), **TOL)
    b = fnn.fisher(net, data(x), representation="block")
    where = flat_index(net)
    mask = torch.zeros_like(ref, dtype=torch.bool)
    for g in b.groups:
        idx = torch.cat([torch.arange(where[k].start, where[k].stop) for k in g])
        mask[idx[:, None], idx[None, :]] = True
    torch.testing.assert_close(b.to_dense(), torch.where(mask, ref, torch.zeros_like(ref)), **TOL)


# --- masks and the per-token convention ------------------------------------------------------------------
def gpt_labels(n: int = 5) -> torch.Tensor:
    y = torch.randint(0, 11, (n, 6), generator=torch.Generator().manual_seed(7))
    y[0, 4:] = -100  # padding at the end
    y[2, :2] = -100  # a prompt that does not count
    y[3, 3] = -100
    return y


@pytest.mark.parametrize("positions", ["sum", "mean"])
def test_masked_positions_drop_out_of_every_representation(positions):
    net, x = make("gpt"), inputs("gpt")
    y = gpt_labels()
    mask = y != -100
    ref = reference_fisher(net, outputs_of(x), 5, mask=mask, positions=positions)
    d = fnn.fisher(net, data(x, y), representation="dense", positions=positions)
    torch.testing.assert_close(d.to_dense(), ref, **TOL)
    torch.testing.assert_close(
        fnn.fisher(net, data(x, y), representation="diag", positions=positions).diag(), ref.diagonal(), **TOL
    )
    v = torch.randn(ref.shape[0], 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    imp = fnn.fisher(net, data(x, y), representation="implicit", positions=positions)
    torch.testing.assert_close(imp.mv(v), ref @ v, **TOL)
    # an explicit mask (no labels needed for the exact kind) gives the same Fisher
    explicit = fnn.Adapter(mask=lambda b: mask)
    torch.testing.assert_close(
        fnn.fisher(net, data(x), representation="dense", adapter=explicit, positions=positions).to_dense(), ref, **TOL
    )


def test_a_masked_label_never_changes_the_result():
    net, x = make("gpt"), inputs("gpt")
    y = gpt_labels()
    mask = y != -100
    filled = torch.where(mask, y, torch.randint(0, 11, y.shape, generator=torch.Generator().manual_seed(9)))
    by_mask = fnn.Adapter(mask=lambda b: mask, ignore_index=None)  # valid labels where the mask is off
    for kind in ("exact", "mc", "empirical"):
        for rep in ("diag", "kfac"):
            a = fnn.fisher(net, data(x, y), kind=kind, representation=rep, seed=1).diag()
            b = fnn.fisher(net, data(x, filled), kind=kind, representation=rep, seed=1, adapter=by_mask).diag()
            torch.testing.assert_close(a, b, **TOL)


def test_empirical_kind_equals_brute_force_with_mask():
    net, x = make("gpt"), inputs("gpt")
    y = gpt_labels()
    ref = reference_empirical(net, outputs_of(x), y, y != -100)
    f = fnn.fisher(net, data(x, y), kind="empirical", representation="dense")
    torch.testing.assert_close(f.to_dense(), ref, **TOL)


def test_mc_kind_agrees_across_routes():
    """The Monte Carlo labels of a seed are the same for every representation and for the matrix-free route."""
    net, x = make("gpt"), inputs("gpt")
    y = gpt_labels()
    d = fnn.fisher(net, data(x, y), kind="mc", representation="dense", seed=3, mc_samples=2).to_dense()
    v = torch.randn(d.shape[0], 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    imp = fnn.fisher(net, data(x, y), kind="mc", representation="implicit", seed=3, mc_samples=2)
    torch.testing.assert_close(imp.mv(v), d @ v, **TOL)
    diag = fnn.fisher(net, data(x, y), kind="mc", representation="diag", seed=3, mc_samples=2)
    torch.testing.assert_close(diag.diag(), d.diagonal(), **TOL)


# --- every kind and representation on the tied GPT --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("head", ["categorical", "callable"])
def test_every_kind_and_representation_runs_on_the_tied_gpt(mode, head):
    net, x = make("gpt"), inputs("gpt")
    getattr(net, mode)()  # dropout is 0: train mode computes the same function
    y = gpt_labels()
    h = "categorical" if head == "categorical" else (lambda o: torch.distributions.Categorical(logits=o))
    ref = reference_fisher(net, outputs_of(x), 5, mask=y != -100)
    for kind in ("exact", "mc", "empirical"):
        dense = fnn.fisher(net, data(x, y), h, kind=kind, representation="dense", seed=2).to_dense()
        if kind == "exact":
            torch.testing.assert_close(dense, ref, **TOL)
        for rep in ("diag", "block", "kfac", "ekfac", "lowrank", "implicit"):
            f = fnn.fisher(net, data(x, y), h, kind=kind, representation=rep, seed=2, rank=4)
            d = f.diag()
            assert torch.isfinite(d).all() and bool((d >= -1e-12).all()), (kind, rep)
            if rep in ("diag", "block", "implicit"):
                torch.testing.assert_close(d, dense.diagonal(), **TOL)


def test_kfac_blocks_of_the_gpt_layers_match_hand_factors():
    """KFAC on the tied GPT: the feed-forward Linear layers' factors (weights shared over positions) by hand."""
    net, x = make("gpt"), inputs("gpt")
    k = fnn.fisher(net, data(x), representation="kfac")
    blocks = {b.key: b for b in k.blocks}
    for mode in ("expand", "reduce"):
        k = fnn.fisher(net, data(x), representation="kfac", kfac_mode=mode)
        blocks = {b.key: b for b in k.blocks}
        for i, lin in ((0, net.blocks[0].linear1), (1, net.blocks[1].linear2)):
            a, g = hand_kfac(net, lin, outputs_of(x), 5, mode=mode)
            name = f"blocks.{i}.{'linear1' if i == 0 else 'linear2'}.weight"
            torch.testing.assert_close(blocks[name].tensors["A"], a, **TOL)
            torch.testing.assert_close(blocks[name].tensors["G"], g, **TOL)
    # the tied token embedding is used twice (input and head): it keeps its exact diagonal
    assert "tok.weight" in k.rest


# --- KFAC factors of the new layer rules, by hand ---------------------------------------------------------
class AttnLM(nn.Module):
    """Embedding → self-attention (+ residual) → LayerNorm → Linear, outputs [n, T, V]; the attention is an
    ``nn.MultiheadAttention`` or, with ``explicit``, the same computation with nn.Linear projections."""

    def __init__(self, explicit: bool = False, vocab: int = 7, d: int = 6, heads: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.explicit, self.heads = explicit, heads
        if explicit:
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        else:
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)

    def forward(self, idx):
        h = self.emb(idx)
        n, t, d = h.shape
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        if self.explicit:
            q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(n, t, d)
            a = self.proj(ctx)
        else:
            a, _ = self.attn(h, h, h, attn_mask=causal, need_weights=False, is_causal=True)
        return self.out(self.ln(h + a))


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_attention_projections_by_hand(mode):
    torch.manual_seed(3)
    net = AttnLM().double().eval()
    twin = AttnLM(explicit=True).double().eval()
    with torch.no_grad():
        for a in ("emb", "ln", "out"):
            getattr(twin, a).load_state_dict(getattr(net, a).state_dict())
        twin.qkv.weight.copy_(net.attn.in_proj_weight)
        twin.qkv.bias.copy_(net.attn.in_proj_bias)
        twin.proj.weight.copy_(net.attn.out_proj.weight)
        twin.proj.bias.copy_(net.attn.out_proj.bias)
    idx = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(net(idx), twin(idx), **TOL)
    k = fnn.fisher(net, idx, representation="kfac", kfac_mode=mode)
    blocks = {b.key: b for b in k.blocks}
    for name, lin in (("attn.in_proj_weight", twin.qkv), ("attn.out_proj.weight", twin.proj)):
        a, g = hand_kfac(twin, lin, lambda m, i: m(idx[i : i + 1])[0], 4, mode=mode)
        torch.testing.assert_close(blocks[name].tensors["A"], a, **TOL)
        torch.testing.assert_close(blocks[name].tensors["G"], g, **TOL)
    assert blocks["attn.in_proj_weight"].d_out == 18  # Q, K and V share their input: one block


def test_kfac_cross_attention_has_query_and_key_value_blocks():
    net, x = make("cross"), inputs("cross")
    k = fnn.fisher(net, data(x), representation="kfac")
    keys = sorted(b.key for b in k.blocks)
    assert "cross.in_proj_weight[0:6]" in keys and "cross.in_proj_weight[6:18]" in keys
    assert {"other.q_proj_weight", "other.k_proj_weight", "other.v_proj_weight"} <= set(keys)
    ref = reference_fisher(net, outputs_of(x), 5)
    # KFAC is exact on the diagonal blocks' traces in no case, but it is a PSD matrix of the right size whose
    # blocks use the right inputs: the query block's A is the Gram matrix of the projected query input
    with torch.no_grad():
        q = net.q(x[0])
    qa = torch.cat([q.reshape(-1, 6), torch.ones(q.shape[0] * q.shape[1], 1, dtype=F64)], 1)
    blk = next(b for b in k.blocks if b.key == "cross.in_proj_weight[0:6]")
    torch.testing.assert_close(blk.tensors["A"], qa.T @ qa / qa.shape[0], **TOL)
    assert k.to_dense().shape == ref.shape


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_embedding_factor_is_the_diagonal_of_token_counts(mode):
    torch.manual_seed(4)
    net = nn.Sequential(nn.Embedding(9, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    idx = torch.randint(0, 9, (6, 5), generator=torch.Generator().manual_seed(2))
    idx[0, :3] = 4  # a repeated token within one sequence
    k = fnn.fisher(net, idx, representation="kfac", kfac_mode=mode)
    blk = next(b for b in k.blocks if b.weight == "0.weight")

    def onehot(i):
        return F.one_hot(i, 9).to(F64)

    a, g = hand_kfac(net, net[0], lambda m, i: m(idx[i : i + 1])[0], 6, mode=mode, unfold=onehot, bias=False)
    assert blk.tensors["A"].ndim == 1  # stored as a diagonal, never V × V
    if mode == "expand":
        torch.testing.assert_close(torch.diag(blk.tensors["A"]), a, **TOL)  # hand A is exactly diagonal
    else:
        torch.testing.assert_close(blk.tensors["A"], a.diagonal(), **TOL)  # reduce keeps the diagonal
    torch.testing.assert_close(blk.tensors["G"], g, **TOL)
    # the matrix the block stands for: F ≈ A ⊗ G in the [V, d] order of the embedding weight
    dense = k.to_dense()[:36, :36]
    torch.testing.assert_close(dense, torch.kron(torch.diag(blk.tensors["A"]), blk.tensors["G"]), **TOL)


@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_grouped_dilated_convolutions_by_hand(mode):
    net, x = make("conv2d"), inputs("conv2d")
    assert isinstance(net, GroupedConv2dNet)
    k = fnn.fisher(net, data(x), representation="kfac", kfac_mode=mode)
    blocks = {b.key: b for b in k.blocks}
    out = outputs_of(x)
    for conv, groups, pad_mode in ((net.c1, 2, "reflect"), (net.c2, 3, None)):
        per_in, per_out = conv.in_channels // groups, conv.out_channels // groups
        for j in range(groups):

            def unfold(inp, j=j, conv=conv, pad_mode=pad_mode, per_in=per_in):
                p = conv._reversed_padding_repeated_twice
                xp = F.pad(inp, p, mode=pad_mode) if pad_mode else inp
                cols = F.unfold(xp[:, j * per_in : (j + 1) * per_in], conv.kernel_size, conv.dilation, 0, conv.stride)
                return cols.transpose(1, 2)

            has_bias = conv.bias is not None
            a, g = hand_kfac(net, conv, out, 5, mode=mode, unfold=unfold, bias=has_bias, channels_first=True)
            name = "c1.weight" if conv is net.c1 else "c2.weight"
            blk = blocks[f"{name}[{j * per_out}:{(j + 1) * per_out}]"]
            rows = slice(j * per_out, (j + 1) * per_out)
            torch.testing.assert_close(blk.tensors["A"], a, **TOL)
            torch.testing.assert_close(blk.tensors["G"], g[rows, rows], **TOL)


def test_kfac_conv1d_by_hand():
    net, x = make("conv1d"), inputs("conv1d")
    k = fnn.fisher(net, data(x), representation="kfac")
    blk = next(b for b in k.blocks if b.key == "c1.weight")
    c1 = net.c1

    def unfold(inp):
        cols = F.unfold(F.pad(inp, (2, 2)).unsqueeze(2), (1, 3), dilation=(1, 2))
        return cols.transpose(1, 2)

    a, g = hand_kfac(net, c1, outputs_of(x), 5, unfold=unfold, channels_first=True)
    torch.testing.assert_close(blk.tensors["A"], a, **TOL)
    torch.testing.assert_close(blk.tensors["G"], g, **TOL)


# --- the quadratic form predicts the KL with the same conventions ------------------------------------
@pytest.mark.parametrize("positions", ["sum", "mean"])
def test_half_quadratic_form_over_exact_kl_tends_to_one_with_a_mask(positions):
    net, x = make("gpt"), inputs("gpt")
    y = gpt_labels()
    f = fnn.fisher(net, data(x, y), representation="dense", positions=positions)
    d = torch.randn(f.p, dtype=F64, generator=torch.Generator().manual_seed(5))
    ratios = []
    for eps in (1e-2, 1e-3, 1e-4):
        delta = eps * d / d.norm()
        kl = fnn.kl(net, fnn.perturbed(net, delta), data(x, y), positions=positions)
        ratios.append(float(0.5 * f.quad(delta) / kl))
    assert abs(ratios[-1] - 1) < 1e-3, ratios
    assert abs(ratios[-1] - 1) < abs(ratios[0] - 1)


# --- networks reached in other ways --------------------------------------------------------------------
def test_compiled_network_gives_the_same_fisher():
    net, x = make("gpt_untied"), inputs("gpt_untied")
    compiled = torch.compile(net)
    a = fnn.fisher(compiled, data(x), representation="diag").diag()
    torch.testing.assert_close(a, fnn.fisher(net, data(x), representation="diag").diag(), **TOL)


class Wrapper(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, *a):
        return self.m(*a)


def test_a_fisher_computed_on_a_wrapper_serves_the_network():
    net, x = make("gpt"), inputs("gpt")
    f = fnn.fisher(Wrapper(net), data(x), representation="diag")
    assert f.layout.names[0] == "m.tok.weight"
    ewc = fnn.EWC(net, f, strength=2.0)
    assert ewc.fisher.layout == fnn.layout_of(net)
    with torch.no_grad():
        net.tok.weight.add_(0.01)
    d = torch.cat([p.reshape(-1) for p in net.parameters()]) - ewc.anchor
    torch.testing.assert_close(ewc(), 0.5 * 2.0 * (d * f.diag() * d).sum(), **TOL)
    # saved and loaded (no references to the parameters): matched by name suffix and shape
    k = fnn.fisher(Wrapper(net), data(x), representation="kfac")
    loaded = from_state_dict(copy.deepcopy(k.state_dict()))
    g = fnn.EWC(net, loaded)
    assert g.fisher.layout == fnn.layout_of(net)
    v = torch.randn(k.p, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(g.fisher.mv(v), k.mv(v), **TOL)
    with pytest.raises(ParameterError, match="parameter layout is not the network"):
        fnn.EWC(make("gpt_untied"), loaded)


def test_natural_gradient_trains_the_tied_gpt():
    net, x = make("gpt"), inputs("gpt", n=8)
    y = torch.roll(x[0], -1, 1)

    def loss():
        return F.cross_entropy(net(x[0]).transpose(1, 2), y)

    opt = fnn.NaturalGradient(net.parameters(), "kfac", lr=0.5, damping=1e-2, update_every=5, net=net)
    first = loss().item()
    for _ in range(20):
        opt.zero_grad()
        loss().backward()
        opt.step(fisher_data=data(x))
    assert loss().item() < first - 0.05


# --- errors name the problem -----------------------------------------------------------------------------
def test_sequence_errors_name_the_problem():
    net, x = make("gpt"), inputs("gpt")
    with pytest.raises(ParameterError, match=r"mask: must have the outputs' leading shape \(5, 6\)"):
        fnn.fisher(net, data(x), representation="diag", adapter=fnn.Adapter(mask=lambda b: torch.ones(5, 3)))
    y = torch.full((5, 6), 3)
    y[1, 2] = 11
    with pytest.raises(ParameterError, match=r"labels must be in 0\.\.10.*got 11"):
        fnn.fisher(net, data(x, y), kind="empirical", representation="diag")
    with pytest.raises(ParameterError, match=r"labels must have .*\(5, 6\)"):
        fnn.fisher(net, data(x, torch.zeros(5, 4, dtype=torch.long)), kind="empirical", representation="diag")
    with pytest.raises(ParameterError, match="rank 1"):
        fnn.fisher(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)).double(), torch.randn(4, 3, dtype=F64))
    with pytest.raises(ParameterError, match="shift"):
        fnn.fisher(nn.Linear(3, 2).double(), torch.randn(4, 3, dtype=F64), adapter=fnn.causal_lm())


def test_batches_as_dicts_and_tuples_of_inputs():
    net, x = make("cross"), inputs("cross")
    ref = fnn.fisher(net, data(x), representation="diag").diag()

    class Named(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, tgt, src):
            return self.m(tgt, src)

    named = Named(net)
    as_dict = [{"tgt": x[0], "src": x[1]}]
    torch.testing.assert_close(fnn.fisher(named, as_dict, representation="diag").diag(), ref, **TOL)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*x), batch_size=2)
    pairs = [((a, b), torch.zeros(a.shape[0], dtype=torch.long)) for a, b in loader]
    torch.testing.assert_close(fnn.fisher(net, pairs, representation="diag").diag(), ref, **TOL)
    assert math.isfinite(float(fnn.kl(net, net, pairs)))


class FunctionalUses(nn.Module):
    """Parameters of submodules used outside their modules' forwards: F.linear(h, emb.weight),
    h @ lin.weight.T (with lin also called normally: a tie), h @ holder.u (a weight stored [d_in, d_out])."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.lin = nn.Linear(4, 4)
        self.holder = nn.Module()
        self.holder.u = nn.Parameter(torch.randn(4, 7) / 2)

    def forward(self, idx):
        h = torch.tanh(self.lin(self.emb(idx)))
        return F.linear(h, self.emb.weight) + torch.tanh(h @ self.lin.weight.T) @ self.holder.u


def test_functional_uses_of_parameters_are_linear_rules_and_exact():
    from fisherkl.nn.engine import Engine

    torch.manual_seed(6)
    net = FunctionalUses().double()
    idx = torch.randint(0, 7, (5, 4), generator=torch.Generator().manual_seed(1))
    ref = reference_fisher(net, lambda m, i: m(idx[i : i + 1])[0], 5)
    for rep in ("dense", "diag"):
        f = fnn.fisher(net, idx, representation=rep)
        got = f.to_dense() if rep == "dense" else f.diag()
        torch.testing.assert_close(got, ref if rep == "dense" else ref.diagonal(), **TOL)
    engine = Engine(net)
    with engine:
        engine.prepare(engine.adapter.batch(idx))
    functional = sorted(r.names[0] for r in engine.rules if getattr(r, "functional", False))
    assert functional == ["emb.weight", "holder.u", "lin.weight"]
    assert engine.network_rule is None  # no whole-network fallback was needed


# --- cost before running, mixed precision ------------------------------------------------------------------
def _nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(_nbytes(v) for v in obj)
    return 0


@pytest.mark.parametrize("name", ["gpt", "conv2d"])
def test_plan_states_sizes_and_rows_before_running(name):
    from fisherkl.matrix import DenseTooLargeError, set_max_dense_bytes

    net, x = make(name), inputs(name)
    pl = fnn.plan(net, (x,))
    assert pl.parameters == sum(p.numel() for p in net.parameters())
    expected_rows = 6 * 10 if name == "gpt" else 2  # T·(V − 1) for the GPT; C − 1 for the CNN
    assert pl.rows_per_example == expected_rows
    for rep in ("dense", "diag", "block", "kfac", "ekfac"):
        f = fnn.fisher(net, data(x), representation=rep)
        sd = f.state_dict()
        stored = _nbytes({k: v for k, v in sd.items() if k != "layout"})
        assert pl.bytes[rep] == stored, rep
    assert "G 24×24 ⊗ A 9×9" in str(pl) or name != "gpt"
    old = set_max_dense_bytes(2 * pl.bytes["diag"])  # diag fits, the Kronecker factors do not
    try:
        with pytest.raises(DenseTooLargeError, match=r"options that fit: diag"):
            pl.check("kfac")
        with pytest.raises(DenseTooLargeError, match="Kronecker factors need"):
            fnn.fisher(net, data(x), representation="kfac")
    finally:
        set_max_dense_bytes(old)


def test_bf16_network_statistics_in_float32_agree_with_its_float32_copy():
    torch.manual_seed(0)
    net = TinyGPT(vocab=11, d=16, context=6).eval()
    (x,) = inputs("gpt", n=12)
    low = copy.deepcopy(net).to(torch.bfloat16)
    v = torch.randn(sum(p.numel() for p in net.parameters()), generator=torch.Generator().manual_seed(0))
    for rep in ("kfac", "ekfac", "diag", "implicit"):
        ref = fnn.fisher(net, x, representation=rep)
        got = fnn.fisher(low, x, representation=rep)
        assert got.dtype == torch.float32
        a, b = ref.mv(v), got.mv(v)
        assert float((a - b).norm() / a.norm()) < 5e-2, rep  # bf16 keeps ~3 significant digits


def test_no_host_copies_per_batch(monkeypatch):
    """After the first batch (whose checks read values), a batch costs no device-to-host copies: counted on
    the CPU through the tensor methods that make them (a GPU would synchronise at each)."""
    net, x = make("gpt_untied"), inputs("gpt_untied", n=12)
    counted = {"n": 0}
    for meth in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy"):
        orig = getattr(torch.Tensor, meth)

        def spy(self, *a, _orig=orig, **k):
            counted["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, meth, spy)
    for kind, rep in (("exact", "diag"), ("mc", "kfac"), ("exact", "kfac"), ("mc", "dense")):
        per = []
        for batches in (1, 4):
            counted["n"] = 0
            fnn.fisher(net, [x[0][:3]] * batches, kind=kind, representation=rep, seed=0)
            per.append(counted["n"])
        assert per[1] == per[0], (kind, rep, per)


class HandGRU(nn.Module):
    """Embedding → a single-layer GRU written with nn.Linear projections (input projection once over the
    sequence, hidden projection at every step) → per-position Linear; the oracle for the recurrent rule."""

    def __init__(self, vocab: int = 7, d: int = 4, classes: int = 3, lstm: bool = False) -> None:
        super().__init__()
        g = 4 if lstm else 3
        self.lstm = lstm
        self.emb = nn.Embedding(vocab, d)
        self.ih, self.hh = nn.Linear(d, g * d), nn.Linear(d, g * d)
        self.out = nn.Linear(d, classes)

    def forward(self, idx):
        x = self.emb(idx)
        gx = self.ih(x)
        h = c = torch.zeros(x.shape[0], x.shape[2], dtype=x.dtype)
        hs = []
        for t in range(x.shape[1]):
            gh = self.hh(h)
            if self.lstm:
                i, f, g, o = (gx[:, t] + gh).chunk(4, -1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                xr, xz, xn = gx[:, t].chunk(3, -1)
                hr, hz, hn = gh.chunk(3, -1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            hs.append(h)
        return self.out(torch.stack(hs, 1))


class TorchRNN(nn.Module):
    def __init__(self, lstm: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.rnn = (nn.LSTM if lstm else nn.GRU)(4, 4, batch_first=True)
        self.out = nn.Linear(4, 3)

    def forward(self, idx):
        return self.out(self.rnn(self.emb(idx))[0])


@pytest.mark.parametrize("lstm", [False, True], ids=["gru", "lstm"])
@pytest.mark.parametrize("mode", ["expand", "reduce"])
def test_kfac_recurrent_layers_by_hand(lstm, mode):
    torch.manual_seed(8)
    net = TorchRNN(lstm).double().eval()
    twin = HandGRU(lstm=lstm).double()
    with torch.no_grad():
        twin.emb.weight.copy_(net.emb.weight)
        twin.out.load_state_dict(net.out.state_dict())
        twin.ih.weight.copy_(net.rnn.weight_ih_l0)
        twin.ih.bias.copy_(net.rnn.bias_ih_l0)
        twin.hh.weight.copy_(net.rnn.weight_hh_l0)
        twin.hh.bias.copy_(net.rnn.bias_hh_l0)
    idx = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(net(idx), twin(idx), **TOL)
    k = fnn.fisher(net, idx, representation="kfac", kfac_mode=mode)
    blocks = {b.key: b for b in k.blocks}
    for name, lin in (("rnn.weight_ih_l0", twin.ih), ("rnn.weight_hh_l0", twin.hh)):
        a, g = hand_kfac(twin, lin, lambda m, i: m(idx[i : i + 1])[0], 4, mode=mode)
        torch.testing.assert_close(blocks[name].tensors["A"], a, **TOL)
        torch.testing.assert_close(blocks[name].tensors["G"], g, **TOL)


class DeepRNN(nn.Module):
    """Two-layer bidirectional GRU (sequence first) and an LSTM given initial states."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.gru = nn.GRU(4, 3, num_layers=2, bidirectional=True)
        self.lstm = nn.LSTM(6, 3, batch_first=True)
        self.h0 = nn.Linear(4, 6)
        self.out = nn.Linear(3, 3)

    def forward(self, idx):
        x = self.emb(idx)
        h, _ = self.gru(x.transpose(0, 1))
        init = torch.tanh(self.h0(x.mean(1))).unsqueeze(0)  # [1, n, 6] → h0, c0 of the LSTM
        y, (hn, cn) = self.lstm(h.transpose(0, 1), (init[..., :3].contiguous(), init[..., 3:].contiguous()))
        return self.out(y + hn.transpose(0, 1) + cn.transpose(0, 1))


def test_deep_bidirectional_recurrent_layers_equal_brute_force():
    torch.manual_seed(9)
    net = DeepRNN().double()
    idx = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(4))
    ref = reference_fisher(net, lambda m, i: m(idx[i : i + 1])[0], 4)
    torch.testing.assert_close(fnn.fisher(net, idx, representation="dense").to_dense(), ref, **TOL)
    k = fnn.fisher(net, idx, representation="kfac")
    assert {"gru.weight_ih_l1_reverse", "gru.weight_hh_l0", "lstm.weight_hh_l0"} <= {b.key for b in k.blocks}
