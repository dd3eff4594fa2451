"""Quantisation sensitivity: the predicted and exact KL of quantising each layer alone.

Quantising the weights W_l of one layer changes the network by δ_l = Q(W_l) − W_l (zero elsewhere), at a
predicted cost ½δ_lᵀF δ_l nats of mean KL — the KL of the **actual rounding**, where a Hessian-trace
sensitivity (HAWQ-V2, Dong et al. 2020) uses ½(tr F_ll / n_l)·|δ_l|², as if the rounding error were
isotropic. :func:`quantization_sensitivity` gives both, per layer and bit width, beside the exact KL;
:func:`fisherkl.nn.bits.allocate_bits` turns either into a bit allocation under a size budget.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError, ParameterError
from ..matrix import FisherMatrix
from .batch import Adapter
from .change import FisherSpec, resolve_fishers, select_params
from .heads import Head, get_head
from .kl import kl as nn_kl
from .params import layout_of, parameters_vector, perturbed

Quantizer = Callable[[Tensor, int], Tensor]


def round_to_nearest(w: Tensor, bits: int, axis: int = 0) -> Tensor:
    """Symmetric round-to-nearest with one scale per channel (slices along ``axis``; one scale for a 1-D
    tensor): s = max|w| / (2^(b−1) − 1) over the channel, Q(w) = s·clamp(round(w/s), −(2^(b−1) − 1),
    2^(b−1) − 1). Idempotent (Q(Q(w)) = Q(w)); |Q(w) − w| ≤ s/2; at most 2^b − 1 levels per channel."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
        raise ParameterError(f"bits must be an integer >= 2 (symmetric: 2^(b-1) - 1 > 0 levels a side), got {bits!r}")
    if not w.is_floating_point():
        raise ParameterError(f"round_to_nearest: w must be a floating tensor, got {w.dtype}")
    qmax = 2 ** (bits - 1) - 1
    if w.ndim <= 1:
        amax = w.abs().max() if w.numel() else w.new_zeros(())
    else:
        ax = axis % w.ndim
        dims = [d for d in range(w.ndim) if d != ax]
        amax = w.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def quantize(
    net: nn.Module, bits: int | Mapping[str, int], quantizer: Quantizer | None = None, params: Any = None
) -> nn.Module:
    """A copy of ``net`` with the selected weights quantised: ``bits`` one width for all, or name → width
    (the names given are the ones quantised); ``quantizer(w, bits)`` (default :func:`round_to_nearest`);
    ``params`` as in :func:`fisherkl.nn.prune.prune` (default: every weight with ≥ 2 dimensions)."""
    q = quantizer or round_to_nearest
    names = list(bits) if isinstance(bits, Mapping) else select_params(net, params)
    plan = dict(bits) if isinstance(bits, Mapping) else dict.fromkeys(names, bits)
    out = copy.deepcopy(net)
    named = dict(out.named_parameters())
    unknown = [n for n in plan if n not in named]
    if unknown:
        raise ParameterError(f"bits: unknown parameter names {unknown}")
    with torch.no_grad():
        for n, b in plan.items():
            new = q(named[n].detach(), b)
            if not isinstance(new, Tensor) or new.shape != named[n].shape:
                raise FisherKLError(f"quantizer: for {n!r} it must return a tensor of shape {tuple(named[n].shape)}")
            named[n].copy_(new)
    return out


@dataclass
class SensitivityRow:
    """Quantising parameter ``name`` (``numel`` weights) alone to ``bits``: ``predicted[r]`` = ½δᵀF_rδ,
    ``trace[r]`` = ½(tr F_r,ll / n_l)|δ|², ``exact`` the mean KL (None without data), |δ| ``norm``."""

    name: str
    bits: int
    numel: int
    norm: float
    predicted: dict[str, float]
    trace: dict[str, float]
    exact: float | None


