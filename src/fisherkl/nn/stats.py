"""Statistics summed over the data stream, one per representation (plain sums + example counts).

Each has ``add(engine, n)`` (called after a batch's backward) and ``finish(layout)`` → a Fisher
matrix (the sums divided by their counts, with ``n_examples`` set). ``state()`` /
``load(state)`` expose the raw sums ``{"tensors": {key: Tensor}, "counts": {key: int}}``, so that
partial statistics can be checkpointed, and added across processes before finishing
(:func:`fisherkl.nn.distributed.reduce_stat`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import FisherKLError
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
        out = Diagonal(self.flat(layout), layout)
        out.n_examples = self.count
        return out

    def state(self) -> dict[str, Any]:
        return {"tensors": {f"sum/{k}": v for k, v in self.sum.items()}, "counts": {"count": self.count}}

    def load(self, state: dict[str, Any]) -> None:
        t = _checked(self.state(), state)
        self.sum = {k: t["tensors"][f"sum/{k}"] for k in self.sum}
        self.count = int(t["counts"]["count"])


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
        # Linear layers without weight sharing: the Kronecker-structured Gram, n·p² instead of n·R·p²
        grams = [engine.kron_gram(g) for g in self.groups]
        if all(k is not None for k in grams):
            for j, k in enumerate(grams):
                self.sum[j] += k
            self.count += n
            return
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
        full[idx[:, None], idx[None, :]] = self.sum[0] / max(self.count, 1)
        out = Dense(0.5 * (full + full.T), layout)
        out.n_examples = self.count
        return out

    def finish_blocks(self, layout: ParamLayout) -> BlockDiagonal:
        blocks = [0.5 * (s + s.T) / max(self.count, 1) for s in self.sum]
        out = BlockDiagonal(self.groups, blocks, layout)
        out.n_examples = self.count
        return out

    def state(self) -> dict[str, Any]:
        return {"tensors": {f"sum/{j}": v for j, v in enumerate(self.sum)}, "counts": {"count": self.count}}

    def load(self, state: dict[str, Any]) -> None:
        t = _checked(self.state(), state)
        self.sum = [t["tensors"][f"sum/{j}"] for j in range(len(self.sum))]
        self.count = int(t["counts"]["count"])


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
            a = self.a[r] / max(self.a_rows[r], 1)
            g = self.g[r] / max(self.count, 1)
            out.append((r, 0.5 * (a + a.T), 0.5 * (g + g.T)))
        return out

    def finish(self, layout: ParamLayout) -> KFAC:
        blocks = [
            KronBlock(r.weight_name, r.bias_name, r.d_out, r.d_in, {"A": a, "G": g})  # type: ignore[arg-type]
            for r, a, g in self.factors()
        ]
        out = KFAC(blocks, self.rest_names, self.diag.flat(layout, self.rest_names), layout)
        out.n_examples = self.count
        out.row_counts = {str(r.weight_name): int(self.a_rows.get(r, 0)) for r in self.kron}  # type: ignore[attr-defined]
        return out

    def _materialise(self) -> None:
        """Zero sums for layers not seen yet, so that every rank / checkpoint holds the same tensors."""
        for r in self.kron:
            assert isinstance(r, LinearRule)
            if r not in self.a:
                dtype = self.diag.dtype
                w = r.d_in + r.has_bias
                self.a[r] = torch.zeros(w, w, dtype=dtype, device=self.diag.device)
                self.g[r] = torch.zeros(r.d_out, r.d_out, dtype=dtype, device=self.diag.device)
                self.a_rows[r] = 0

    def state(self) -> dict[str, Any]:
        self._materialise()
        d = self.diag.state()
        tensors = {f"diag/{k}": v for k, v in d["tensors"].items()}
        counts = {"count": self.count, **{f"diag/{k}": v for k, v in d["counts"].items()}}
        for i, r in enumerate(self.kron):
            tensors[f"a/{i}"], tensors[f"g/{i}"] = self.a[r], self.g[r]
            counts[f"rows/{i}"] = self.a_rows[r]
        return {"tensors": tensors, "counts": counts}

    def load(self, state: dict[str, Any]) -> None:
        t = _checked(self.state(), state)
        self.diag.load(
            {
                "tensors": {k[5:]: v for k, v in t["tensors"].items() if k.startswith("diag/")},
                "counts": {k[5:]: v for k, v in t["counts"].items() if k.startswith("diag/")},
            }
        )
        for i, r in enumerate(self.kron):
            self.a[r], self.g[r] = t["tensors"][f"a/{i}"], t["tensors"][f"g/{i}"]
            self.a_rows[r] = int(t["counts"][f"rows/{i}"])
        self.count = int(t["counts"]["count"])


class EKFACStat:
    """Second pass of EKFAC: Σ over examples and rows of (Q_Gᵀ Ĝₙ Q_A)² per Kronecker layer."""

    def __init__(self, kfac: KFACStat, bases: dict[Rule, tuple[Tensor, Tensor]] | None = None) -> None:
        self.kfac = kfac
        self.bases: dict[Rule, tuple[Tensor, Tensor]] = {}
        for r, a, g in kfac.factors():
            self.bases[r] = (torch.linalg.eigh(g)[1], torch.linalg.eigh(a)[1]) if bases is None else bases[r]
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
        out = EKFAC(blocks, rest, self.kfac.diag.flat(layout, rest), layout)
        out.n_examples = self.count
        return out

    def state(self) -> dict[str, Any]:
        for r, (qg, qa) in self.bases.items():
            if r not in self.s:
                self.s[r] = torch.zeros(qg.shape[0], qa.shape[0], dtype=qg.dtype, device=qg.device)
        tensors = {f"s/{i}": self.s[r] for i, r in enumerate(self.bases)}
        fixed = {f"qg/{i}": q[0] for i, q in enumerate(self.bases.values())}
        fixed.update({f"qa/{i}": q[1] for i, q in enumerate(self.bases.values())})
        return {"tensors": tensors, "counts": {"count": self.count}, "fixed": fixed}

    def load(self, state: dict[str, Any]) -> None:
        t = _checked(self.state(), state)
        for i, r in enumerate(list(self.bases)):
            self.s[r] = t["tensors"][f"s/{i}"]
            self.bases[r] = (t["fixed"][f"qg/{i}"], t["fixed"][f"qa/{i}"])
        self.count = int(t["counts"]["count"])


def _checked(want: dict[str, Any], got: Any) -> dict[str, Any]:
    """``got`` if it holds the same keys and tensor shapes as ``want`` (saved statistics must fit);
    ``"tensors"`` are sums (added across ranks), ``"fixed"`` tensors are not, ``"counts"`` are ints."""
    if not isinstance(got, dict):
        raise FisherKLError(f"saved statistics must be a dict, got {type(got).__name__}")
    out: dict[str, Any] = {}
    for part in ("tensors", "fixed"):
        w, g = want.get(part, {}), got.get(part, {})
        if set(w) != set(g):
            raise FisherKLError(
                f"saved statistics do not match this network and representation: {part} "
                f"{sorted(set(g) - set(w))} unexpected, {sorted(set(w) - set(g))} missing"
            )
        for k, v in w.items():
            if not isinstance(g[k], Tensor) or tuple(g[k].shape) != tuple(v.shape):
                shape = tuple(g[k].shape) if isinstance(g[k], Tensor) else type(g[k]).__name__
                raise FisherKLError(f"saved statistic {k!r} has shape {shape}; this network needs {tuple(v.shape)}")
        out[part] = {k: g[k].to(dtype=w[k].dtype, device=w[k].device) for k in w}
    if set(got.get("counts", {})) != set(want["counts"]):
        raise FisherKLError("saved statistics do not match this network and representation (different counts)")
    out["counts"] = {k: int(v) for k, v in got["counts"].items()}
    return out


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
