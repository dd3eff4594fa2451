"""Statistics summed over the data stream, one per representation (plain sums + example counts).

Each has ``add(engine, n)`` (called after a batch's backward) and ``finish(N)`` → a Fisher matrix
(the sums divided by their counts). ``sums()`` exposes the raw sums so that partial statistics
from several processes can be added before finishing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..matrix import EKFAC, KFAC, BlockDiagonal, Dense, Diagonal, KronBlock
from ..matrix.base import check_dense_fits
from ..matrix.layout import ParamLayout
from .engine import Engine
from .rules import LinearRule, Rule


def _zeros_like_layout(engine: Engine) -> dict[str, Tensor]:
    return {
        n: torch.zeros(s, dtype=engine.dtype, device=engine.device)
        for n, s in zip(engine.layout.names, engine.layout.shapes)
    }


class DiagStat:
    """Σₙ Σᵣ (per-example gradient)², per parameter."""

    def __init__(self, engine: Engine, rules: list[Rule] | None = None) -> None:
        self.rules = engine.rules if rules is None else rules
        self.sum = _zeros_like_layout(engine)
        self.dtype, self.device = engine.dtype, engine.device
        self.count = 0

    def add(self, engine: Engine, n: int) -> None:
        tied = [r for r in self.rules if set(r.names) & engine.tied]
        for r in self.rules:
            if r in tied or not engine.calls.get(r):
                continue
            calls = engine.calls[r]
            width = max(int(engine.layout.sizes[engine.layout.index(k)]) for k in r.names)
            for k, v in r.sq_sum(calls, engine.chunk(calls[0].grads[0].shape[0], width)).items():
                self.sum[k] += v
        if tied:
            for sl in _slices(n, engine.chunk(8, engine.layout.numel)):
                for k, v in engine.per_example(tied, sl).items():
                    self.sum[k] += (v * v).sum((0, 1))
        self.count += n

    def flat(self, layout: ParamLayout, names: list[str] | None = None) -> Tensor:
        names = list(layout.names) if names is None else names
        parts = [self.sum[k].reshape(-1) for k in names]
        if not parts:
            return torch.zeros(0, dtype=self.dtype, device=self.device)
        return torch.cat(parts) / max(self.count, 1)

    def finish(self, layout: ParamLayout) -> Diagonal:
        return Diagonal(self.flat(layout), layout)


class BlockStat:
    """Σₙ Σᵣ gₙᵣ gₙᵣᵀ restricted to each group of parameters (one group = the whole network: dense)."""

    def __init__(self, engine: Engine, groups: list[list[str]]) -> None:
        self.groups = groups
        self.index = [torch.cat([torch.arange(s.start, s.stop) for s in map(engine.layout.slice, g)]) for g in groups]
        for g, idx in zip(groups, self.index):
            check_dense_fits(len(idx), engine.dtype, f"a Fisher block over {g[0]}…")
        self.sum = [torch.zeros(len(i), len(i), dtype=engine.dtype, device=engine.device) for i in self.index]
        self.count = 0

    def add(self, engine: Engine, n: int) -> None:
        rows = next(iter(engine.calls.values()))[0].grads[0].shape[0] if engine.calls else 1
        for sl in _slices(n, engine.chunk(rows, max(len(i) for i in self.index))):
            pe = engine.per_example(engine.rules, sl)
            if not pe:
                continue
            m = next(iter(pe.values())).shape[:2]
            for j, g in enumerate(self.groups):
                cols = [
                    pe[k].reshape(*m, -1)
                    if k in pe
                    else torch.zeros(
                        *m, engine.layout.sizes[engine.layout.index(k)], dtype=engine.dtype, device=engine.device
                    )
                    for k in g
                ]
                mat = torch.cat(cols, -1).reshape(m[0] * m[1], -1)
                self.sum[j] += mat.T @ mat
        self.count += n

    def finish_dense(self, layout: ParamLayout) -> Dense:
        full = torch.zeros(layout.numel, layout.numel, dtype=self.sum[0].dtype, device=self.sum[0].device)
        idx = self.index[0]
        full[idx[:, None], idx[None, :]] = self.sum[0] / self.count
        return Dense(0.5 * (full + full.T), layout)

    def finish_blocks(self, layout: ParamLayout) -> BlockDiagonal:
        blocks = [0.5 * (s + s.T) / self.count for s in self.sum]
        return BlockDiagonal(self.groups, blocks, layout)


class KFACStat:
    """Per Kronecker layer: Σ â âᵀ (with its row count) and Σ g gᵀ; exact diagonal for the rest."""

    def __init__(self, engine: Engine, mode: str) -> None:
        self.mode = mode
        self.kron = [r for r in engine.rules if r.kronecker]
        self.rest_rules = [r for r in engine.rules if not r.kronecker]
        self.rest_names = [n for n in engine.layout.names if not any(n in r.names for r in self.kron)]
        self.diag = DiagStat(engine, self.rest_rules)
        self.a: dict[Rule, Tensor] = {}
        self.a_rows: dict[Rule, int] = {}
        self.g: dict[Rule, Tensor] = {}
        self.count = 0

    def add(self, engine: Engine, n: int) -> None:
        for r in self.kron:
            calls = engine.calls.get(r)
            if not calls:
                continue
            assert isinstance(r, LinearRule)
            a, rows = r.kfac_a(calls, self.mode)
            g = r.kfac_g(calls, self.mode)
            self.a[r] = self.a[r] + a if r in self.a else a
            self.a_rows[r] = self.a_rows.get(r, 0) + rows
            self.g[r] = self.g[r] + g if r in self.g else g
        self.diag.add(engine, n)
        self.count += n

    def factors(self) -> list[tuple[LinearRule, Tensor, Tensor]]:
        """(rule, A, G) with A = Σââᵀ/rows and G = Σggᵀ/N, so that F_layer ≈ G ⊗ A."""
        out = []
        for r in self.kron:
            assert isinstance(r, LinearRule)
            if r not in self.a:
                w = r.d_in + r.has_bias
                z = torch.zeros(w, w, dtype=self.diag.sum[r.names[0]].dtype)
                out.append((r, z, torch.zeros(r.d_out, r.d_out, dtype=z.dtype)))
                continue
            a = self.a[r] / self.a_rows[r]
            g = self.g[r] / self.count
            out.append((r, 0.5 * (a + a.T), 0.5 * (g + g.T)))
        return out

    def finish(self, layout: ParamLayout) -> KFAC:
        blocks = [
            KronBlock(r.weight_name, r.bias_name, r.d_out, r.d_in, {"A": a, "G": g})  # type: ignore[arg-type]
            for r, a, g in self.factors()
        ]
        return KFAC(blocks, self.rest_names, self.diag.flat(layout, self.rest_names), layout)


class EKFACStat:
    """Second pass of EKFAC: Σ over examples and rows of (Q_Gᵀ Ĝₙ Q_A)² per Kronecker layer."""

    def __init__(self, kfac: KFACStat) -> None:
        self.kfac = kfac
        self.bases: dict[Rule, tuple[Tensor, Tensor]] = {}
        for r, a, g in kfac.factors():
            self.bases[r] = (torch.linalg.eigh(g)[1], torch.linalg.eigh(a)[1])
        self.s: dict[Rule, Tensor] = {}
        self.count = 0

    def add(self, engine: Engine, n: int) -> None:
        for r, (qg, qa) in self.bases.items():
            calls = engine.calls.get(r)
            if not calls:
                continue
            assert isinstance(r, LinearRule)
            s = r.ekfac_s(calls, qg, qa, engine.chunk(calls[0].grads[0].shape[0], r.d_out * qa.shape[0]))
            self.s[r] = self.s[r] + s if r in self.s else s
        self.count += n

    def finish(self, layout: ParamLayout) -> EKFAC:
        blocks = []
        for r, (qg, qa) in self.bases.items():
            assert isinstance(r, LinearRule)
            s = self.s[r] / self.count if r in self.s else torch.zeros(qg.shape[0], qa.shape[0], dtype=qg.dtype)
            blocks.append(KronBlock(r.weight_name, r.bias_name, r.d_out, r.d_in, {"QA": qa, "QG": qg, "S": s}))  # type: ignore[arg-type]
        rest = self.kfac.rest_names
        return EKFAC(blocks, rest, self.kfac.diag.flat(layout, rest), layout)


def _slices(n: int, chunk: int) -> list[slice]:
    return [slice(i, i + chunk) for i in range(0, n, chunk)]


def groups_by_layer(engine: Engine) -> list[list[str]]:
    """Parameter groups for the block-diagonal Fisher: one per layer (tied parameters go to the first)."""
    seen: set[str] = set()
    groups = []
    for r in engine.rules:
        g = [n for n in r.names if n not in seen]
        seen.update(g)
        if g:
            groups.append(g)
    return groups
