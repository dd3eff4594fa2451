"""fisherkl.nn against the peer libraries BackPACK, nngeometry and curvlinops (the ``compare`` extra).

Models: an MLP and a small CNN (convolutions with padding and stride, ReLU, max-pooling), float64,
a categorical head on logits (peers: ``CrossEntropyLoss``), for which the Fisher equals the GGN.

Normalisation: ours is the **mean** over examples, F = (1/N) Σₙ Jₙᵀ I(fₙ) Jₙ. BackPACK and
curvlinops give the GGN of the loss, which for ``reduction="mean"`` is that same mean (for "sum" it
would be N·F); nngeometry's ``FIM`` divides by the number of examples. KFAC conventions differ per
library only in how a constant is split between the factors (nngeometry: A = Σ ââᵀ/N and
G = Σ ggᵀ/(N·T) for a convolution with T output positions; ours: A = Σ ââᵀ/(N·T), G = Σ ggᵀ/N), so
the Kronecker products G ⊗ A are compared, as dense matrices in the order of ``net.parameters()``.

Exact quantities agree to ~1e-10 (relative to the largest entry). Monte Carlo estimators are
compared in expectation: the mean of K independent estimates (fresh seeds) must be within a few
standard errors of the exact value, for ours and for each peer alike.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fisherkl.nn as fnn

pytestmark = pytest.mark.compare

N = 24
TOL = 1e-10


@pytest.fixture(autouse=True)
def float64_default():
    # nngeometry's closed-form categorical square root adds torch.finfo().eps of the default dtype
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    return net, torch.randn(N, 5, dtype=torch.float64), torch.randint(0, 4, (N,))


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 2, stride=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).double()
    return net, torch.randn(N, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (N,))


MODELS = {"mlp": mlp, "cnn": cnn}


def close(got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> None:
    scale = float(want.abs().max())
    err = float((got - want).abs().max())
    assert err <= tol * scale, f"max error {err:.3e}, scale {scale:.3e}"


def ours(net: nn.Module, x: torch.Tensor, y: torch.Tensor, rep: str, kind: str = "exact", **kw) -> torch.Tensor:
    f = fnn.fisher(net, (x, y), kind=kind, representation=rep, batch_size=10, progress=False, **kw)
    return f.diag() if rep == "diag" else f.to_dense()


# --- BackPACK ------------------------------------------------------------------------------------
def backpack_run(net, x, y, extension):
    bp = pytest.importorskip("backpack", reason="BackPACK not installed (the 'compare' extra)")
    model = bp.extend(copy.deepcopy(net))
    lossf = bp.extend(nn.CrossEntropyLoss(reduction="mean"))
    model.zero_grad()
    with bp.backpack(extension):
        lossf(model(x), y).backward()
    return model


def backpack_reference(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BackPACK's KFLR/KFAC as a dense matrix with W–W and b–b blocks per layer, built from our factors.

    For a Linear layer BackPACK's weight block is the usual G ⊗ A. For a convolution with T output
    positions it is a hybrid of the two KFAC conventions (Eschenhagen et al. 2023): G from the
    position-summed output gradients (ours with kfac_mode="reduce") and A from all positions, summed
    over them (T × ours with kfac_mode="expand"); its bias block is the exact one (= G reduce).
    """
    positions = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o: positions.__setitem__(m, o[0, 0].numel()))
        for m in net.modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    net(x[:1])
    for h in hooks:
        h.remove()
    kw = {"batch_size": 10, "progress": False}
    expand = fnn.fisher(net, (x, y), representation="kfac", **kw).blocks
    reduce = fnn.fisher(net, (x, y), representation="kfac", kfac_mode="reduce", **kw).blocks
    parts = []
    for m, e, r in zip([m for m in net.modules() if m in positions], expand, reduce):
        d_in = e.d_in
        if isinstance(m, nn.Linear):
            parts += [torch.kron(e.tensors["G"], e.tensors["A"][:d_in, :d_in]), e.tensors["G"]]
        else:
            t = positions[m]
            parts += [torch.kron(r.tensors["G"], t * e.tensors["A"][:d_in, :d_in]), r.tensors["G"]]
    return torch.block_diag(*parts)


def backpack_dense(model: nn.Module, attr: str) -> torch.Tensor:
    parts = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            g, a = getattr(m.weight, attr)
            parts += [torch.kron(g, a), getattr(m.bias, attr)[0]]
    return torch.block_diag(*parts)


