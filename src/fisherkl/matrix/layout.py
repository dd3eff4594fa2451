"""Parameter layouts: how a flat vector of p numbers maps onto named, shaped parameters.

Every Fisher matrix acts on vectors of length ``p`` (the number of parameters). A user may give a
vector as a flat tensor ``[p]`` (or a matrix of columns ``[p, k]``), as a list of parameter-shaped
tensors in the layout's order, or as a dict ``name -> tensor``; results come back in the same form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ParameterError

Vector = Tensor | Sequence[Tensor] | Mapping[str, Tensor]


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of parameters, in flat order; ``offsets[i]`` is where parameter i starts."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, named: Iterable[tuple[str, Tensor]]) -> ParamLayout:
        """The layout of ``(name, tensor)`` pairs, e.g. ``net.named_parameters()``."""
        pairs = list(named)
        return cls(tuple(n for n, _ in pairs), tuple(tuple(t.shape) for _, t in pairs))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, at = [], 0
        for s in self.sizes:
            out.append(at)
            at += s
        return tuple(out)

    @property
    def numel(self) -> int:
        """p, the total number of parameters."""
        return sum(self.sizes)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ParameterError(f"no parameter named {name!r}; parameters: {', '.join(self.names)}") from None

    def slice(self, name: str) -> slice:
        """Where parameter ``name`` lives in the flat vector."""
        i = self.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def indices(self, names: Sequence[str], device: torch.device | None = None) -> Tensor:
        """Flat indices of the parameters ``names``, concatenated in the given order."""
        parts = [torch.arange(s.start, s.stop, device=device) for s in (self.slice(n) for n in names)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=device)

    # --- conversions -------------------------------------------------------------------------
    def flatten(self, v: Any, what: str = "v") -> tuple[Tensor, str]:
        """``v`` as a flat tensor ``[p]`` or ``[p, k]``, and the form it came in."""
        p = self.numel
        if isinstance(v, Tensor):
            if v.ndim in (1, 2) and v.shape[0] == p:
                return v, "flat"
            raise ParameterError(
                f"{what} must have shape [{p}] or [{p}, k] (p = number of parameters), got {tuple(v.shape)}"
            )
        if isinstance(v, Mapping):
            missing = [n for n in self.names if n not in v]
            extra = [n for n in v if n not in self.names]
            if missing or extra:
                raise ParameterError(
                    f"{what}: dict keys must be the parameter names; missing {missing}, unknown {extra}"
                )
            return self._cat([v[n] for n in self.names], what), "dict"
        if isinstance(v, (list, tuple)):
            if len(v) != len(self.names):
                raise ParameterError(f"{what}: expected {len(self.names)} parameter-shaped tensors, got {len(v)}")
            return self._cat(list(v), what), "list"
        raise ParameterError(f"{what} must be a tensor, a list of tensors or a dict of tensors, got {type(v).__name__}")

    def _cat(self, parts: list[Tensor], what: str) -> Tensor:
        flat = []
        for name, shape, t in zip(self.names, self.shapes, parts):
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ParameterError(f"{what}[{name!r}] must have shape {shape}, got {got}")
            flat.append(t.reshape(-1))
        return torch.cat(flat)

    def unflatten(self, flat: Tensor, form: str) -> Vector:
        """Inverse of :meth:`flatten` for a flat ``[p]`` result."""
        if form == "flat" or flat.ndim != 1:
            return flat
        parts = [flat[o : o + s].reshape(shape) for o, s, shape in zip(self.offsets, self.sizes, self.shapes)]
        if form == "dict":
            return dict(zip(self.names, parts))
        return parts

    def state(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ParamLayout:
        return cls(tuple(state["names"]), tuple(tuple(int(i) for i in s) for s in state["shapes"]))
