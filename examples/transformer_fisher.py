"""How well do KFAC, EKFAC and the diagonal predict the KL of a small GPT's steps?

Generates a text corpus locally (sentences from a small random grammar, characters as tokens), trains a
nanoGPT-style decoder on it with Adam — token and position embeddings, ``nn.TransformerEncoderLayer``
blocks with a causal mask, an output head tied to the token embedding — then runs
``fisherkl.nn.approximation_report``: the predicted KL ½δᵀFδ of each representation against the exact
mean KL of the next-token distributions (summed over positions, averaged over sequences), for random,
gradient, natural-gradient and Adam-step directions.

    python examples/transformer_fisher.py [--steps 300] [--kind exact|mc] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

import fisherkl.nn as fnn

SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the old man", "a child"]
VERBS = ["sees", "likes", "follows", "paints", "finds", "hears"]
OBJECTS = ["the moon", "a red ball", "the river", "some bread", "the garden", "a song"]
ENDINGS = [".", " today.", " again.", " at night."]


def corpus(n_sentences: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
        for _ in range(n_sentences)
    )


class GPT(nn.Module):
    """Token + position embeddings, pre-norm transformer blocks with a causal mask, a tied output head."""

    def __init__(self, vocab: int, d: int = 32, context: int = 32, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.ln = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype, device=h.device)
        for block in self.blocks:
            h = block(h, src_mask=mask, is_causal=True)
        return F.linear(self.ln(h), self.tok.weight)  # [n, T, V]


def windows(ids: torch.Tensor, context: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    start = torch.randint(0, ids.numel() - context - 1, (n,), generator=gen)
    x = torch.stack([ids[s : s + context] for s in start.tolist()])
    y = torch.stack([ids[s + 1 : s + context + 1] for s in start.tolist()])
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of training")
    ap.add_argument("--kind", default="exact", choices=["exact", "mc"], help="Fisher kind of the representations")
    ap.add_argument("--sequences", type=int, default=64, help="sequences the Fisher and the KL are taken on")
    ap.add_argument("--quick", action="store_true", help="a small run (a smoke test)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()

    text = corpus(400 if args.quick else 4000)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    context = 12 if args.quick else 32
    net = GPT(len(chars), d=16 if args.quick else 32, context=context, layers=1 if args.quick else 2)
    steps = 30 if args.quick else args.steps
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = windows(ids, context, 32, gen)
        loss = F.cross_entropy(net(x).transpose(1, 2), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss/token {loss.item():.3f}")
    p = sum(q.numel() for q in net.parameters())
    took = time.perf_counter() - t0
    print(f"trained a {p}-parameter GPT on {len(text)} characters (a vocabulary of {len(chars)}) in {took:.1f}s\n")

    n = 8 if args.quick else args.sequences
    data = windows(ids, context, n, torch.Generator().manual_seed(2))
    t1 = time.perf_counter()
    report = fnn.approximation_report(
        net.eval(),
        data,
        "categorical",
        representations=("diag", "kfac", "ekfac"),
        directions=("random", "gradient", "natural", "adam_step"),
        step_sizes=(1e-4, 1e-3, 1e-2) if args.quick else (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
        kind="mc" if args.quick else args.kind,
        batch_size=64,
    )
    print(report)
    print(f"\nreport: {time.perf_counter() - t1:.1f}s on {n} sequences of {context} tokens")


if __name__ == "__main__":
    main()
