"""Taps: identity nodes on recorded layer outputs that hand each output's gradient to the engine as soon as the
backward pass computes it.

A tap is ``y = x`` (a view of ``x``, or a copy when the network edits ``y`` in place) whose backward calls
``engine.on_tap(slot, g)`` with g = ∂L/∂y and passes g on unchanged. Every tap also takes a shared zero-dimensional
leaf ``z`` and returns 0 for it, so ``torch.autograd.grad(L, [z])`` runs exactly the nodes between the outputs and
the taps (never the weights' gradients) and captures nothing but a scalar: each layer's output gradient can be
turned into statistics and dropped while the backward pass goes on, and so can the layer's recorded inputs after
the last row. Peak memory then follows a training step's instead of holding every layer's gradient at once.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor


class Slot:
    """Where a tapped tensor was recorded: output ``index`` of ``call`` (bound when the call is recorded). Taps hold
    their call and engine weakly: a recorded output holds its tap, so strong references would make cycles that only
    the garbage collector frees."""

    __slots__ = ("_ref", "index")

    def __init__(self, call: Any = None, index: int = 0) -> None:
        self._ref: Any = None
        self.index = index
        if call is not None:
            self.bind(call, index)

    def bind(self, call: Any, index: int) -> None:
        self._ref, self.index = weakref.ref(call), index

    @property
    def call(self) -> Any:
        return None if self._ref is None else self._ref()


class Tap(torch.autograd.Function):
    """``y = x``; backward: ``engine.on_tap(slot, ∂L/∂y)``, then ∂L/∂x = ∂L/∂y and 0 for the leaf ``z``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, z: Tensor, engine: Any, slot: Slot, copy: bool) -> Tensor:  # type: ignore[override]
        ctx.engine, ctx.slot = weakref.ref(engine), slot
        ctx.z_meta = (z.dtype, z.device)
        return x.clone() if copy else x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None, None, None]:  # type: ignore[override]
        engine = ctx.engine()
        if engine is not None:
            engine.on_tap(ctx.slot, g)
        dtype, device = ctx.z_meta
        return g, torch.zeros((), dtype=dtype, device=device), None, None, None


def is_inplace_on_tap(exc: BaseException) -> bool:
    """Whether ``exc`` is autograd's refusal of an in-place edit of a tap's view (the network modifies a recorded
    layer output in place, e.g. ``nn.ReLU(inplace=True)`` after a convolution)."""
    return isinstance(exc, RuntimeError) and "created inside a custom Function" in str(exc)


__all__ = ["Slot", "Tap", "is_inplace_on_tap"]
