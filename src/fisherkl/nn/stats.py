"""Statistics summed over the data stream, one per representation (plain sums + counts).

Each has ``setup(engine)`` (once the first batch has told which parameters each rule accounts for),
``add_rows(engine)`` (after each chunk of cotangent rows has been backpropagated: sums over rows),
``end_batch(engine, count)`` (once per batch: sums over inputs, the count) and ``finish(layout)`` → a
Fisher matrix (the sums divided by their counts, with ``n_examples`` set). ``state()`` / ``load(state)``
expose the raw sums ``{"tensors": {key: Tensor}, "counts": {key: int}}``, so that partial statistics can
be checkpointed, and added across processes before finishing
(:func:`fisherkl.nn.distributed.reduce_stat`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import FisherKLError
from ..matrix import EKFAC, KFAC, BlockDiagonal, Dense, Diagonal, KronBlock
from ..matrix.base import DenseTooLargeError, check_dense_fits, max_dense_bytes
from ..matrix.kfac import eigh_in
from ..matrix.layout import ParamLayout
from .engine import Engine
from .rules import LinearPart, PartsRule, Rule


def _zeros(engine: Engine, names: list[str]) -> dict[str, Tensor]:
    layout = engine.layout
    return {n: torch.zeros(layout.shapes[layout.index(n)], dtype=engine.dtype, device=engine.device) for n in names}


def _slices(n: int, chunk: int) -> list[slice]:
    return [slice(i, i + chunk) for i in range(0, n, chunk)]


class DiagStat:
    """Σₙ Σᵣ (per-example gradient)², for the parameters ``names`` (default: all)."""

    ready = False

    def __init__(self, engine: Engine, names: list[str] | None = None) -> None:
        self.names = list(engine.layout.names) if names is None else list(names)
        self.sum = _zeros(engine, self.names)
        self.dtype, self.device = engine.dtype, engine.device
        self.count = 0
        self.pending: dict[LinearPart, tuple[Rule, Tensor]] = {}  # Σᵣ g² of deferred maps (see _defer)

    def setup(self, engine: Engine) -> None:
        want = set(self.names)
        self.rules = [r for r in engine.active_rules if want & set(r.names)]
        shared = engine.tied
        self.separate = [r for r in self.rules if not set(r.names) & shared]
        self.joint = [r for r in self.rules if set(r.names) & shared]
        self.ready = True

    def streams(self, engine: Engine, rule: Rule) -> bool:
        """A rule's squared sums can be taken alone unless it shares a parameter with another rule."""
        return rule not in self.joint

    def add_rows(self, engine: Engine, rules: list[Rule] | None = None) -> None:
        want = set(self.names)
        for r in self.separate:
            if rules is not None and r not in rules:
                continue
            calls = engine.calls.get(r)
            if not calls:
                continue
            if self._defer(r, calls):
                continue
            width = max(engine.layout.sizes[engine.layout.index(k)] for k in r.names) if r.names else 1
            for k, v in r.sq_sum(calls, engine.chunk(calls[0].n_rows, width)).items():
                if k in want and k in r.names:
                    self.sum[k] += v
        if self.joint and (rules is None or any(r in rules for r in self.joint)):
            n = next((c.n for r in self.joint for c in engine.calls.get(r, [])), 0)
            for sl in _slices(n, engine.chunk(8, engine.layout.numel)):
                for k, v in engine.per_example(self.joint, sl).items():
                    if k in want:
                        self.sum[k] += (v * v).sum((0, 1))

    def _defer(self, r: Rule, calls: list[Any]) -> bool:
        """Linear maps at one position (:meth:`LinearPart.one_position`): only Σᵣ gₙᵣ² ``[n, d_out]`` is kept per
        row and the product with â² is taken once per batch (in :meth:`add_inputs`), not once per row. Returns
        whether rule ``r`` was handled so."""
        if not isinstance(r, PartsRule) or not r.parts or not all(p.one_position(calls) for p in r.parts):
            return False
        for p in r.parts:
            g2 = p.g_sq(calls)
            self.pending[p] = (r, self.pending[p][1] + g2) if p in self.pending else (r, g2)
        return True

    def add_inputs(self, engine: Engine, rules: list[Rule] | None = None) -> None:
        """The deferred squared sums (:meth:`_defer`) of the rules' maps, from their recorded inputs."""
        want = set(self.names)
        for p, (r, g2) in list(self.pending.items()):
            if rules is not None and r not in rules:
                continue
            out: dict[str, Tensor] = {}
            p.place(out, *p.sq_sum_of(engine.calls.get(r) or [], g2))
            for k, v in out.items():
                if k in want and k in r.names:
                    self.sum[k] += v
            del self.pending[p]

    def end_batch(self, engine: Engine, count: int) -> None:
        self.count += count

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

    ready = False

    def __init__(self, engine: Engine, groups: list[list[str]]) -> None:
        self.groups = groups
        self.index = [torch.cat([torch.arange(s.start, s.stop) for s in map(engine.layout.slice, g)]) for g in groups]
        for g, idx in zip(groups, self.index):
            check_dense_fits(len(idx), engine.dtype, f"a Fisher block over {g[0]}…")
        self.sum = [torch.zeros(len(i), len(i), dtype=engine.dtype, device=engine.device) for i in self.index]
        self.count = 0

    def setup(self, engine: Engine) -> None:
        self.ready = True

    def add_rows(self, engine: Engine, rules: list[Rule] | None = None) -> None:
        """All rules at once (blocks couple the layers; nothing is streamed)."""
        if rules is not None and not rules:
            return
        # Linear layers without weight sharing: the Kronecker-structured Gram, n·p² instead of n·R·p²
        grams = [kron_gram(engine, g) for g in self.groups]
        if all(k is not None for k in grams):
            for j, k in enumerate(grams):
                self.sum[j] += k
            return
        calls = [c for cs in engine.calls.values() for c in cs]
        if not calls:
            return
        rows, n = calls[0].n_rows, calls[0].n
        for sl in _slices(n, engine.chunk(rows, max(len(i) for i in self.index))):
            pe = engine.per_example(engine.active_rules, sl)
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

    def end_batch(self, engine: Engine, count: int) -> None:
        self.count += count

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


