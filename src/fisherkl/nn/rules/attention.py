"""``nn.MultiheadAttention``: its in- and out-projections are the linear maps they are.

``nn.MultiheadAttention`` calls a fused functional forward that uses ``out_proj.weight`` without calling
``out_proj`` and packs Q, K and V into ``in_proj_weight``. During fisherkl's passes this rule runs an
equivalent forward written with the projections exposed:

    [q | k | v] = x W_inᵀ + b_in      (self-attention: one map on x, W_in ``[3E, E]``)
    ctx = softmax(q kᵀ/√d_h + mask) v  (per head; torch's scaled_dot_product_attention)
    y = ctx W_outᵀ + b_out

so that each projection is a :class:`~fisherkl.nn.rules.linear.LinearPart` with exact per-example
gradients and Kronecker factors. Self-attention (query, key and value the same tensor, as in
``nn.TransformerEncoderLayer``) has **one** Kronecker block for Q, K and V together (``[3E, E]``, since
they share their input); cross-attention has a block for the query rows and one for the key/value rows
(or three, when key and value differ); ``kdim``/``vdim`` ≠ ``embed_dim`` gives the separate
``q/k/v_proj_weight`` one block each. Masks (``attn_mask`` 2-D/3-D, bool or additive,
``key_padding_mask``, ``is_causal``), ``batch_first``, ``need_weights`` and dropout follow torch. The
rare options ``add_bias_kv`` and ``add_zero_attn`` and unbatched inputs keep torch's forward and the
generic rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Call, register
from .generic import GenericRule
from .linear import LinearPart, PartsRule, positions_views


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A bool mask (True = not allowed) as an additive float mask (−inf there); float masks unchanged."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    return mask.to(dtype)


class MultiheadAttentionRule(PartsRule):
    """Self- or cross-attention with exposed projections (see the module doc)."""

    claims = ("out_proj",)
    overrides_forward = True

    def __init__(self, module: nn.Module, module_name: str, params: list[tuple[nn.Module, str, str]]) -> None:
        super().__init__(module, module_name, params)
        m: nn.MultiheadAttention = module  # type: ignore[assignment]
        e = m.embed_dim
        self.e = e
        # a recorded call: inputs = the projections' inputs, then ctx; outputs = the projections, then y
        self._layout: str | None = None
        self.parts = []

    # --- the parts for a given packing (self-attention: "qkv"; cross: "q,kv" or "q,k,v") --------------
    def _parts_for(self, layout: str, n_in: int) -> list[LinearPart]:
        m: nn.MultiheadAttention = self.module  # type: ignore[assignment]
        e = self.e
        w_name = self.name_of(m, "in_proj_weight")
        b_name = self.name_of(m, "in_proj_bias")
        parts = []
        if m._qkv_same_embed_dim:
            spans = {"qkv": [(0, 3 * e)], "q,kv": [(0, e), (e, 3 * e)], "q,k,v": [(0, e), (e, 2 * e), (2 * e, 3 * e)]}
            for j, (a, b) in enumerate(spans[layout]):
                parts.append(
                    LinearPart(
                        w_name,
                        b_name,
                        (3 * e, e),
                        b - a,
                        e,
                        *positions_views(e, b - a, arg=j, out=j),
                        rows=None if (a, b) == (0, 3 * e) else (a, b),
                    )
                )
        else:
            for j, attr in enumerate(("q_proj_weight", "k_proj_weight", "v_proj_weight")):
                w = getattr(m, attr)
                parts.append(
                    LinearPart(
                        self.name_of(m, attr),
                        b_name,
                        tuple(w.shape),
                        e,
                        int(w.shape[1]),
                        *positions_views(int(w.shape[1]), e, arg=j, out=j),
                        bias_rows=(j * e, (j + 1) * e),
                        bias_len=3 * e,
                    )
                )
        # the out-projection reads ctx (the last input) and writes y (the last output)
        out = m.out_proj
        parts.append(
            LinearPart(
                self.name_of(out, "weight"),
                self.name_of(out, "bias"),
                tuple(out.weight.shape),
                e,
                e,
                *positions_views(e, e, arg=n_in, out=n_in),
            )
        )
        return parts

    def bind(self, layout: str) -> None:
        """Fix the packing seen in the calls (it decides the Kronecker blocks)."""
        if self._layout is None:
            self._layout = layout
            self.parts = self._parts_for(layout, {"qkv": 1, "q,kv": 2, "q,k,v": 3}[layout])
        elif self._layout != layout:
            raise RuntimeError(f"{self}: called with different query/key/value packings ({self._layout}, {layout})")

    def supports(self, call: Call) -> bool:
        return bool(call.cache.get("mha"))

    # --- the forward with exposed projections ------------------------------------------------------------
    def forward(self, engine: Any, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        query, key, value = (list(args) + [kwargs.pop(k) for k in ("query", "key", "value") if k in kwargs])[:3]
        extra = args[3:]
        names = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")
        opts = dict(zip(names, extra))
        opts.update(kwargs)
        if not engine.recording or query.dim() != 3:
            return original(query, key, value, **opts)
        return self._attend(engine, query, key, value, **opts)

    def _attend(
        self,
        engine: Any,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        m: nn.MultiheadAttention = self.module  # type: ignore[assignment]
        e, h = m.embed_dim, m.num_heads
        hd = e // h
        layout = "qkv" if (query is key and key is value) else ("q,kv" if key is value else "q,k,v")
        if not m._qkv_same_embed_dim:
            layout = "q,k,v"
        tr = (lambda t: t) if m.batch_first else (lambda t: t.transpose(0, 1))
        q_in, k_in, v_in = tr(query), tr(key), tr(value)
        n, t_len, s_len = q_in.shape[0], q_in.shape[1], k_in.shape[1]

        def tap(t: Tensor) -> Tensor:  # the projections' gradients reach the statistics in the backward pass
            return engine.tap(self, t)

        b = m.in_proj_bias
        if m._qkv_same_embed_dim:
            w = m.in_proj_weight
            if layout == "qkv":
                inputs = [q_in]
                projs = [tap(F.linear(q_in, w, b))]
                q, k, v = projs[0].chunk(3, -1)
            elif layout == "q,kv":
                inputs = [q_in, k_in]
                projs = [
                    tap(F.linear(q_in, w[:e], None if b is None else b[:e])),
                    tap(F.linear(k_in, w[e:], None if b is None else b[e:])),
                ]
                q, (k, v) = projs[0], projs[1].chunk(2, -1)
            else:
                inputs = [q_in, k_in, v_in]
                bs = (None, None, None) if b is None else b.chunk(3)
                projs = [tap(F.linear(x, wj, bj)) for x, wj, bj in zip(inputs, w.chunk(3), bs)]
                q, k, v = projs
        else:
            inputs = [q_in, k_in, v_in]
            bs = (None, None, None) if b is None else b.chunk(3)
            ws = (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)
            projs = [tap(F.linear(x, wj, bj)) for x, wj, bj in zip(inputs, ws, bs)]
            q, k, v = projs
        q = q.reshape(n, t_len, h, hd).transpose(1, 2)
        k = k.reshape(n, s_len, h, hd).transpose(1, 2)
        v = v.reshape(n, s_len, h, hd).transpose(1, 2)
        # masks as torch merges them: a causal hint without padding or weights goes to SDPA as is_causal
        kpm = _float_mask(key_padding_mask, q.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        causal = bool(is_causal and kpm is None and not need_weights)
        mask = None if causal else _float_mask(attn_mask, q.dtype)
        if mask is not None and mask.dim() == 3:
            mask = mask.reshape(n, h, t_len, s_len)
        if kpm is not None:
            kpm = kpm.reshape(n, 1, 1, s_len)
            mask = kpm if mask is None else mask + kpm
        p = m.dropout if m.training else 0.0
        weights = None
        if need_weights:
            scores = (q * math.sqrt(1.0 / hd)) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, -1)
            weights = attn
            if p > 0:
                attn = F.dropout(attn, p=p)
            ctx = attn @ v
        else:
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        ctx = ctx.transpose(1, 2).reshape(n, t_len, e)
        y = tap(F.linear(ctx, m.out_proj.weight, m.out_proj.bias))
        self.bind(layout)
        call = Call(tuple(x.detach() for x in (*inputs, ctx)), {}, [*projs, y], n=n)
        call.cache["mha"] = True
        engine.record(self, call)
        if weights is not None and average_attn_weights:
            weights = weights.mean(1)
        return tr(y), weights


def _mha_generic(module: nn.Module) -> bool:
    return module.bias_k is not None or module.add_zero_attn  # type: ignore[return-value]


class MultiheadAttentionGenericRule(GenericRule):
    """``add_bias_kv`` / ``add_zero_attn``: torch's forward and torch.func on the whole module."""

    claims = ("out_proj",)


register(nn.MultiheadAttention, when=lambda m: not _mha_generic(m))(MultiheadAttentionRule)
register(nn.MultiheadAttention, when=_mha_generic)(MultiheadAttentionGenericRule)

__all__ = ["MultiheadAttentionGenericRule", "MultiheadAttentionRule"]
