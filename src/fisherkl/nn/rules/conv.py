"""Convolutions (``nn.Conv1d``, ``nn.Conv2d``, ``nn.Conv3d``): linear maps after unfolding (im2col).

The input, padded as the layer pads it (zeros, reflect, replicate, circular; ``"same"`` included), is
unfolded to aᵀ ``[n, c·Πk, T]`` with T the output positions (any stride and dilation); the output
gradients ``[R, n, c_out, *spatial]`` are already gᵀ. A grouped convolution is one linear map per group
(rows ``[j·c_out/G, (j+1)·c_out/G)`` of the weight, read as ``[c_out, c_in/G·Πk]``, on the input channels of
group j), so KFAC has one Kronecker block per group.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Call, register
from .linear import LinearPart, PartsRule

KEEP_BYTES = 64 * 1024**2  # a batch's unfolded input kept for the next row chunks up to this size
# per-example weight gradients by the convolution's own kernel (the examples as groups) for kernels of at least
# DIRECT_MIN_TAPS taps on at least DIRECT_MIN_CHANNELS input channels per group whose output has at least
# DIRECT_RATIO · c_in/G · Πk positions; else by unfolding. Measured per layer of a ResNet-18 (2 threads, mkldnn):
# the kernel is 1.5–2× faster for 3×3 convolutions on 16–32 channels at 32×32–16×16, equal at 32 channels on 8×8,
# 2–3× slower at 64–128 channels on 8×8–4×4, on 3 input channels and for 1×1 convolutions
DIRECT_RATIO = 0.5
DIRECT_MIN_CHANNELS = 8
DIRECT_MIN_TAPS = 2


def unfold(x: Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]) -> Tensor:
    """im2col of x ``[n, c, *spatial]`` (already padded) → aᵀ ``[n, c·Πk, T]`` (one copy of a strided view,
    stored ``[c·Πk, n, T]`` so that both a gemm over (n, T) and a bmm per example read it without a copy)."""
    n, c, *sp = x.shape
    out = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(sp, kernel, stride, dilation)]
    s_n, s_c, *s_sp = x.stride()
    size = (c, *kernel, n, *out)
    strides = (s_c, *(s * d for s, d in zip(s_sp, dilation)), s_n, *(s * st for s, st in zip(s_sp, stride)))
    cols = x.as_strided(size, strides)
    return cols.reshape(c * math.prod(kernel), n, math.prod(out)).transpose(0, 1)


class ConvRule(PartsRule):
    """A convolution: one :class:`LinearPart` per group over the unfolded input."""

    def __init__(self, module: nn.Module, module_name: str, params: list[tuple[nn.Module, str, str]]) -> None:
        super().__init__(module, module_name, params)
        m: nn.modules.conv._ConvNd = module  # type: ignore[assignment]
        w = m.weight
        groups = m.groups
        c_out, cg_in = int(w.shape[0]), int(w.shape[1])
        per = c_out // groups
        k = math.prod(w.shape[2:])
        weight, bias = self.name_of(m, "weight"), self.name_of(m, "bias")
        self.parts = [
            LinearPart(
                weight,
                bias,
                tuple(w.shape),
                per,
                cg_in * k,
                self._a_of(j, cg_in),
                self._g_of(j * per, (j + 1) * per),
                rows=None if groups == 1 else (j * per, (j + 1) * per),
                weight_pe=self._weight_pe(j, cg_in, per),
            )
            for j in range(groups)
        ]

    def padded(self, call: Call, sl: slice) -> Tensor:
        """The layer's input for examples ``sl``, padded as its forward pads it ``[m, c, *spatial]``."""
        m: nn.modules.conv._ConvNd = self.module  # type: ignore[assignment]
        x = call.arg(0)[sl]
        pad = m._reversed_padding_repeated_twice
        if any(pad):
            x = F.pad(x, pad) if m.padding_mode == "zeros" else F.pad(x, pad, mode=m.padding_mode)
        return x

    def _a_of(self, j: int, cg: int) -> object:
        def a_of(call: Call, sl: slice = slice(None)) -> Tensor:
            # the whole batch's unfolding (Πk times the input) is kept across row chunks only when it is small;
            # otherwise each chunk of examples is unfolded when it is needed
            m: nn.modules.conv._ConvNd = self.module  # type: ignore[assignment]
            key = f"unfold{j}"
            if key in call.cache:
                return call.cache[key][sl]
            x = self.padded(call, sl)
            if m.groups > 1:
                x = x[:, j * cg : (j + 1) * cg]
            cols = unfold(x, tuple(m.kernel_size), tuple(m.stride), tuple(m.dilation))
            if sl == slice(None) and cols.numel() * cols.element_size() <= KEEP_BYTES:
                call.cache[key] = cols
            return cols

        return a_of

    def _weight_pe(self, j: int, cg: int, per: int) -> object:
        def weight_pe(call: Call, gt: Tensor, sl: slice) -> Tensor | None:
            """Per-example weight gradients of group j ``[m, per, cg·Πk]`` from gᵀ ``[m, per, T]``: the
            convolution's own weight-gradient kernel with the m examples as m groups (no unfolded copy), where
            that is faster (see ``DIRECT_RATIO``); elsewhere None (unfold)."""
            m_: nn.modules.conv._ConvNd = self.module  # type: ignore[assignment]
            k = tuple(m_.kernel_size)
            taps = math.prod(k)
            small = taps < DIRECT_MIN_TAPS or cg < DIRECT_MIN_CHANNELS
            if len(k) > 2 or small or gt.shape[-1] < DIRECT_RATIO * cg * taps:
                return None
            zeros = [0] * len(k)
            if m_.padding_mode == "zeros" and not isinstance(m_.padding, str):  # the kernel pads, no padded copy
                x, pad = call.arg(0)[sl], list(m_.padding)
            else:
                x, pad = self.padded(call, sl), zeros
            if m_.groups > 1:
                x = x[:, j * cg : (j + 1) * cg]
            m, sp_out = x.shape[0], tuple(call.outs[0].shape[-len(k) :])
            go = gt.reshape(1, m * per, *sp_out)
            xs = x.reshape(1, m * cg, *x.shape[2:])
            w = xs.new_zeros(()).expand(m * per, cg, *k)
            gw = torch.ops.aten.convolution_backward(
                go, xs, w, None, list(m_.stride), pad, list(m_.dilation), False, zeros, m, [False, True, False]
            )[1]
            return gw.reshape(m, per, cg * taps)

        return weight_pe

    @staticmethod
    def _g_of(start: int, stop: int) -> object:
        def g_of(call: Call, g: Tensor) -> Tensor:  # [R, n, c_out, *spatial] → [R, n, c_out/G, T]
            g = g[:, :, start:stop] if stop - start != g.shape[2] else g
            return g.reshape(g.shape[0], g.shape[1], stop - start, -1)

        return g_of

    def supports(self, call: Call) -> bool:
        return call.arg(0).ndim == self.module.weight.ndim


for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register(_t)(ConvRule)

__all__ = ["ConvRule", "unfold"]
