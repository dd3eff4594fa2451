"""Per-layer rules: per-example gradients and Kronecker factors from a layer's inputs and output gradients.

During a batch, hooks record every call of a layer that owns parameters: its inputs, and (after
the backward passes) the gradients ``g`` ``[R, n, ...]`` of its outputs for R cotangent rows at
once. A rule turns these into

* per-example gradients ``[R, m, *param.shape]`` for a slice of m examples (dense, block, diagonal);
* sums of squared per-example gradients (the diagonal), without materialising them where possible;
* Kronecker factors (Linear, Conv2d): sums of â âᵀ and g gᵀ with their counts.

Linear layers read inputs ``[n, *, d_in]`` (positions * share the weight) and Conv2d layers are
unfolded (im2col) to ``[n, T, c·kh·kw]``; any other layer with parameters (norms, embeddings, your
own) gets exact per-example gradients by ``torch.func`` applied to that layer alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from .params import preserved_parameters


class Call:
    """One forward call of a layer: inputs, output tensors, and their gradients.

    ``rows[i]`` holds the R gradients (one per cotangent row, each shaped like output i) as the
    backward passes produced them; ``grads[i]`` stacks them to ``[R, n, ...]`` on first use (rules
    that can work row by row read ``rows`` and skip that copy).
    """

    def __init__(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        outs: list[Tensor],
        grads: list[Tensor] | None = None,
        cache: dict[str, Tensor] | None = None,
    ) -> None:
        self.args, self.kwargs, self.outs = args, kwargs, outs
        self.cache: dict[str, Tensor] = {} if cache is None else cache
        self.versions: list[int] = []
        self.rows: list[list[Tensor]] = []
        self._stacked: list[Tensor] | None = None
        if grads is not None:
            self.grads = grads

    @property
    def grads(self) -> list[Tensor]:
        if self._stacked is None:
            self._stacked = [r[0].unsqueeze(0) if len(r) == 1 else torch.stack(r) for r in self.rows]
            self.rows = [list(t.unbind(0)) for t in self._stacked]  # views: the separate rows are freed
        return self._stacked

    @grads.setter
    def grads(self, value: list[Tensor]) -> None:
        self._stacked = list(value)
        self.rows = [list(v.unbind(0)) for v in self._stacked]

    def set_rows(self, rows: list[list[Tensor]]) -> None:
        self.rows, self._stacked = rows, None


class Rule:
    """A layer with parameters: ``names`` are the layout names of its own (direct) parameters."""

    kronecker = False

    def __init__(self, module: nn.Module, module_name: str, local: list[str], names: list[str]) -> None:
        self.module, self.module_name, self.local, self.names = module, module_name, local, names

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.module_name or '<root>'}: {type(self.module).__name__})"

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        """Per-example gradients ``{name: [R, m, *shape]}`` for examples ``sl``."""
        raise NotImplementedError

    def sq_sum(self, calls: list[Call], chunk: int) -> dict[str, Tensor]:
        """Σ over rows r and examples n of squared per-example gradients ``{name: shape}``."""
        n = calls[0].grads[0].shape[1]
        out: dict[str, Tensor] = {}
        for i in range(0, n, chunk):
            for k, v in self.per_example(calls, slice(i, i + chunk)).items():
                s = (v * v).sum((0, 1))
                out[k] = out[k] + s if k in out else s
        return out


class LinearRule(Rule):
    """nn.Linear: per-example gradient of Ŵ = [W | b] is Σₜ gₜ âₜᵀ over positions t.

    Everything is computed from two views of a call (any strides, never copied without need):
    inputs aᵀ ``[n, d_in, T]`` and output gradients gᵀ ``[R, n, d_out, T]``. The bias column of
    ones (â = [a; 1]) is never concatenated: bias parts are sums over positions.
    """

    kronecker = True

    def __init__(self, module: nn.Module, module_name: str, local: list[str], names: list[str]) -> None:
        super().__init__(module, module_name, local, names)
        w = module.weight
        self.d_out = int(w.shape[0])
        self.d_in = int(w[0].numel())
        self.has_bias = "bias" in local
        self.weight_name = names[local.index("weight")] if "weight" in local else None
        self.bias_name = names[local.index("bias")] if self.has_bias else None
        if self.weight_name is None:  # weight frozen: treat as a generic layer
            self.kronecker = False

    # --- the two views ----------------------------------------------------------------------------
    def at(self, call: Call) -> Tensor:
        """Layer inputs aᵀ ``[n, d_in, T]`` (T positions sharing the weight; no column of ones)."""
        if "at" not in call.cache:
            x = call.args[0]
            call.cache["at"] = x.reshape(x.shape[0], -1, self.d_in).transpose(1, 2)
        return call.cache["at"]

    def gt(self, call: Call) -> Tensor:
        """Output gradients gᵀ ``[R, n, d_out, T]`` for the R cotangent rows."""
        g = call.grads[0]
        return g.reshape(g.shape[0], g.shape[1], -1, self.d_out).transpose(-1, -2)

    def a_hat(self, call: Call) -> Tensor:
        """â = [a; 1] ``[n, T, width]``."""
        a = self.at(call).transpose(1, 2)
        if not self.has_bias:
            return a
        return torch.cat([a, a.new_ones((*a.shape[:-1], 1))], -1)

    def gt_row(self, call: Call, r: int) -> Tensor:
        """gᵀ ``[n, d_out, T]`` of cotangent row r (no stacking)."""
        g = call.rows[0][r]
        return g.reshape(g.shape[0], -1, self.d_out).transpose(-1, -2)

    def g(self, call: Call) -> Tensor:
        """Output gradients ``[R, n, T, d_out]``."""
        return self.gt(call).transpose(-1, -2)

    def _views(self, calls: list[Call]) -> tuple[Tensor, Tensor]:
        """(aᵀ, gᵀ) of all calls, positions concatenated."""
        if len(calls) == 1:
            return self.at(calls[0]), self.gt(calls[0])
        return torch.cat([self.at(c) for c in calls], -1), torch.cat([self.gt(c) for c in calls], -1)

    def _parts(self, w: Tensor | None, b: Tensor | None) -> dict[str, Tensor]:
        """Weight part ``[..., d_out, d_in]`` and bias part ``[..., d_out]`` → {name: parameter-shaped}."""
        out = {}
        if self.weight_name is not None and w is not None:
            out[self.weight_name] = w.reshape(*w.shape[:-2], *self.module.weight.shape)
        if self.bias_name is not None and b is not None:
            out[self.bias_name] = b
        return out

    # --- per-example gradients ----------------------------------------------------------------------
    def _weight_pe(self, gt: Tensor, at: Tensor) -> Tensor:
        """Σₜ gₜ aₜᵀ per example: gᵀ ``[m, d_out, T]``, aᵀ ``[m, d_in, T]`` → ``[m, d_out, d_in]`` (one bmm)."""
        if at.shape[-1] == 1:
            return gt * at.transpose(1, 2)
        return torch.bmm(gt, at.transpose(1, 2))

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        at, gt = self._views(calls)
        at, gt = at[sl], gt[:, sl]
        if at.shape[-1] == 1:  # outer products, all rows at once
            w = gt * at.transpose(1, 2).unsqueeze(0)
        elif gt.shape[0] == 1:
            w = self._weight_pe(gt[0], at).unsqueeze(0)
        else:
            w = torch.stack([self._weight_pe(gt[r], at) for r in range(gt.shape[0])])
        return self._parts(w, gt.sum(-1) if self.has_bias else None)

    def sq_sum(self, calls: list[Call], chunk: int) -> dict[str, Tensor]:
        at, gt = self._views(calls)
        if at.shape[-1] == 1:  # no weight sharing: Σ g² a² without per-example gradients
            g2 = gt[..., 0].square().sum(0)  # [n, d_out]
            return self._parts(g2.T @ at[..., 0].square(), g2.sum(0))
        sw = torch.zeros(self.d_out, self.d_in, dtype=at.dtype, device=at.device)
        chunk = max(1, chunk * gt.shape[0])  # the caller's chunk counts R rows per example
        for i in range(0, at.shape[0], chunk):
            for r in range(gt.shape[0]):
                sw += self._weight_pe(gt[r, i : i + chunk], at[i : i + chunk]).square_().sum(0)
        sb = gt.sum(-1).square_().sum((0, 1)) if self.has_bias else None
        return self._parts(sw, sb)

    # --- Kronecker factors ------------------------------------------------------------------------
    @staticmethod
    def _gram_hat(at2: Tensor, has_bias: bool) -> Tensor:
        """Σ â âᵀ over the columns of aᵀ ``[d_in, rows]``, with â = [a; 1] when there is a bias."""
        aa = _gram(at2)
        if not has_bias:
            return aa
        s = at2.sum(1, keepdim=True)
        n = torch.full((1, 1), float(at2.shape[1]), dtype=at2.dtype, device=at2.device)
        return torch.cat([torch.cat([aa, s], 1), torch.cat([s.T, n], 1)], 0)

    def _a_rows(self, at: Tensor) -> Tensor:
        """aᵀ ``[n, d_in, T]`` → ``[d_in, n·T]`` (a view for Linear inputs)."""
        return at.transpose(0, 1).reshape(self.d_in, -1)

    def kfac_a(self, calls: list[Call], mode: str) -> tuple[Tensor, int]:
        """(Σ â âᵀ, number of rows summed): over examples and positions (expand) or of the
        position-mean â per example (reduce)."""
        at = self._views(calls)[0] if len(calls) > 1 else self.at(calls[0])
        at2 = at.mean(-1).T if mode == "reduce" else self._a_rows(at)
        return self._gram_hat(at2, self.has_bias), at2.shape[1]

    def kfac_g(self, calls: list[Call], mode: str) -> Tensor:
        """Σ g gᵀ over rows r, examples and positions (expand) or of the position-sum g (reduce)."""
        if len(calls) == 1 and mode == "expand":  # row by row: no stacked copy of the gradients
            return sum(self._g_gram(self.gt_row(calls[0], r)[None]) for r in range(len(calls[0].rows[0])))
        gt = self._views(calls)[1] if len(calls) > 1 else self.gt(calls[0])
        if mode == "reduce" or gt.shape[-1] == 1:
            g = gt.sum(-1).reshape(-1, self.d_out)
            return _gram(g.T)
        return self._g_gram(gt)

    def _g_gram(self, gt: Tensor) -> Tensor:
        """Σ g gᵀ over all but the channel dimension of gᵀ ``[R, n, d_out, T]``."""
        if gt.shape[-1] == 1:
            g = gt.sum(-1).reshape(-1, self.d_out)
            return _gram(g.T)
        g = gt.transpose(-1, -2)
        if g.is_contiguous():  # [R, n, T, d_out]: one gemm
            g = g.reshape(-1, self.d_out)
            return _gram(g.T)
        b = gt.reshape(-1, self.d_out, gt.shape[-1])  # [R·n, d_out, T]: a bmm, no copy
        return torch.bmm(b, b.transpose(1, 2)).sum(0)

    def ekfac_s(self, calls: list[Call], qg: Tensor, qa: Tensor, chunk: int) -> Tensor:
        """Σ over rows and examples of (Q_Gᵀ Ĝₙ Q_A)² ``[d_out, width]`` (Ĝₙ the per-example gradient)."""
        at, gt = self._views(calls)
        a = at.transpose(1, 2)
        if self.has_bias:
            a = torch.cat([a, a.new_ones((*a.shape[:-1], 1))], -1)
        a, g = a @ qa, gt.transpose(-1, -2) @ qg  # [n, T, width], [R, n, T, d_out]
        if a.shape[1] == 1:
            return ((g[:, :, 0] ** 2).sum(0)).T @ (a[:, 0] ** 2)
        out = torch.zeros(self.d_out, a.shape[-1], dtype=a.dtype, device=a.device)
        for i in range(0, a.shape[0], chunk):
            for r in range(g.shape[0]):
                out += torch.bmm(g[r, i : i + chunk].transpose(1, 2), a[i : i + chunk]).square_().sum(0)
        return out


class Conv2dRule(LinearRule):
    """nn.Conv2d (groups = 1, zero padding): inputs unfolded (im2col) to aᵀ ``[n, c·kh·kw, T]``, T = output
    positions.

    The unfolding is one copy of a strided view of the padded input, stored as ``[c·kh·kw, n, T]`` so that
    both the Kronecker factor A (one gemm) and per-example products (one bmm) read it without a copy; the
    output gradients ``[R, n, d_out, oh, ow]`` are already gᵀ.
    """

    def at(self, call: Call) -> Tensor:
        if "at" not in call.cache:
            m = self.module
            x = call.args[0]
            (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
            if ph or pw:
                x = F.pad(x, (pw, pw, ph, ph))
            n, c, h, w = x.shape
            oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
            s_n, s_c, s_h, s_w = x.stride()
            cols = x.as_strided((c, kh, kw, n, oh, ow), (s_c, s_h * dh, s_w * dw, s_n, s_h * sh, s_w * sw))
            call.cache["at"] = cols.reshape(c * kh * kw, n, oh * ow).transpose(0, 1)
        return call.cache["at"]

    def unfold(self, x: Tensor) -> Tensor:
        """im2col of x ``[n, c, h, w]`` → ``[n, T, c·kh·kw]`` (as ``F.unfold(...).transpose(1, 2)``)."""
        return self.at(Call((x,), {}, [])).transpose(1, 2)

    def gt(self, call: Call) -> Tensor:
        g = call.grads[0]  # [R, n, d_out, oh, ow]
        return g.reshape(g.shape[0], g.shape[1], self.d_out, -1)

    def gt_row(self, call: Call, r: int) -> Tensor:
        g = call.rows[0][r]  # [n, d_out, oh, ow]
        return g.reshape(g.shape[0], self.d_out, -1)


class GenericRule(Rule):
    """Any other layer with parameters: per-example gradients by torch.func on the layer alone.

    Exact as long as the layer treats examples independently (true for LayerNorm, GroupNorm,
    Embedding, BatchNorm in eval mode, …). Tensor arguments whose first dimension is the batch
    size are split per example; others are shared.
    """

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        total: dict[str, Tensor] = {}
        params = {k: getattr(self.module, k).detach() for k in self.local}
        for c in calls:
            n = c.grads[0].shape[1]
            args = tuple(a[sl] if _batched(a, n) else a for a in c.args)
            kwargs = {k: (v[sl] if _batched(v, n) else v) for k, v in c.kwargs.items()}
            arg_dims = tuple(0 if _batched(a, n) else None for a in c.args)
            kw_dims = {k: (0 if _batched(v, n) else None) for k, v in c.kwargs.items()}
            grads = [g[:, sl] for g in c.grads]

            def one(
                args_i: tuple[Any, ...],
                kwargs_i: dict[str, Any],
                gs: list[Tensor],
                arg_dims: tuple[int | None, ...] = arg_dims,
                kw_dims: dict[str, int | None] = kw_dims,
            ) -> dict[str, Tensor]:
                a1 = tuple(a.unsqueeze(0) if d == 0 else a for a, d in zip(args_i, arg_dims))
                k1 = {k: (v.unsqueeze(0) if kw_dims[k] == 0 else v) for k, v in kwargs_i.items()}

                def loss(pr: dict[str, Tensor]) -> Tensor:
                    outs = flat_tensors(functional_call(self.module, pr, a1, k1))
                    return sum((o.squeeze(0) * g).sum() for o, g in zip(outs, gs))  # type: ignore[return-value]

                return grad(loss)(params)

            inner = vmap(one, in_dims=(arg_dims, kw_dims, 0))
            with preserved_parameters(self.module):
                pe = vmap(inner, in_dims=(None, None, 0))(args, kwargs, grads)
            for k, v in pe.items():
                name = self.names[self.local.index(k)]
                total[name] = total[name] + v if name in total else v
        return total


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


def _batched(a: Any, n: int) -> bool:
    return isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == n


def flat_tensors(out: Any) -> list[Tensor]:
    """The tensors in a module's output (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat_tensors(o)]
    return []