def kron_gram(engine: Engine, names: list[str]) -> Tensor | None:
    """Σₙ Σᵣ gₙᵣ gₙᵣᵀ over the parameters ``names`` (flat, in that order) for the current row chunk, by the
    Kronecker structure of linear maps without weight sharing: for maps k, l the block is
    Σₙ (Σᵣ gₙᵣᵏ gₙᵣˡᵀ) ⊗ (âₙᵏ âₙˡᵀ), n·p² work instead of n·R·p² through per-example gradients.

    Returns None (use per-example gradients) unless ``names`` are exactly the weight-then-bias parameters
    of whole linear maps (no rows, not transposed, dense inputs) at one position, each called once per batch
    and not tied.
    """
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    covered: list[str] = []
    for r in engine.active_rules:
        if not set(r.names) & set(names):
            continue
        calls = engine.calls.get(r) or []
        if len(r.parts) != 1 or len(calls) != 1 or set(r.names) & engine.tied:
            return None
        p: LinearPart = r.parts[0]
        own = [k for k in (p.weight, p.bias) if k is not None]
        if own != r.names or p.rows is not None or p.transposed or p.index_input:
            return None
        at = p.at(calls)
        if at.shape[-1] != 1:
            return None
        a = at[..., 0]
        if p.has_bias:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
        w = a.shape[1]
        idx = torch.arange(p.d_out * w, device=a.device).reshape(p.d_out, w)
        order = torch.cat([idx[:, : p.d_in].reshape(-1), idx[:, p.d_in :].reshape(-1)])  # weight, then bias
        parts.append((a, p.gt(calls)[..., 0].permute(1, 2, 0), order))  # â [n, w], g [n, d_out, R]
        covered += own
    if covered != list(names):
        return None
    size = sum(len(o) for _, _, o in parts)
    out = torch.empty(size, size, dtype=parts[0][0].dtype, device=parts[0][0].device)
    starts = [0]
    for _, _, o in parts:
        starts.append(starts[-1] + len(o))
    n = parts[0][0].shape[0]
    for i, (ai, gi, oi) in enumerate(parts):
        for j in range(i, len(parts)):
            aj, gj, oj = parts[j]
            di, dj, wi, wj = gi.shape[1], gj.shape[1], ai.shape[1], aj.shape[1]
            k = torch.zeros(di * dj, wi * wj, dtype=out.dtype, device=out.device)
            step = engine.chunk(1, max(di * dj, wi * wj))
            for s in range(0, n, step):
                gg = torch.bmm(gi[s : s + step], gj[s : s + step].transpose(1, 2)).reshape(-1, di * dj)
                aa = (ai[s : s + step, :, None] * aj[s : s + step, None, :]).reshape(-1, wi * wj)
                k += gg.T @ aa
            k = k.reshape(di, dj, wi, wj).permute(0, 2, 1, 3).reshape(di * wi, dj * wj)[oi][:, oj]
            out[starts[i] : starts[i + 1], starts[j] : starts[j + 1]] = k
            if j != i:
                out[starts[j] : starts[j + 1], starts[i] : starts[i + 1]] = k.T
    return out