@pytest.mark.parametrize("name", MODELS)
def test_backpack_exact_diag_and_kflr(name):
    pytest.importorskip("backpack", reason="BackPACK not installed (the 'compare' extra)")
    from backpack.extensions import KFLR, DiagGGNExact

    net, x, y = MODELS[name]()
    model = backpack_run(net, x, y, DiagGGNExact())
    close(ours(net, x, y, "diag"), torch.cat([p.diag_ggn_exact.reshape(-1) for p in model.parameters()]))
    model = backpack_run(net, x, y, KFLR())
    close(backpack_dense(model, "kflr"), backpack_reference(net, x, y))
    if name == "mlp":  # no weight sharing: BackPACK's KFLR is exactly our KFAC's W–W and b–b blocks
        close(backpack_dense(model, "kflr"), _weight_bias_blocks(net, ours(net, x, y, "kfac")))


@pytest.mark.parametrize("name", MODELS)
def test_backpack_monte_carlo_in_expectation(name):
    pytest.importorskip("backpack", reason="BackPACK not installed (the 'compare' extra)")
    from backpack.extensions import KFAC, DiagGGNMC

    net, x, y = MODELS[name]()
    exact_diag, exact_kfac = ours(net, x, y, "diag"), ours(net, x, y, "kfac")
    k, s = 24, 8

    def bp(extension, fn):
        def run(seed):
            torch.manual_seed(seed)
            return fn(backpack_run(net, x, y, extension(mc_samples=s)))

        return run

    diag_mc = bp(DiagGGNMC, lambda m: torch.cat([p.diag_ggn_mc.reshape(-1) for p in m.parameters()]))
    in_expectation(lambda i: ours(net, x, y, "diag", "mc", mc_samples=s, seed=i), exact_diag, k)
    in_expectation(diag_mc, exact_diag, k)
    in_expectation(lambda i: ours(net, x, y, "kfac", "mc", mc_samples=s, seed=i), exact_kfac, k)
    in_expectation(bp(KFAC, lambda m: backpack_dense(m, "kfac")), backpack_reference(net, x, y), k)


def _weight_bias_blocks(net: nn.Module, dense: torch.Tensor) -> torch.Tensor:
    """The W–W and b–b blocks of each layer (BackPACK's KFAC has no W–b cross terms)."""
    parts, at = [], 0
    for p in net.parameters():
        parts.append(dense[at : at + p.numel(), at : at + p.numel()])
        at += p.numel()
    return torch.block_diag(*parts)


def in_expectation(estimate, exact: torch.Tensor, k: int, z: float = 6.0) -> None:
    """The mean of k independent estimates is within z standard errors of ``exact`` (entrywise; entries
    with zero spread must be exact)."""
    samples = torch.stack([estimate(i) for i in range(k)])
    mean, se = samples.mean(0), samples.std(0) / k**0.5
    scale = float(exact.abs().max())
    dev = (mean - exact).abs()
    assert bool((dev <= z * se + 1e-9 * scale).all()), (
        f"max deviation / SE: {float((dev / se.clamp_min(1e-300)).max())}"
    )
    # and the estimates are not trivially noisy: the mean is close to the truth overall
    assert float(dev.max()) < 0.25 * scale


# --- nngeometry ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_nngeometry_dense_kfac_diag(name):
    pytest.importorskip("nngeometry", reason="nngeometry not installed (the 'compare' extra)")
    from nngeometry.metrics import FIM
    from nngeometry.object import PMatDense, PMatDiag, PMatKFAC

    net, x, y = MODELS[name]()
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    close(ours(net, x, y, "dense"), FIM(net, loader, PMatDense, variant="classif_logits").data)
    close(ours(net, x, y, "diag"), FIM(net, loader, PMatDiag, variant="classif_logits").data)
    close(ours(net, x, y, "kfac"), FIM(net, loader, PMatKFAC, variant="classif_logits").to_torch())


@pytest.mark.parametrize("name", MODELS)
def test_nngeometry_monte_carlo_in_expectation(name):
    pytest.importorskip("nngeometry", reason="nngeometry not installed (the 'compare' extra)")
    from nngeometry.metrics import FIM_MonteCarlo
    from nngeometry.object import PMatDiag, PMatKFAC

    net, x, y = MODELS[name]()
    loader = DataLoader(TensorDataset(x, y), batch_size=N)
    k, s = 24, 8

    def nng(rep):
        def run(seed):
            torch.manual_seed(seed)
            f = FIM_MonteCarlo(net, loader, rep, variant="classif_logits", trials=s)
            return f.data if rep is PMatDiag else f.to_torch()

        return run

    in_expectation(nng(PMatDiag), ours(net, x, y, "diag"), k)
    in_expectation(nng(PMatKFAC), ours(net, x, y, "kfac"), k)


