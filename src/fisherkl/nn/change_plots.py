"""Plots of change costs: a pruning curve (predicted vs exact KL against sparsity) and per-layer quantisation
sensitivity. Need matplotlib (the ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import FisherKLError

if TYPE_CHECKING:
    from .quantize import Sensitivity


def _pyplot(path: str | None) -> Any:
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FisherKLError("plots need matplotlib: pip install 'fisherkl[plot]'") from exc
    return plt


def pruning_plot(
    sparsities: Sequence[float],
    curves: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]],
    path: str | None = None,
    title: str = "pruning",
) -> Any:
    """One line pair per method: predicted (dashed) and exact (solid) KL against sparsity, log scale.
    ``curves[label] = (predicted, exact)``."""
    plt = _pyplot(path)
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    for k, (label, (pred, exact)) in enumerate(curves.items()):
        color = f"C{k}"
        pts = [(s, v) for s, v in zip(sparsities, exact) if v is not None and v > 0]
        if pts:
            ax.semilogy(*zip(*pts), "o-", color=color, ms=3, label=f"{label}: exact")
        pts = [(s, v) for s, v in zip(sparsities, pred) if v is not None and v > 0]
        if pts:
            ax.semilogy(*zip(*pts), "x--", color=color, ms=4, label=f"{label}: ½δᵀFδ")
    ax.set_xlabel("sparsity", fontsize=8)
    ax.set_ylabel("mean KL (nats)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", lw=0.3)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _short(name: str) -> str:
    for a, b in ((".weight", ""), ("self_attn.", "attn."), ("blocks.", ""), ("layers.", ""), ("_weight", "")):
        name = name.replace(a, b)
    return name


def sensitivity_plot(sens: Sensitivity, path: str | None = None) -> Any:
    """Per tensor (x) the exact KL (bars) and each representation's prediction (markers), one row of the
    figure per bit width, log scale."""
    plt = _pyplot(path)
    names = list(dict.fromkeys(r.name for r in sens.rows))
    width = max(4.6, 0.28 * len(names) + 1.2)
    fig, axes = plt.subplots(len(sens.bits), 1, figsize=(width, 2.1 * len(sens.bits) + 0.8), squeeze=False)
    markers = "ox^sv*"
    xs = list(range(len(names)))
    for k_ax, (ax, b) in enumerate(zip(axes[:, 0], sens.bits)):
        rows = {r.name: r for r in sens.rows if r.bits == b}
        exact = [rows[n].exact for n in names]
        if all(e is not None for e in exact):
            ax.bar(xs, exact, color="0.82", label="exact")
        for k, rep in enumerate(sens.representations):
            ax.plot(xs, [rows[n].predicted[rep] for n in names], markers[k % 6], ms=4, label=f"½δᵀFδ {rep}")
        ax.set_yscale("log")
        ax.set_ylabel(f"{b} bits: KL", fontsize=8)
        ax.set_xticks(xs)
        last = k_ax == len(sens.bits) - 1
        ax.set_xticklabels([_short(n) for n in names] if last else [], rotation=60, fontsize=6, ha="right")
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", which="both", lw=0.3)
    axes[0][0].set_title("Quantising one tensor alone: exact KL (bars) and predicted KL (markers)", fontsize=9)
    axes[0][0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


__all__ = ["pruning_plot", "sensitivity_plot"]
