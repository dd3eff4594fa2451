"""Linear maps shared over positions, the building block of most rules, and the rule for ``nn.Linear``.

A :class:`LinearPart` is one map yₜ = W âₜ (â = [a; 1] with a bias) applied at T positions t of each
example, inside a call of some module: ``nn.Linear`` on ``[n, *, d_in]``, the projections of attention,
a convolution after unfolding (one part per group), an embedding (a one-hot input), HuggingFace's
``Conv1D``. The per-example gradient of Ŵ = [W | b] is Σₜ gₜ âₜᵀ; Kronecker factors are sums of
â âᵀ and g gᵀ. Everything is computed from two views of a call, never copied without need:
inputs aᵀ ``[n, d_in, T]`` (or token indices ``[n, T]`` for a one-hot input) and output gradients
gᵀ ``[R, n, d_out, T]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .base import Call, Rule, register

ALL = slice(None)
CHUNK_BYTES = 8 * 1024**2  # inputs of one chunk of examples (convolutions unfold them; see engine.CHUNK_BYTES)
# per-example products [k, d_out, d_in] squared and summed in sub-chunks written into one reused buffer of this
# size: a fresh allocation per chunk page-faults on every first touch (the ResNet's 128-channel convolutions:
# 93 ms per row and layer with fresh outputs, 23 ms with the reused buffer)
PRODUCT_BYTES = 8 * 1024**2


class LinearPart:
    """One weight-sharing linear map inside a rule's calls (see the module doc).

    ``weight`` / ``bias``: layout names (``weight`` None when the weight is frozen: no Kronecker factors);
    ``shape``: the stored weight's shape; the map uses rows ``rows`` (a range along d_out, or None for all)
    of the weight read as ``[d_out, d_in]`` (``[d_in, d_out]`` when ``transposed``: embeddings,
    HuggingFace Conv1D). ``a_of(call, sl)`` → aᵀ ``[m, d_in, T]`` of the examples ``sl`` (indices ``[m, T]``
    when ``index_input``; convolutions unfold only those examples, so memory stays bounded);
    ``g_of(call, grad)`` maps gradients of the call's output ``out`` (``[R, n, *]``, batch first) to gᵀ
    ``[R, n, d_out, T]``. The bias uses entries ``bias_rows`` of a bias of length ``bias_len`` (default: the
    weight's rows). ``weight_pe(call, gᵀ, sl)``, when given, computes per-example weight gradients directly
    (or returns None where unfolding is faster).
    """

    def __init__(
        self,
        weight: str | None,
        bias: str | None,
        shape: tuple[int, ...],
        d_out: int,
        d_in: int,
        a_of: Callable[[Call, slice], Tensor],
        g_of: Callable[[Call, Tensor], Tensor],
        out: int | slice = 0,
        rows: tuple[int, int] | None = None,
        transposed: bool = False,
        index_input: bool = False,
        bias_rows: tuple[int, int] | None = None,
        bias_len: int | None = None,
        role: Any = None,
        weight_pe: Callable[[Call, Tensor, slice], Tensor | None] | None = None,
    ) -> None:
        self.weight, self.bias, self.shape = weight, bias, tuple(shape)
        self.d_out, self.d_in = d_out, d_in
        self.a_of, self.g_of, self.out = a_of, g_of, out
        self.rows, self.transposed, self.index_input = rows, transposed, index_input
        total = self.shape[1] if transposed else self.shape[0]  # the stored weight's rows along d_out
        self.bias_rows = rows if bias_rows is None else bias_rows
        self.bias_len = total if bias_len is None else bias_len
        self.role = role  # calls with cache["role"] == role are this map's (None: every call of the rule)
        # per-example weight gradients [m, d_out, d_in] of examples sl from gᵀ [m, d_out, T] without aᵀ (a
        # convolution's own backward kernel); None from it means: unfold instead
        self.weight_pe = weight_pe

    @property
    def has_bias(self) -> bool:
        return self.bias is not None

    @property
    def width(self) -> int:
        """d_in + 1 with a bias, else d_in: the size of A."""
        return self.d_in + self.has_bias

    def __repr__(self) -> str:
        rows = "" if self.rows is None else f" rows {self.rows[0]}:{self.rows[1]}"
        return f"LinearPart({self.weight}{rows}, [{self.d_out}, {self.d_in}])"

    # --- views -------------------------------------------------------------------------------------------
    def mine(self, calls: list[Call]) -> list[Call]:
        """The calls this map reads (a rule with several maps over different calls tags them with a role)."""
        return calls if self.role is None else [c for c in calls if c.cache.get("role") == self.role]

    def at(self, calls: list[Call], sl: slice = ALL) -> Tensor:
        """aᵀ ``[m, d_in, T]`` (indices ``[m, T]``) of the examples ``sl``, positions of all calls concatenated."""
        parts = [self.a_of(c, sl) for c in self.mine(calls)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def chunks(self, calls: list[Call], limit: int | None = None) -> list[slice]:
        """Example slices whose inputs aᵀ stay under ``CHUNK_BYTES`` (and ``limit`` examples)."""
        calls = self.mine(calls)
        n = calls[0].n
        key = f"chunk:{id(self)}"
        if key not in calls[0].cache:
            one = self.at(calls, slice(0, 1))
            calls[0].cache[key] = max(1, CHUNK_BYTES // max(1, one.numel() * one.element_size()))
        step = calls[0].cache[key] if limit is None else max(1, min(limit, calls[0].cache[key]))
        if step >= n:
            return [ALL]
        return [slice(i, min(n, i + step)) for i in range(0, n, step)]

    def gt(self, calls: list[Call]) -> Tensor:
        """gᵀ ``[R, n, d_out, T]``, positions of all calls concatenated."""
        parts = [self.g_of(c, c.grads[self.out]) for c in self.mine(calls)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def gt_row(self, call: Call, r: int) -> Tensor:
        """gᵀ ``[n, d_out, T]`` of cotangent row r of one call (no stacking)."""
        if isinstance(self.out, slice):  # one output per position (a recurrent step)
            return self.g_of(call, [rows[r].unsqueeze(0) for rows in call.rows[self.out]])[0]
        return self.g_of(call, call.rows[self.out][r].unsqueeze(0))[0]

    # --- assembling parameter-shaped results ------------------------------------------------------------
    def place(self, out: dict[str, Tensor], w: Tensor | None, b: Tensor | None) -> None:
        """Add this map's weight part ``[..., d_out, d_in]`` and bias part ``[..., d_out]`` into ``out``
        (parameter-shaped, rows in place; a summand when several maps share a parameter)."""
        total = self.shape[1] if self.transposed else self.shape[0]  # the stored weight's rows along d_out
        if self.weight is not None and w is not None:
            lead = w.shape[:-2]
            if self.rows is not None:
                full = w.new_zeros(*lead, total, self.d_in)
                full[..., self.rows[0] : self.rows[1], :] = w
                w = full
            if self.transposed:
                w = w.transpose(-1, -2)
            piece = w.reshape(*lead, *self.shape)
            out[self.weight] = out[self.weight] + piece if self.weight in out else piece
        if self.bias is not None and b is not None:
            if self.bias_rows is not None:
                full = b.new_zeros(*b.shape[:-1], self.bias_len)
                full[..., self.bias_rows[0] : self.bias_rows[1]] = b
                b = full
            out[self.bias] = out[self.bias] + b if self.bias in out else b

    # --- per-example gradients ------------------------------------------------------------------------
    def per_example(self, calls: list[Call], sl: slice) -> tuple[Tensor, Tensor | None]:
        """(weight part ``[R, m, d_out, d_in]``, bias part ``[R, m, d_out]``) for examples ``sl``."""
        gt = self.gt(calls)[:, sl]
        b = gt.sum(-1) if self.has_bias else None
        if self.index_input:
            idx = self.at(calls, sl)  # [m, T]
            r, m = gt.shape[0], gt.shape[1]
            w = gt.new_zeros(r, m, self.d_in, self.d_out)
            w.scatter_add_(2, idx[None, :, :, None].expand(r, m, -1, self.d_out), gt.transpose(-1, -2))
            return w.transpose(-1, -2), b
        pieces = self._pieces(calls, sl)
        if len(pieces) > 1:  # unfolded inputs in chunks of examples, written into the result
            r, m = gt.shape[0], gt.shape[1]
            w = gt.new_empty(r, m, self.d_out, self.d_in)
            start = pieces[0].start
            call = self.mine(calls)[0]
            for piece in pieces:
                local = slice(piece.start - start, piece.stop - start)
                direct = [self._direct(call, gt[k, local], piece) for k in range(r)]
                if all(d is not None for d in direct):
                    for k, d in enumerate(direct):
                        w[k, local] = d
                    continue
                at = self.at(calls, piece)
                for k in range(r):
                    torch.bmm(gt[k, local], at.transpose(1, 2), out=w[k, local])
            return w, b
        at = self.at(calls, sl)
        if at.shape[-1] == 1:  # outer products, all rows at once
            w = gt * at.transpose(1, 2).unsqueeze(0)
        elif gt.shape[0] == 1:
            w = _weight_pe(gt[0], at).unsqueeze(0)
        else:
            w = torch.stack([_weight_pe(gt[r], at) for r in range(gt.shape[0])])
        return w, b

    def _pieces(self, calls: list[Call], sl: slice) -> list[slice]:
        """The examples ``sl`` in chunks whose inputs aᵀ stay under ``CHUNK_BYTES`` (unfolded convolutions are
        computed chunk by chunk)."""
        own = self.mine(calls)
        if len(own) != 1 or self.index_input:
            return [sl]
        n = own[0].n
        start, stop, _ = sl.indices(n)
        step = self.chunks(calls)[0]
        size = n if step == ALL else step.stop - step.start
        if size >= stop - start:
            return [slice(start, stop)]
        return [slice(i, min(stop, i + size)) for i in range(start, stop, size)]

    def row_views(self, calls: list[Call]) -> list[Tensor]:
        """gᵀ ``[n, d_out, T]`` for each cotangent row, without stacking the rows (views of the backward's
        results when the map has one call)."""
        own = self.mine(calls)
        if len(own) == 1:
            return [self.gt_row(own[0], r) for r in range(own[0].n_rows)]
        return list(self.gt(calls).unbind(0))

    def sq_sum(self, calls: list[Call], chunk: int) -> tuple[Tensor, Tensor | None]:
        """Σ over rows and examples of squared per-example gradients: (``[d_out, d_in]``, ``[d_out]``), row by
        row (no stacked copy of the rows' gradients)."""
        if self.index_input:
            gt = self.gt(calls)
            sb = gt.sum(-1).square_().sum((0, 1)) if self.has_bias else None
            return self._sq_sum_index(self.at(calls), gt), sb
        if self.one_position(calls):  # no weight sharing: Σ g² a² without per-example gradients
            return self.sq_sum_of(calls, self.g_sq(calls))
        rows = self.row_views(calls)
        sb = None
        if self.has_bias:
            sb = sum(g.sum(-1).square().sum(0) for g in rows)  # type: ignore[assignment]
        sw = torch.zeros(self.d_out, self.d_in, dtype=rows[0].dtype, device=rows[0].device)
        own = self.mine(calls)
        for sl in self.chunks(calls, max(1, chunk * len(rows))):  # the caller's chunk counts R rows per example
            direct = [self._direct(own[0], g[sl], sl) for g in rows] if len(own) == 1 else [None]
            if all(d is not None for d in direct):
                for d in direct:
                    sw += d.square_().sum(0)  # type: ignore[union-attr]
                continue
            at = self.at(calls, sl).transpose(1, 2)
            for g in rows:
                add_squared_products(sw, g[sl], at)
        return sw, sb

    def one_position(self, calls: list[Call]) -> bool:
        """Whether the map is applied once, at one position, to dense inputs: then its squared per-example gradients
        factor as Σᵣ Σₙ gₙᵣ² âₙ² = Σₙ (Σᵣ gₙᵣ²) âₙ² (:meth:`g_sq`, :meth:`sq_sum_of`)."""
        return not self.index_input and len(self.mine(calls)) == 1 and self.at(calls, slice(0, 1)).shape[-1] == 1

    def g_sq(self, calls: list[Call]) -> Tensor:
        """Σᵣ gₙᵣ² ``[n, d_out]`` over the calls' cotangent rows (a map at one position)."""
        return sum(g[..., 0].square() for g in self.row_views(calls))  # type: ignore[return-value]

    def sq_sum_of(self, calls: list[Call], g2: Tensor) -> tuple[Tensor, Tensor | None]:
        """Squared sums (``[d_out, d_in]``, ``[d_out]``) of a map at one position from Σᵣ gₙᵣ² and its inputs."""
        return g2.T @ self.at(calls)[..., 0].square(), g2.sum(0) if self.has_bias else None

    def _direct(self, call: Call, gt: Tensor, sl: slice) -> Tensor | None:
        """Per-example weight gradients by ``weight_pe`` (None: not available here, unfold)."""
        return None if self.weight_pe is None else self.weight_pe(call, gt, sl)

    def _sq_sum_index(self, idx: Tensor, gt: Tensor) -> Tensor:
        """Σ_{r,n} (Σₜ gₙₜ e_{idx_nt}ᵀ)² without dense per-example gradients: g summed over the positions
        of each (example, token), then squared."""
        seg, uniq = _segment_sums(idx, gt, self.d_in)  # [R, U, d_out], tokens [U]
        out = gt.new_zeros(self.d_in, self.d_out)
        out.index_add_(0, uniq, seg.square().sum(0))
        return out.T

    # --- Kronecker factors ----------------------------------------------------------------------------
    def kfac_a(self, calls: list[Call], mode: str) -> tuple[Tensor, int]:
        """(Σ â âᵀ, number of rows summed) over examples and positions (expand) or of the position-mean
        â per example (reduce). For a one-hot input A is diagonal and returned as its diagonal ``[d_in]``
        (reduce: the diagonal of the position-mean factor; its off-diagonal co-occurrences are dropped)."""
        if self.index_input:
            at = self.at(calls)
            n, t = at.shape
            if mode == "reduce":
                counts = torch.zeros(n, self.d_in, dtype=torch.float64, device=at.device)
                counts.scatter_add_(1, at, torch.ones_like(at, dtype=torch.float64))
                return (counts / t).square().sum(0).to(self._dtype(calls)), n
            return torch.bincount(at.reshape(-1), minlength=self.d_in).to(self._dtype(calls)), n * t
        total: Tensor | None = None
        rows = 0
        for sl in self.chunks(calls):
            at = self.at(calls, sl)
            at2 = at.mean(-1).T if mode == "reduce" else at.transpose(0, 1).reshape(self.d_in, -1)
            part = _gram_hat(at2, self.has_bias)
            total = part if total is None else total + part
            rows += at2.shape[1]
        assert total is not None
        return total, rows

    def _dtype(self, calls: list[Call]) -> torch.dtype:
        """The statistics' dtype (the recorded gradients'; the rows may be gone when A is taken)."""
        call = self.mine(calls)[0]
        return call.dtype if call.dtype is not None else self.gt_row(call, 0).dtype

    def kfac_g(self, calls: list[Call], mode: str) -> Tensor:
        """Σ g gᵀ over rows r, examples and positions (expand) or of the position-sum g (reduce)."""
        own = self.mine(calls)
        if len(own) == 1 and mode == "expand":  # row by row: no stacked copy of the gradients
            return sum(_g_gram(self.gt_row(own[0], r)[None], self.d_out) for r in range(own[0].n_rows))  # type: ignore[return-value]
        gt = self.gt(calls)
        if mode == "reduce" or gt.shape[-1] == 1:
            return _gram(gt.sum(-1).reshape(-1, self.d_out).T)
        return _g_gram(gt, self.d_out)

    def ekfac_s(self, calls: list[Call], qg: Tensor, qa: Tensor | None, chunk: int) -> Tensor:
        """Σ over rows and examples of (Q_Gᵀ Ĝₙ Q_A)² ``[d_out, width]`` (Ĝₙ the per-example gradient;
        Q_A None means the identity, as for a one-hot input)."""
        if self.index_input:
            g = self.gt(calls).transpose(-1, -2) @ qg  # [R, n, T, d_out]
            seg, uniq = _segment_sums(self.at(calls), g.transpose(-1, -2), self.d_in)
            out = g.new_zeros(self.d_in, self.d_out)
            out.index_add_(0, uniq, seg.square().sum(0))
            return out.T
        rows = [g.transpose(-1, -2) @ qg for g in self.row_views(calls)]  # each [n, T, d_out]
        out = torch.zeros(self.d_out, self.width, dtype=rows[0].dtype, device=rows[0].device)
        one = rows[0].shape[1] == 1  # one position: (g²)ᵀ(a²), no per-example [d_out, width] products to bound
        for sl in self.chunks(calls, None if one else chunk):
            a = self.at(calls, sl).transpose(1, 2)
            if self.has_bias:
                a = torch.cat([a, a.new_ones((*a.shape[:-1], 1))], -1)
            if qa is not None:
                a = a @ qa  # [m, T, width]
            for g in rows:
                if a.shape[1] == 1:
                    out += (g[sl, 0] ** 2).T @ (a[:, 0] ** 2)
                else:
                    add_squared_products(out, g[sl].transpose(1, 2), a)
        return out


def _segment_sums(idx: Tensor, gt: Tensor, v: int) -> tuple[Tensor, Tensor]:
    """For indices ``[n, T]`` in ``0..v−1`` and gᵀ ``[R, n, d, T]``: the sums of g over the positions of each
    distinct (example, index) pair ``[R, U, d]`` and the index of each pair ``[U]``."""
    n, t = idx.shape
    keys = (torch.arange(n, device=idx.device)[:, None] * v + idx).reshape(-1)
    uniq, inv = torch.unique(keys, return_inverse=True)
    g = gt.transpose(-1, -2).reshape(gt.shape[0], n * t, gt.shape[2])
    seg = g.new_zeros(gt.shape[0], uniq.numel(), gt.shape[2])
    seg.index_add_(1, inv, g)
    return seg, uniq % v


def add_squared_products(out: Tensor, left: Tensor, right: Tensor) -> None:
    """``out`` ``[p, q]`` += Σₙ (Lₙ Rₙ)² (elementwise square) for L ``[m, p, T]``, R ``[m, T, q]``: the products of
    at most ``PRODUCT_BYTES`` at a time, in one buffer reused for every sub-chunk of examples."""
    m, p, q = left.shape[0], left.shape[1], right.shape[2]
    step = max(1, PRODUCT_BYTES // max(1, p * q * left.element_size()))
    buf = left.new_empty(min(step, m), p, q)
    for i in range(0, m, step):
        d = torch.bmm(left[i : i + step], right[i : i + step], out=buf[: min(m, i + step) - i])
        out += d.square_().sum(0)


def _weight_pe(gt: Tensor, at: Tensor) -> Tensor:
    """Σₜ gₜ aₜᵀ per example: gᵀ ``[m, d_out, T]``, aᵀ ``[m, d_in, T]`` → ``[m, d_out, d_in]`` (one bmm)."""
    if at.shape[-1] == 1:
        return gt * at.transpose(1, 2)
    return torch.bmm(gt, at.transpose(1, 2))


def _gram(m: Tensor) -> Tensor:
    """m mᵀ for m ``[d, k]``; for d ≥ 128 from three of the four half blocks (a symmetric rank-k update, which
    torch does not expose, at 3/4 of the work)."""
    d = m.shape[0]
    if d < 128:
        return m @ m.T
    h = d // 2
    top, bot = m[:h], m[h:]
    off = top @ bot.T
    return torch.cat([torch.cat([top @ top.T, off], 1), torch.cat([off.T, bot @ bot.T], 1)], 0)


def _gram_hat(at2: Tensor, has_bias: bool) -> Tensor:
    """Σ â âᵀ over the columns of aᵀ ``[d_in, rows]``, with â = [a; 1] when there is a bias."""
    aa = _gram(at2)
    if not has_bias:
        return aa
    s = at2.sum(1, keepdim=True)
    n = torch.full((1, 1), float(at2.shape[1]), dtype=at2.dtype, device=at2.device)
    return torch.cat([torch.cat([aa, s], 1), torch.cat([s.T, n], 1)], 0)


def _g_gram(gt: Tensor, d_out: int) -> Tensor:
    """Σ g gᵀ over all but the channel dimension of gᵀ ``[R, n, d_out, T]``."""
    if gt.shape[-1] == 1:
        return _gram(gt.sum(-1).reshape(-1, d_out).T)
    g = gt.transpose(-1, -2)
    if g.is_contiguous():  # [R, n, T, d_out]: one gemm
        return _gram(g.reshape(-1, d_out).T)
    b = gt.reshape(-1, d_out, gt.shape[-1])  # [R·n, d_out, T]: a bmm, no copy
    return torch.bmm(b, b.transpose(1, 2)).sum(0)


class PartsRule(Rule):
    """A rule whose parameters all belong to its linear maps (``parts``): statistics part by part."""

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for part in self.parts:
            part.place(out, *part.per_example(calls, sl))
        return out

    def sq_sum(self, calls: list[Call], chunk: int) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for part in self.parts:
            part.place(out, *part.sq_sum(calls, chunk))
        return out


class LinearRule(PartsRule):
    """``nn.Linear`` on inputs ``[n, *, d_in]`` (positions * share the weight): one :class:`LinearPart`.
    ``transposed``: the weight is stored ``[d_in, d_out]`` (HuggingFace's Conv1D)."""

    transposed = False

    def __init__(self, module: nn.Module, module_name: str, params: list[tuple[nn.Module, str, str]]) -> None:
        super().__init__(module, module_name, params)
        w = module.weight
        d_out, d_in = int(w.shape[0]), int(w[0].numel())
        if self.transposed:
            d_out, d_in = d_in, d_out
        self.parts = [
            LinearPart(
                self.name_of(module, "weight"),
                self.name_of(module, "bias"),
                tuple(w.shape),
                d_out,
                d_in,
                *positions_views(d_in, d_out),
                transposed=self.transposed,
            )
        ]


def positions_views(d_in: int, d_out: int, arg: int = 0, out: int = 0) -> tuple[Any, Any, int]:
    """(a_of, g_of, out) for a map applied to the last dimension of input ``arg`` ``[n, *, d_in]`` giving
    output ``out`` ``[n, *, d_out]`` (the positions * share the weight)."""

    def a_of(call: Call, sl: slice = ALL) -> Tensor:
        key = f"at{arg}"
        if key not in call.cache:
            x = call.arg(arg)
            call.cache[key] = x.reshape(x.shape[0], -1, d_in).transpose(1, 2)
        return call.cache[key][sl]

    def g_of(call: Call, g: Tensor) -> Tensor:
        return g.reshape(g.shape[0], g.shape[1], -1, d_out).transpose(-1, -2)

    return a_of, g_of, out


register(nn.Linear)(LinearRule)

__all__ = ["LinearPart", "LinearRule", "PartsRule", "positions_views"]