class KFACStat:
    """Per linear map with Kronecker factors: Σ â âᵀ (with its row count) and Σ g gᵀ; exact diagonal for
    every other parameter."""

    ready = False

    def __init__(self, engine: Engine, mode: str) -> None:
        self.mode = mode
        self.engine = engine
        # factors of a bf16 / fp16 network (float32 statistics) are eigendecomposed in float64
        self.eigh_dtype = torch.float64 if engine.net_dtype in (torch.bfloat16, torch.float16) else None
        self.kron: list[tuple[Rule, LinearPart]] = []
        self.rest_names: list[str] = list(engine.layout.names)
        self.diag = DiagStat(engine, self.rest_names)
        self.a: dict[LinearPart, Tensor] = {}
        self.a_rows: dict[LinearPart, int] = {}
        self.g: dict[LinearPart, Tensor] = {}
        self.count = 0
        self._structured = False

    def structure(self, engine: Engine) -> None:
        """The Kronecker maps and the rest, as the engine knows them now."""
        self.kron = engine.kron_parts()
        inside = {k for _, p in self.kron for k in (p.weight, p.bias) if k is not None}
        self.rest_names = [n for n in engine.layout.names if n not in inside]
        old = self.diag
        self.diag = DiagStat(engine, self.rest_names)
        self.diag.count = old.count
        for k in self.rest_names:
            if k in old.sum:
                self.diag.sum[k] = old.sum[k]

    def setup(self, engine: Engine) -> None:
        self.structure(engine)
        size = torch.empty((), dtype=engine.dtype).element_size()
        need = sum((p.d_out**2 + (p.width if p.index_input else p.width**2)) * size for _, p in self.kron)
        if need > max_dense_bytes():
            big = max(self.kron, key=lambda rp: rp[1].d_out ** 2 + rp[1].width ** 2)[1]
            raise DenseTooLargeError(
                f"KFAC: the Kronecker factors need {need / 1024**2:.1f} MiB, over the limit of "
                f"{max_dense_bytes() / 1024**2:.1f} MiB (fisherkl.matrix.set_max_dense_bytes); the largest is "
                f"{big.weight}'s (G {big.d_out}×{big.d_out}, A {big.width}×{big.width}). Options: "
                "representation='diag' or 'implicit', or freeze that layer (requires_grad_(False)); "
                "fisherkl.nn.plan(net, batch) lists every layer's size"
            )
        self.diag.setup(engine)
        self.ready = True

    def streams(self, engine: Engine, rule: Rule) -> bool:
        return self.diag.streams(engine, rule)

    def add_rows(self, engine: Engine, rules: list[Rule] | None = None) -> None:
        for r, p in self.kron:
            if rules is not None and r not in rules:
                continue
            calls = engine.calls.get(r)
            if not calls:
                continue
            g = p.kfac_g(calls, self.mode)
            self.g[p] = self.g[p] + g if p in self.g else g
        self.diag.add_rows(engine, rules)

    def add_inputs(self, engine: Engine, rules: list[Rule] | None = None) -> None:
        """The A factors of the rules' maps (once per batch, from the recorded inputs)."""
        self.diag.add_inputs(engine, rules)
        for r, p in self.kron:
            if rules is not None and r not in rules:
                continue
            calls = engine.calls.get(r)
            if not calls:
                continue
            a, rows = p.kfac_a(calls, self.mode)
            self.a[p] = self.a[p] + a if p in self.a else a
            self.a_rows[p] = self.a_rows.get(p, 0) + rows

    def end_batch(self, engine: Engine, count: int) -> None:
        self.diag.end_batch(engine, count)
        self.count += count

    def factors(self) -> list[tuple[LinearPart, Tensor, Tensor]]:
        """(part, A, G) with A = Σââᵀ/rows (a diagonal ``[width]`` for one-hot inputs) and G = Σggᵀ/N, so that
        the map's Fisher ≈ G ⊗ A."""
        out = []
        for _, p in self.kron:
            if p not in self.a or p not in self.g:
                dtype = self.diag.dtype
                a = torch.zeros(p.width, dtype=dtype) if p.index_input else torch.zeros(p.width, p.width, dtype=dtype)
                out.append((p, a, torch.zeros(p.d_out, p.d_out, dtype=dtype)))
                continue
            a = self.a[p] / max(self.a_rows[p], 1)
            g = self.g[p] / max(self.count, 1)
            out.append((p, a if a.ndim == 1 else 0.5 * (a + a.T), 0.5 * (g + g.T)))
        return out

    def finish(self, layout: ParamLayout) -> KFAC:
        blocks = [block_of(p, {"A": a, "G": g}) for p, a, g in self.factors()]
        out = KFAC(blocks, self.rest_names, self.diag.flat(layout, self.rest_names), layout)
        out.eigh_dtype = self.eigh_dtype
        out.n_examples = self.count
        out.row_counts = {b.key: int(self.a_rows.get(p, 0)) for b, (_, p) in zip(blocks, self.kron)}
        return out

    def _materialise(self) -> None:
        """Zero sums for maps not seen yet, so that every rank / checkpoint holds the same tensors."""
        dtype, device = self.diag.dtype, self.diag.device
        for _, p in self.kron:
            if p not in self.a:
                shape = (p.width,) if p.index_input else (p.width, p.width)
                self.a[p] = torch.zeros(shape, dtype=dtype, device=device)
                self.a_rows[p] = 0
            if p not in self.g:
                self.g[p] = torch.zeros(p.d_out, p.d_out, dtype=dtype, device=device)

    def state(self) -> dict[str, Any]:
        if not self.ready:
            self.setup(self.engine)
        self._materialise()
        d = self.diag.state()
        tensors = {f"diag/{k}": v for k, v in d["tensors"].items()}
        counts = {"count": self.count, **{f"diag/{k}": v for k, v in d["counts"].items()}}
        for i, (_, p) in enumerate(self.kron):
            tensors[f"a/{i}"], tensors[f"g/{i}"] = self.a[p], self.g[p]
            counts[f"rows/{i}"] = self.a_rows[p]
        return {"tensors": tensors, "counts": counts}

    def load(self, state: dict[str, Any]) -> None:
        t = _checked(self.state(), state)
        self.diag.load(
            {
                "tensors": {k[5:]: v for k, v in t["tensors"].items() if k.startswith("diag/")},
                "counts": {k[5:]: v for k, v in t["counts"].items() if k.startswith("diag/")},
            }
        )
        for i, (_, p) in enumerate(self.kron):
            self.a[p], self.g[p] = t["tensors"][f"a/{i}"], t["tensors"][f"g/{i}"]
            self.a_rows[p] = int(t["counts"][f"rows/{i}"])
        self.count = int(t["counts"]["count"])


