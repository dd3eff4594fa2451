"""The network Fisher against brute force on sequence and transformer models, as a table.

For each model of tests/seq_models.py (and GPT-2 / BERT from ``transformers`` when installed): the number
of parameters, and the largest relative deviation max|ours − ref| / max|ref| of the dense Fisher, its
diagonal, its per-layer blocks and a matrix-free product from the brute-force reference (per-example
Jacobians one output entry at a time, tests/nn_reference.py); then curvlinops' GGN on the tied-head-free
GPT (its Linear layers for KFAC, which is what curvlinops supports). float64.

    python benchmarks/agreement_sequences.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fisherkl.nn as fnn
from nn_reference import flat_index, reference_fisher
from seq_models import inputs, make

MODELS = [
    ("gpt", "categorical", "tied GPT: TransformerEncoderLayer ×2, causal, F.linear head, arange positions"),
    ("gpt_untied", "categorical", "GPT with its own output Linear"),
    ("encoder", "categorical", "encoder classifier, key padding mask, mean pooling"),
    ("cross", "categorical", "cross-attention (seq-first) + kdim/vdim attention"),
    ("rmsnorm", "gaussian", "per-position MLP with RMSNorm and GroupNorm"),
    ("conv1d", "categorical", "Conv1d dilated + grouped strided circular"),
    ("conv2d", "categorical", "grouped dilated 'same' reflect Conv2d, BatchNorm eval"),
    ("gru", "categorical", "Embedding → GRU (seq-first) → LSTM → per-position Linear"),
    ("resnet", "categorical", "ResNet topology: BasicBlocks, BatchNorm eval, strided 1×1 projection"),
]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'model':<12}{'p':>6}{'dense':>10}{'diag':>10}{'block':>10}{'F·v':>10}{'ours s':>8}  what")
    for name, head, what in MODELS:
        net, x = make(name), inputs(name)
        ref = reference_fisher(net, lambda m, i, x=x: m(*(t[i : i + 1] for t in x))[0], x[0].shape[0], head)
        data = [(x,)]
        t0 = time.perf_counter()
        dense = fnn.fisher(net, data, head, representation="dense").to_dense()
        secs = time.perf_counter() - t0
        diag = fnn.fisher(net, data, head, representation="diag").diag()
        blk = fnn.fisher(net, data, head, representation="block")
        where = flat_index(net)
        mask = torch.zeros_like(ref, dtype=torch.bool)
        for g in blk.groups:
            idx = torch.cat([torch.arange(where[k].start, where[k].stop) for k in g])
            mask[idx[:, None], idx[None, :]] = True
        v = torch.randn(ref.shape[0], 3, dtype=ref.dtype, generator=torch.Generator().manual_seed(0))
        mv = fnn.fisher(net, data, head, representation="implicit").mv(v)
        print(
            f"{name:<12}{ref.shape[0]:>6}{rel(dense, ref):>10.1e}{rel(diag, ref.diagonal()):>10.1e}"
            f"{rel(blk.to_dense(), torch.where(mask, ref, torch.zeros_like(ref))):>10.1e}{rel(mv, ref @ v):>10.1e}"
            f"{secs:>8.2f}  {what}"
        )


def curvlinops_rows() -> None:
    """curvlinops' GGN and empirical KFAC (expand, reduce) against ours on the untied GPT, per reduction."""
    try:
        from curvlinops import FisherType, GGNLinearOperator, KFACLinearOperator
    except ImportError:
        print("curvlinops not installed (the 'compare' extra)")
        return
    from torch import nn
    from torch.nn.attention import SDPBackend, sdpa_kernel

    net = make("gpt_untied")
    (x,) = inputs("gpt_untied", n=6)
    y = torch.randint(0, 11, x.shape, generator=torch.Generator().manual_seed(3))

    class ClassesSecond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.net(t).transpose(1, 2)

    wrapped, data = ClassesSecond(), [(x[:3], y[:3]), (x[3:], y[3:])]
    params = list(net.parameters())
    lin = [n for n, m in net.named_modules() if type(m) is nn.Linear]
    where, at = {}, 0
    for n, p in net.named_parameters():
        where[n] = torch.arange(at, at + p.numel())
        at += p.numel()
    idx = torch.cat([where[n] for n, _ in net.named_parameters() if n.rsplit(".", 1)[0] in lin])
    torch.backends.mha.set_fastpath_enabled(False)
    print("\ncurvlinops on the untied GPT (reduction 'sum' = N × ours; 'mean' = ours with positions='mean')")
    for reduction in ("sum", "mean"):
        lossf = nn.CrossEntropyLoss(reduction=reduction)
        scale = x.shape[0] if reduction == "sum" else 1
        positions = reduction
        eye = torch.eye(sum(p.numel() for p in params), dtype=torch.float64)
        with sdpa_kernel([SDPBackend.MATH]):
            ggn = GGNLinearOperator(wrapped, lossf, params, data) @ eye
        ours = scale * fnn.fisher(net, (x, y), representation="dense", positions=positions).to_dense()
        line = f"  {reduction:<5} GGN vs dense {rel(ours, ggn):.1e}"
        lin_params = [p for n, p in net.named_parameters() if n.rsplit(".", 1)[0] in lin]
        for mode in ("expand", "reduce"):
            theirs = KFACLinearOperator(
                wrapped, lossf, lin_params, data, fisher_type=FisherType.EMPIRICAL, kfac_approx=mode,
                separate_weight_and_bias=False,
            ) @ torch.eye(len(idx), dtype=torch.float64)  # fmt: skip
            k = fnn.fisher(net, (x, y), kind="empirical", representation="kfac", kfac_mode=mode, positions=positions)
            line += f"; empirical KFAC {mode} {rel(scale * k.to_dense()[idx[:, None], idx[None, :]], theirs):.1e}"
        print(line)


if __name__ == "__main__":
    main()
    curvlinops_rows()
