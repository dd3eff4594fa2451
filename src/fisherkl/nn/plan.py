"""What a network Fisher will cost, before computing it: :func:`plan`.

One forward (and the first-batch checks) on an example batch tells which rule handles each parameter,
the Kronecker factors KFAC would keep, the cotangent rows each example needs (each a backward pass
through the batch) and the size of every representation — so a computation that cannot fit is refused
with the numbers and the cheaper options, never attempted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError
from ..matrix.base import DenseTooLargeError, max_dense_bytes
from .batch import Adapter
from .engine import Engine
from .heads import Head, get_head
from .rows import KINDS
from .stats import groups_by_layer

REPS = ("dense", "diag", "block", "kfac", "ekfac", "lowrank", "implicit")


@dataclass
class Plan:
    """The cost of ``fisherkl.nn.fisher`` on a network (see :func:`plan`)."""

    parameters: int
    kind: str
    rows_per_example: float
    bytes: dict[str, int]
    layers: list[tuple[str, str, str]] = field(default_factory=list)
    element: int = 4

    @property
    def limit(self) -> int:
        """The memory limit for one representation (``fisherkl.matrix.set_max_dense_bytes``), as set now."""
        return max_dense_bytes()

    def fits(self, representation: str) -> bool:
        """Whether the representation fits under the dense-memory limit (``set_max_dense_bytes``)."""
        return self.bytes[representation] <= self.limit

    def check(self, representation: str) -> None:
        """Raise :class:`~fisherkl.matrix.DenseTooLargeError` naming the numbers when it does not fit."""
        if not self.fits(representation):
            cheaper = [r for r in REPS if r != representation and self.fits(r)]
            raise DenseTooLargeError(
                f"representation {representation!r}: {_mib(self.bytes[representation])} for p = {self.parameters} "
                f"parameters, over the limit of {_mib(self.limit)} (fisherkl.matrix.set_max_dense_bytes); "
                f"options that fit: {', '.join(f'{r} ({_mib(self.bytes[r])})' for r in cheaper)}"
            )

    def __str__(self) -> str:
        lines = [
            f"p = {self.parameters} parameters; kind {self.kind!r}: {self.rows_per_example:g} backward rows "
            "per example",
            "representation   size",
        ]
        for r in REPS:
            mark = "" if self.fits(r) else "   (over the limit)"
            lines.append(f"{r:<15} {_mib(self.bytes[r]):>10}{mark}")
        lines.append("parameter                                 rule                      KFAC")
        for name, rule, kfac in self.layers:
            lines.append(f"{name[:40]:<41} {rule[:25]:<25} {kfac}")
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB" if n < 1024**3 else f"{n / 1024**3:.2f} GiB"


def plan(
    net: nn.Module,
    batch: Any,
    head: str | Head | Any = "categorical",
    kind: str = "exact",
    *,
    adapter: Adapter | None = None,
    mc_samples: int = 1,
    rank: int = 10,
    stat_dtype: torch.dtype | None = None,
) -> Plan:
    """The cost of the network Fisher on ``net``, from one example ``batch`` (as the data gives it).

    Returns a :class:`Plan`: the number of parameters, the backward rows per example for ``kind`` (R
    per position for the exact kind — C − 1 for a categorical head — ``mc_samples`` for ``"mc"``, 1 for
    ``"empirical"``), the bytes of every representation (dense p², diag p, block Σ pᵢ², KFAC Σ (d_out² +
    A) + the rest, EKFAC with its eigenbases and scales, low-rank ``rank``·p, implicit none), and for each
    parameter the rule that handles it and its KFAC block. ``print`` it; ``plan.check(representation)``
    raises with the numbers and the options that fit.
    """
    if kind not in KINDS:
        raise ParameterError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    h = get_head(head)
    engine = Engine(net, check=True, adapter=adapter, stat_dtype=stat_dtype)
    with engine:
        b, out = engine.prepare(engine.adapter.batch(batch))
        h.check(out)
        _, mask = engine.adapter.targets(b, out)
        positions = math.prod(out.shape[1:-1])
        live = float(mask.to(torch.float64).mean()) * positions if mask is not None else float(positions)
        if kind == "exact":
            r = h.sqrt_fisher(out.detach()[:1].to(engine.dtype)).shape[-2]
            rows = r * live
        else:
            rows = float(mc_samples if kind == "mc" else 1)
        kron = engine.kron_parts()
    size = torch.empty((), dtype=engine.dtype).element_size()
    p = engine.layout.numel
    inside = {k: (r, part) for r, part in kron for k in (part.weight, part.bias) if k is not None}
    rest = sum(engine.layout.sizes[engine.layout.index(n)] for n in engine.layout.names if n not in inside)
    gg = sum(part.d_out**2 for _, part in kron)
    aa = sum(0 if part.index_input else part.width**2 for _, part in kron)
    diag_a = sum(part.width for _, part in kron if part.index_input)
    block = sum(sum(engine.layout.sizes[engine.layout.index(n)] for n in g) ** 2 for g in groups_by_layer(engine))
    nbytes = {
        "dense": p * p * size,
        "diag": p * size,
        "block": block * size,
        "kfac": (gg + aa + diag_a + rest) * size,
        "ekfac": (gg + aa + sum(part.d_out * part.width for _, part in kron) + rest) * size,
        "lowrank": (min(rank, p) * (p + 1)) * size,
        "implicit": 0,
    }
    layers = []
    for r in engine.active_rules:
        for n in r.names:
            if n in inside:
                part = inside[n][1]
                a = f"[{part.width}] diagonal" if part.index_input else f"{part.width}×{part.width}"
                desc = f"G {part.d_out}×{part.d_out} ⊗ A {a}"
            else:
                desc = "exact diagonal"
            layers.append((n, type(r).__name__, desc))
    return Plan(p, kind, rows, nbytes, layers, size)


__all__ = ["Plan", "plan"]