def block_of(p: LinearPart, tensors: dict[str, Tensor]) -> KronBlock:
    """The matrix block of a linear map."""
    assert p.weight is not None
    same = p.bias_rows == p.rows and p.bias_len == (p.shape[1] if p.transposed else p.shape[0])
    return KronBlock(
        p.weight,
        p.bias,
        p.d_out,
        p.d_in,
        tensors,
        rows=p.rows,
        transposed=p.transposed,
        bias_rows=None if same or p.bias is None else p.bias_rows,
        bias_len=None if same or p.bias is None else p.bias_len,
    )


class EKFACStat:
    """Second pass of EKFAC: Σ over examples and rows of (Q_Gᵀ Ĝₙ Q_A)² per Kronecker map."""

    ready = True

    def __init__(
        self,
        kfac: KFACStat,
        bases: dict[LinearPart, tuple[Tensor, Tensor | None]] | None = None,
        eigh_dtype: torch.dtype | None = None,
    ) -> None:
        self.kfac = kfac
        self.bases: dict[LinearPart, tuple[Tensor, Tensor | None]] = {}
        for p, a, g in kfac.factors():
            qa = None if a.ndim == 1 else eigh_in(a, eigh_dtype)[1]
            self.bases[p] = (eigh_in(g, eigh_dtype)[1], qa) if bases is None else bases[p]
        self.s: dict[LinearPart, Tensor] = {}
        self.count = 0

    def streams(self, engine: Engine, rule: Rule) -> bool:
        return True

    def add_rows(self, engine: Engine, rules: list[Rule] | None = None) -> None:
        for r, p in self.kfac.kron:
            if rules is not None and r not in rules:
                continue
            qg, qa = self.bases[p]
            calls = engine.calls.get(r)
            if not calls:
                continue
            s = p.ekfac_s(calls, qg, qa, engine.chunk(calls[0].n_rows, p.d_out * p.width))
            self.s[p] = self.s[p] + s if p in self.s else s

    def end_batch(self, engine: Engine, count: int) -> None:
        self.count += count

    def finish(self, layout: ParamLayout) -> EKFAC:
        blocks = []
        for p, (qg, qa) in self.bases.items():
            s = self.s[p] / self.count if p in self.s else torch.zeros(qg.shape[0], p.width, dtype=qg.dtype)
            tensors = {"QG": qg, "S": s} if qa is None else {"QA": qa, "QG": qg, "S": s}
            blocks.append(block_of(p, tensors))
        rest = self.kfac.rest_names
        out = EKFAC(blocks, rest, self.kfac.diag.flat(layout, rest), layout)
        out.n_examples = self.count
        return out

    def state(self) -> dict[str, Any]:
        for p, (qg, _) in self.bases.items():
            if p not in self.s:
                self.s[p] = torch.zeros(qg.shape[0], p.width, dtype=qg.dtype, device=qg.device)
        tensors = {f"s/{i}": self.s[p] for i, p in enumerate(self.bases)}
        fixed = {f"qg/{i}": q[0] for i, q in enumerate(self.bases.values())}
        fixed.update({f"qa/{i}": q[1] for i, q in enumerate(self.bases.values()) if q[1] is not None})
        return {"tensors": tensors, "counts": {"count": self.count}, "fixed": fixed}

    def load(self, state: dict[str, Any]) -> None:
        t = _checked(self.state(), state)
        for i, p in enumerate(list(self.bases)):
            self.s[p] = t["tensors"][f"s/{i}"]
            self.bases[p] = (t["fixed"][f"qg/{i}"], t["fixed"].get(f"qa/{i}"))
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


def groups_by_layer(engine: Engine) -> list[list[str]]:
    """Parameter groups for the block-diagonal Fisher: one per layer (tied parameters go to the first)."""
    seen: set[str] = set()
    groups = []
    for r in engine.rules:
        g = [n for n in r.names if n not in seen]
        seen.update(g)
        if g:
            groups.append(g)
    rest = [n for n in engine.layout.names if n not in seen]
    if rest:
        groups.append(rest)
    return groups


__all__ = ["BlockStat", "DiagStat", "EKFACStat", "KFACStat", "block_of", "groups_by_layer", "kron_gram"]
