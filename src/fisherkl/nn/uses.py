"""Linear uses of parameters outside the modules that own them, seen during the engine's forwards.

A tied output head written ``F.linear(h, self.tok.weight)``, ``h @ self.tok.weight.T`` or
``h @ self.w`` uses a parameter outside the forward of the module that owns it, so no hook of that
module sees it. A ``TorchFunctionMode`` active during the engine's forwards records such calls (the
functions ``F.linear`` and ``matmul``/``@`` with a parameter, or its transpose, as the weight) as calls
of a :class:`FunctionalLinearRule` — a linear map with the usual per-example gradients — so the
parameter's Fisher is the sum of both uses without the whole-network fallback. Any other use outside
the owner is left to the first-batch check (and :class:`~fisherkl.nn.rules.network.NetworkRule`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .rules import Call
from .rules.linear import LinearPart, PartsRule, positions_views

_T_GETTERS = {torch.Tensor.T, torch.Tensor.mT, torch._C.TensorBase.T, torch._C.TensorBase.mT}
_TRANSPOSES = {torch.Tensor.t, torch._C.TensorBase.t, torch.t}
_MATMULS = {torch.matmul, torch.Tensor.matmul, torch._C.TensorBase.matmul, torch.Tensor.__matmul__}


class FunctionalLinearRule(PartsRule):
    """y = x Wᵀ (+ b) with W a parameter used as a weight outside its module (``transposed``: y = x W)."""

    functional = True

    def __init__(
        self, owner: nn.Module, weight: str, bias: str | None, shape: tuple[int, ...], transposed: bool
    ) -> None:
        super().__init__(owner, f"<{weight} used in a functional {'matmul' if transposed else 'linear'}>", [])
        self.names = [weight] + ([bias] if bias is not None else [])
        d_out, d_in = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
        self.parts = [
            LinearPart(weight, bias, shape, d_out, d_in, *positions_views(d_in, d_out), transposed=transposed)
        ]

    def __repr__(self) -> str:
        return f"FunctionalLinearRule({self.module_name})"


class ParameterUses(TorchFunctionMode):
    """Records linear uses of parameters outside their owners' forwards (see the module doc)."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine
        self.views: dict[int, tuple[Tensor, str]] = {}  # transposed views of parameters made outside their owners

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.engine.recording or not isinstance(out, Tensor):
            return out
        if (getattr(func, "__self__", None) in _T_GETTERS or func in _TRANSPOSES) and args:
            name = self._outside(args[0])
            if name is not None and args[0].ndim == 2:
                self.views[id(out)] = (out, name)
            return out
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if (name := self._outside(w)) is not None:
                return self._use(name, self._outside(b) if b is not None else None, False, x, out)
            if isinstance(w, Tensor) and id(w) in self.views and b is None:
                return self._use(self.views[id(w)][1], None, True, x, out)
            return out
        if func in _MATMULS and len(args) == 2:
            x, w = args
            if isinstance(w, Tensor) and id(w) in self.views and self.views[id(w)][0] is w:
                return self._use(self.views[id(w)][1], None, False, x, out)
            if (name := self._outside(w)) is not None and w.ndim == 2:
                return self._use(name, None, True, x, out)
        return out

    def _outside(self, t: Any) -> str | None:
        """The layout name of ``t`` if it is a trainable parameter whose owners are not running now."""
        if not isinstance(t, nn.Parameter):
            return None
        eng = self.engine
        name = eng.name_of.get(id(t))
        if name is None or any(eng.active.get(i, 0) for i in eng.owner_modules.get(name, ())):
            return None
        return name

    def _use(self, weight: str, bias: str | None, transposed: bool, x: Tensor, out: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim < 2:
            return out
        rule = self.engine.functional_rule(weight, bias, transposed)
        call = Call((x.detach(),), {}, [out], n=self.engine.n)
        replaced = self.engine._classify(rule, call, out)
        return out if replaced is None else replaced


__all__ = ["FunctionalLinearRule", "ParameterUses"]