# --- curvlinops ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_curvlinops_ggn_and_kfac(name):
    pytest.importorskip("curvlinops", reason="curvlinops not installed (the 'compare' extra)")
    from curvlinops import FisherType, GGNLinearOperator, KFACLinearOperator

    net, x, y = MODELS[name]()
    params = list(net.parameters())
    data = [(x[:10], y[:10]), (x[10:], y[10:])]
    lossf = nn.CrossEntropyLoss(reduction="mean")
    eye = torch.eye(sum(p.numel() for p in params), dtype=torch.float64)
    ggn = GGNLinearOperator(net, lossf, params, data)
    close(ours(net, x, y, "dense"), ggn @ eye)
    kfac = KFACLinearOperator(net, lossf, params, data, fisher_type=FisherType.TYPE2, separate_weight_and_bias=False)
    close(ours(net, x, y, "kfac"), kfac @ eye)
    # and the matrix-free product
    v = torch.randn(eye.shape[0], dtype=torch.float64)
    f = fnn.fisher(net, (x, y), representation="implicit", batch_size=10, progress=False)
    close(f.mv(v), ggn @ v)


@pytest.mark.parametrize("name", MODELS)
def test_curvlinops_monte_carlo_kfac_in_expectation(name):
    pytest.importorskip("curvlinops", reason="curvlinops not installed (the 'compare' extra)")
    from curvlinops import FisherType, KFACLinearOperator

    net, x, y = MODELS[name]()
    params = list(net.parameters())
    data = [(x, y)]
    eye = torch.eye(sum(p.numel() for p in params), dtype=torch.float64)
    k, s = 24, 8

    def run(seed):
        op = KFACLinearOperator(
            net, nn.CrossEntropyLoss(), params, data, fisher_type=FisherType.MC, mc_samples=s, seed=seed,
            separate_weight_and_bias=False, check_deterministic=False,
        )  # fmt: skip
        return op @ eye

    in_expectation(run, ours(net, x, y, "kfac"), k)


# --- curvlinops on a transformer ---------------------------------------------------------------------------
class ClassesSecond(nn.Module):
    """[n, T, V] logits as CrossEntropyLoss wants them, [n, V, T]."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).transpose(1, 2)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_curvlinops_on_a_transformer(reduction):
    """curvlinops' GGN (= the Fisher of a softmax head) and its empirical KFAC on a GPT of
    nn.TransformerEncoderLayer blocks. Normalisation: reduction="sum" is N × ours with positions="sum" (we
    average over sequences); reduction="mean" averages over the N·T tokens, which is ours with
    positions="mean". (curvlinops' type-2 KFAC backpropagates each class column at all positions at once, so
    for sequence outputs its factors include cross-position terms that the exact Fisher does not have; the
    empirical type backpropagates the same per-sequence gradient as ours.)"""
    pytest.importorskip("curvlinops", reason="curvlinops not installed (the 'compare' extra)")
    from curvlinops import FisherType, GGNLinearOperator, KFACLinearOperator
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from seq_models import inputs, make

    net = make("gpt_untied")
    (x,) = inputs("gpt_untied", n=6)
    y = torch.randint(0, 11, x.shape, generator=torch.Generator().manual_seed(3))
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    lossf = nn.CrossEntropyLoss(reduction=reduction)
    positions = {"sum": "sum", "mean": "mean"}[reduction]
    scale = x.shape[0] if reduction == "sum" else 1
    wrapped = ClassesSecond(net)
    params = list(net.parameters())
    eye = torch.eye(sum(p.numel() for p in params), dtype=torch.float64)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # curvlinops' forward AD cannot go through the fused layer
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            ggn = GGNLinearOperator(wrapped, lossf, params, data) @ eye
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    close(scale * fnn.fisher(net, (x, y), representation="dense", positions=positions).to_dense(), ggn)
    lin = [n for n, m in net.named_modules() if type(m) is nn.Linear]
    lin_params = [p for n, p in net.named_parameters() if n.rsplit(".", 1)[0] in lin]
    where, at = {}, 0
    for n, p in net.named_parameters():
        where[n] = torch.arange(at, at + p.numel())
        at += p.numel()
    idx = torch.cat([where[n] for n, _ in net.named_parameters() if n.rsplit(".", 1)[0] in lin])
    for mode in ("expand", "reduce"):
        theirs = KFACLinearOperator(
            wrapped, lossf, lin_params, data, fisher_type=FisherType.EMPIRICAL, kfac_approx=mode,
            separate_weight_and_bias=False,
        )  # fmt: skip
        k = fnn.fisher(net, (x, y), kind="empirical", representation="kfac", kfac_mode=mode, positions=positions)
        mine = k.to_dense()[idx[:, None], idx[None, :]]
        close(scale * mine, theirs @ torch.eye(len(idx), dtype=torch.float64))
