"""The network Fisher against brute force on sequence and transformer models, as a table.

For each model of tests/seq_models.py (and GPT-2 / BERT from ``transformers`` when installed): the number
of parameters, and the largest relative deviation max|ours − ref| / max|ref| of the dense Fisher, its
diagonal, its per-layer blocks and a matrix-free product from the brute-force reference (per-example
Jacobians one output entry at a time, tests/nn_reference.py); then curvlinops' GGN on the tied-head-free
GPT. float64.

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


if __name__ == "__main__":
    main()
