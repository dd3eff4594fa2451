"""``nn.GRU`` and ``nn.LSTM``: their weights are linear maps shared over time steps.

During fisherkl's passes this rule runs the recurrence step by step in Python, as torch defines it:

    GRU:  r, z = σ(Wᵢᵣ,ᵢ𝓏 x + b + Wₕᵣ,ₕ𝓏 h + b),  n = tanh(Wᵢₙ x + bᵢₙ + r ⊙ (Wₕₙ h + bₕₙ)),  h' = (1 − z) ⊙ n + z ⊙ h
    LSTM: i, f, g, o = W_ih x + b_ih + W_hh h + b_hh,  c' = σ(f) c + σ(i) tanh(g),  h' = σ(o) tanh(c')

so that, per layer and direction, the input projection x_t ↦ W_ih x_t + b_ih (one map over all T steps) and
the hidden projection h_{t−1} ↦ W_hh h_{t−1} + b_hh (the same map at every step) are
:class:`~fisherkl.nn.rules.linear.LinearPart` s: exact per-example gradients and Kronecker factors, shared
over time as for a Linear on a sequence. Several layers, both directions, ``batch_first``, initial states
and dropout between layers follow torch; packed sequences, unbatched inputs and LSTM projections
(``proj_size``) keep torch's fused forward and the generic rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Call, register
from .generic import GenericRule
from .linear import LinearPart, PartsRule


def _views(d_in: int, d_out: int, arg: int) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """(a_of, g_of) for a map whose inputs are argument ``arg`` ``[n, T, d_in]`` and whose outputs are one
    ``[n, T, d_out]`` tensor, or T tensors ``[n, d_out]`` (one per step)."""

    def a_of(call: Call, sl: slice = slice(None)) -> Tensor:
        return call.arg(arg)[sl].transpose(1, 2)  # [m, d_in, T]

    def g_of(call: Call, g: Any) -> Tensor:
        if isinstance(g, Tensor):  # [R, n, T, d_out]
            return g.transpose(-1, -2)
        return torch.stack(list(g), -1)  # T × [R, n, d_out] → [R, n, d_out, T]

    return a_of, g_of


class RecurrentRule(PartsRule):
    """GRU / LSTM with exposed projections (see the module doc)."""

    overrides_forward = True

    def __init__(self, module: nn.Module, module_name: str, params: list[tuple[nn.Module, str, str]]) -> None:
        super().__init__(module, module_name, params)
        m: nn.RNNBase = module  # type: ignore[assignment]
        self.gates = 3 if isinstance(m, nn.GRU) else 4
        self.dirs = 2 if m.bidirectional else 1
        self.parts = []
        self.layer_of: dict[tuple[int, int], int] = {}  # (layer, direction) → index of its call in a forward

    def _parts_for(self, t: int) -> None:
        """One input and one hidden map per layer and direction (the call's outputs: gates_x, then T steps)."""
        if self.parts:
            return
        m: nn.RNNBase = self.module  # type: ignore[assignment]
        h, g = m.hidden_size, self.gates * m.hidden_size
        for layer in range(m.num_layers):
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih = getattr(m, "weight_ih" + sfx)
                self.parts.append(
                    LinearPart(
                        self.name_of(m, "weight_ih" + sfx),
                        self.name_of(m, "bias_ih" + sfx),
                        tuple(w_ih.shape),
                        g,
                        int(w_ih.shape[1]),
                        *_views(int(w_ih.shape[1]), g, 0),
                        out=0,
                        role=(layer, d),
                    )
                )
                self.parts.append(
                    LinearPart(
                        self.name_of(m, "weight_hh" + sfx),
                        self.name_of(m, "bias_hh" + sfx),
                        (g, h),
                        g,
                        h,
                        *_views(h, g, 1),
                        out=slice(1, None),
                        role=(layer, d),
                    )
                )

    def supports(self, call: Call) -> bool:
        return bool(call.cache.get("rnn"))

    def forward(self, engine: Any, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        x = args[0] if args else kwargs.get("input")
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        m: nn.RNNBase = self.module  # type: ignore[assignment]
        if (
            not engine.recording
            or not isinstance(x, Tensor)
            or x.dim() != 3
            or getattr(m, "proj_size", 0)
            or not all(isinstance(p, Tensor) for p in m._flat_weights)
        ):
            return original(*args, **kwargs)
        return self._run(engine, x, hx)

    def _run(self, engine: Any, x: Tensor, hx: Any) -> Any:
        m: nn.RNNBase = self.module  # type: ignore[assignment]
        lstm = self.gates == 4
        seq = x if m.batch_first else x.transpose(0, 1)  # [n, T, d]
        n, t = seq.shape[0], seq.shape[1]
        self._parts_for(t)
        hsz = m.hidden_size
        if hx is None:
            zeros = seq.new_zeros(m.num_layers * self.dirs, n, hsz)
            h0, c0 = zeros, zeros
        elif lstm:
            h0, c0 = hx
        else:
            h0, c0 = hx, None
        finals_h, finals_c = [], []
        inp = seq
        for layer in range(m.num_layers):
            outs = []
            for d in range(self.dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                w_ih, w_hh = getattr(m, "weight_ih" + sfx), getattr(m, "weight_hh" + sfx)
                b_ih, b_hh = getattr(m, "bias_ih" + sfx, None), getattr(m, "bias_hh" + sfx, None)
                xs = inp.flip(1) if d else inp
                gx = engine.tap(self, F.linear(xs, w_ih, b_ih))  # [n, T, G]
                h = h0[layer * self.dirs + d]
                c = c0[layer * self.dirs + d] if lstm else None
                prev, ghs, hs = [], [], []
                for step in range(t):
                    prev.append(h)
                    gh = engine.tap(self, F.linear(h, w_hh, b_hh))
                    ghs.append(gh)
                    if lstm:
                        i, f, g, o = (gx[:, step] + gh).chunk(4, -1)
                        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                        h = torch.sigmoid(o) * torch.tanh(c)
                    else:
                        xr, xz, xn = gx[:, step].chunk(3, -1)
                        hr, hz, hn = gh.chunk(3, -1)
                        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                        h = (1 - z) * torch.tanh(xn + r * hn) + z * h
                    hs.append(h)
                call = Call((xs.detach(), torch.stack(prev, 1).detach()), {}, [gx, *ghs], n=n)
                call.cache["rnn"] = True
                call.cache["role"] = (layer, d)
                engine.record(self, call)
                out = torch.stack(hs, 1)
                outs.append(out.flip(1) if d else out)
                finals_h.append(h)
                if lstm:
                    finals_c.append(c)
            inp = torch.cat(outs, -1) if self.dirs > 1 else outs[0]
            if m.dropout and m.training and layer < m.num_layers - 1:
                inp = F.dropout(inp, m.dropout, True)
        output = inp if m.batch_first else inp.transpose(0, 1)
        h_n = torch.stack(finals_h, 0)
        return (output, (h_n, torch.stack(finals_c, 0))) if lstm else (output, h_n)


def _packed_or_projected(m: nn.Module) -> bool:
    return bool(getattr(m, "proj_size", 0))


register(nn.GRU, when=lambda m: not _packed_or_projected(m))(RecurrentRule)
register(nn.LSTM, when=lambda m: not _packed_or_projected(m))(RecurrentRule)
register(nn.LSTM, when=_packed_or_projected)(GenericRule)

__all__ = ["RecurrentRule"]