@dataclass
class Sensitivity:
    """Per-layer, per-bit-width costs of quantisation; ``costs(source)`` feeds :func:`allocate_bits`."""

    rows: list[SensitivityRow]
    representations: list[str]
    bits: list[int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        return {r.name: r.numel for r in self.rows}

    def costs(self, source: str) -> dict[str, dict[int, float]]:
        """name → {bits: cost} with ``source`` a representation (its predicted KL), ``"trace:<rep>"`` (the
        Fisher-trace proxy) or ``"exact"``."""
        out: dict[str, dict[int, float]] = {}
        for r in self.rows:
            if source == "exact":
                if r.exact is None:
                    raise ParameterError("costs('exact'): the sensitivity was computed without data")
                v = r.exact
            elif source.startswith("trace:"):
                v = r.trace[source[6:]]
            else:
                if source not in r.predicted:
                    raise ParameterError(f"costs: unknown source {source!r}; representations: {self.representations}")
                v = r.predicted[source]
            out.setdefault(r.name, {})[r.bits] = v
        return out

    def records(self) -> list[dict[str, Any]]:
        return [dict(r.__dict__) for r in self.rows]

    def to_text(self) -> str:
        reps = self.representations
        head = f"{'parameter':<26}{'bits':>5}" + "".join(f"{r:>11}" for r in reps) + f"{'exact':>11}"
        lines = ["Quantising one layer alone: predicted KL ½δᵀFδ vs exact KL (nats)", head]
        for r in self.rows:
            ex = "—" if r.exact is None else f"{r.exact:.3g}"
            lines.append(
                f"{r.name[:26]:<26}{r.bits:>5}" + "".join(f"{r.predicted[k]:>11.3g}" for k in reps) + f"{ex:>11}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, path: str | None = None) -> Any:
        """Predicted (one marker per representation) and exact KL per layer, one panel per bit width."""
        from .change_plots import sensitivity_plot

        return sensitivity_plot(self, path)


def quantization_sensitivity(
    net: nn.Module,
    fisher: FisherSpec,
    data: Any = None,
    head: str | Head | Any = "categorical",
    bits: Sequence[int] = (8, 4, 3),
    *,
    quantizer: Quantizer | None = None,
    params: Any = None,
    exact: bool = True,
    kind: str = "exact",
    batch_size: int = 256,
    adapter: Adapter | None = None,
    positions: str = "sum",
    fisher_kwargs: Mapping[str, Any] | None = None,
) -> Sensitivity:
    """For every selected parameter and bit width: the predicted KL of quantising it alone under each
    Fisher representation, the Fisher-trace proxy, and (with ``data`` and ``exact``) the exact mean KL.

    ``fisher`` as in :func:`fisherkl.nn.predict_kl` (matrices, or names computed on ``data``);
    ``quantizer(w, bits)`` defaults to :func:`round_to_nearest` (per output channel, symmetric); ``params``
    defaults to every weight with ≥ 2 dimensions (biases and norms stay in full precision)."""
    h = get_head(head)
    bit_list = [int(b) for b in bits]
    if not bit_list:
        raise ParameterError("bits: give at least one bit width")
    q = quantizer or round_to_nearest
    fkw = {"adapter": adapter, "positions": positions, "batch_size": batch_size, **dict(fisher_kwargs or {})}
    mats = resolve_fishers(net, fisher, data, h, kind, fkw)
    if exact and data is None:
        raise ParameterError("data is needed for the exact KL (or pass exact=False)")
    layout = layout_of(net)
    names = select_params(net, params)
    w = parameters_vector(net)
    named = dict(net.named_parameters())
    cases: list[tuple[str, int, Tensor]] = []
    for n in names:
        for b in bit_list:
            with torch.no_grad():
                new = q(named[n].detach(), b)
            if not isinstance(new, Tensor) or new.shape != named[n].shape:
                raise FisherKLError(f"quantizer: for {n!r} it must return a tensor of shape {tuple(named[n].shape)}")
            d = torch.zeros_like(w)
            d[layout.slice(n)] = (new.to(w) - named[n].detach()).reshape(-1)
            cases.append((n, b, d))
    cols = torch.stack([d for _, _, d in cases], 1)
    preds = {r: (0.5 * m.quad(cols.to(dtype=m.dtype, device=m.device))).tolist() for r, m in mats.items()}
    traces = {}
    for r, m in mats.items():
        dg = m.diag()
        assert isinstance(dg, Tensor)
        traces[r] = {n: float(dg[layout.slice(n)].mean()) for n in names}
    kw = {"batch_size": batch_size, "adapter": adapter, "positions": positions}
    rows = []
    for j, (n, b, d) in enumerate(cases):
        sq = float((d * d).sum())
        ex = float(nn_kl(net, perturbed(net, d), data, h, **kw)) if exact else None
        rows.append(
            SensitivityRow(
                n,
                b,
                named[n].numel(),
                sq**0.5,
                {r: float(preds[r][j]) for r in mats},
                {r: 0.5 * traces[r][n] * sq for r in mats},
                ex,
            )
        )
    return Sensitivity(rows, list(mats), bit_list)


def quantized_cost(
    net: nn.Module, plan: Mapping[str, int], fisher: FisherMatrix | None, quantizer: Quantizer | None = None
) -> tuple[nn.Module, Tensor, float | None]:
    """(the quantised copy, δ flat, ½δᵀFδ) for a bit allocation ``plan`` (name → bits)."""
    qnet = quantize(net, plan, quantizer)
    delta = parameters_vector(qnet) - parameters_vector(net)
    pred = None if fisher is None else 0.5 * float(fisher.quad(delta.to(fisher.dtype)))
    return qnet, delta, pred


__all__ = [
    "Quantizer",
    "Sensitivity",
    "SensitivityRow",
    "quantization_sensitivity",
    "quantize",
    "quantized_cost",
    "round_to_nearest",
]
