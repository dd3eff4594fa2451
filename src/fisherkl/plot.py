"""Pictures of the seeds' relation (needs matplotlib: ``pip install fisherkl[plot]``).

* :func:`convergence`: relative error of ½δᵀIδ vs KL (and of the Jeffreys forms) against |δ|,
  log-log, with the fitted slopes — the O(|δ|) and O(|δ|²) laws made visible.
* :func:`kl_contours`: for a 2-parameter model, contours of KL(θ, θ+δ) around θ beside the
  Fisher ellipses ½δᵀIδ = c at the same levels.
* :func:`spectrum`: the eigenvalues of I(θ) for several models.

Each returns a matplotlib ``Figure``; nothing is shown or written unless you do it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .convergence import CheckRow
from .divergence import kl
from .errors import FisherKLError
from .fisher import fisher
from .model import Model

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, or a FisherKLError saying how to install it."""
    return _pyplot()


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FisherKLError("fisherkl.plot needs matplotlib: pip install 'fisherkl[plot]'") from exc
    return plt


def _at_least_two_decades(ax: Any, values: Sequence[float]) -> None:
    """Log y limits spanning at least two decades, so every panel shows three or more labelled ticks."""
    pos = [v for v in values if v > 0 and math.isfinite(v)]
    if not pos:
        return
    lo, hi = math.floor(math.log10(min(pos))), math.ceil(math.log10(max(pos)))
    if hi - lo < 2:
        mid = (lo + hi) / 2
        lo, hi = math.floor(mid - 1), math.ceil(mid + 1)
    ax.set_ylim(10.0**lo, 10.0**hi)


def convergence(rows: Sequence[CheckRow], *, columns: int = 3) -> Figure:
    """Small multiples: relative error vs |δ| per model (first direction), fitted orders in the legend.

    Sized for a page about 800 px wide at 100 dpi: every panel has its own axis labels.
    """
    plt = _pyplot()
    rows = [r for r in rows if r.sweeps]
    n = max(len(rows), 1)
    cols = min(columns, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.75 * cols, 2.45 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        s = row.sweeps[0]
        ax.loglog(s.steps, s.kl, "o-", ms=3, label=f"KL: {row.kl_order:.2f}")
        ax.loglog(s.steps, s.jeffreys, "s-", ms=3, label=f"J: {row.jeffreys_order:.2f}")
        ax.loglog(s.steps, s.midpoint, "^-", ms=3, label=f"J mid: {row.midpoint_order:.2f}")
        _at_least_two_decades(ax, [*s.kl, *s.jeffreys, *s.midpoint])
        ax.set_title(row.name, fontsize=10)
        ax.set_xlabel("|δ|", fontsize=9, labelpad=1)
        ax.set_ylabel("relative error", fontsize=9, labelpad=1)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="lower right", handlelength=1.5, borderpad=0.3, labelspacing=0.2)
        ax.grid(True, which="major", lw=0.3)
    fig.suptitle("Relative error of KL vs ½δᵀIδ, J vs δᵀIδ and J at the midpoint (fitted orders)", fontsize=10, y=1.0)
    fig.tight_layout()
    return fig


def kl_contours(
    model: Model,
    theta: Tensor,
    *,
    levels: Sequence[float] = (0.005, 0.02, 0.08),
    grid: int = 41,
    ax: Any = None,
    label_levels: bool = True,
) -> Figure:
    """KL(θ, θ+δ) contours (solid, labelled) and Fisher ellipses ½δᵀIδ = c (dashed) for a 2-parameter model.

    Each axis spans its own parameter's scale: ±1.6 times the largest ellipse's extent along that
    coordinate, √(2 c_max (I⁻¹)ᵢᵢ), so parameters of very different sizes stay readable. The KL is
    evaluated in batches of 64 points (points outside the model's constraints are left blank; a
    batch that fails is split until the failing points are found).
    """
    plt = _pyplot()
    if model.dim != 2:
        raise FisherKLError(f"kl_contours needs a 2-parameter model; {model.name} has {model.dim}")
    if not (isinstance(grid, int) and grid >= 5):
        raise FisherKLError(f"kl_contours: grid must be an integer >= 5, got {grid!r}")
    theta = model.validate(theta).to(torch.float64)
    info = fisher(model, theta)
    assert isinstance(info, Tensor)
    chol, bad = torch.linalg.cholesky_ex(info.detach())
    if int(bad) != 0:
        raise FisherKLError(f"kl_contours: the Fisher information of {model.name} is singular at θ; no ellipses")
    half = 1.6 * torch.sqrt(2 * max(levels) * torch.cholesky_inverse(chol).diagonal())
    ax_given = ax is not None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    lx = torch.linspace(-float(half[0]), float(half[0]), grid, dtype=torch.float64)
    ly = torch.linspace(-float(half[1]), float(half[1]), grid, dtype=torch.float64)
    dx, dy = torch.meshgrid(lx, ly, indexing="xy")
    delta = torch.stack([dx, dy], -1)
    other = theta + delta
    valid = torch.ones(dx.shape, dtype=torch.bool)
    for i, c in enumerate(model.constraints):
        valid &= c.check(other[..., i])
    flat = other[valid]
    ok = _valid_mask(model, flat)
    values = torch.full(dx.shape, math.nan, dtype=torch.float64)
    inside = values[valid]
    pts = flat[ok]
    # chunks: a quadrature refines a whole batch to the level its hardest point needs
    chunks = [_kl_where_possible(model, theta, pts[i : i + 64]) for i in range(0, pts.shape[0], 64)]
    inside[ok] = torch.cat(chunks) if chunks else inside[ok]
    values[valid] = inside
    quad = 0.5 * torch.einsum("...i,ij,...j->...", delta, info.detach(), delta)
    x, y = dx.numpy() + float(theta[0]), dy.numpy() + float(theta[1])
    lv = sorted(levels)
    solid = ax.contour(x, y, values.numpy(), levels=lv, colors="C0", linewidths=1.3)
    ax.contour(x, y, quad.numpy(), levels=lv, colors="C3", linestyles="--", linewidths=1.0)
    if label_levels and solid.allsegs and any(len(s) for s in solid.allsegs):
        ax.clabel(solid, fmt={v: f"{v:g}" for v in lv}, fontsize=7, inline=True)
    ax.plot([float(theta[0])], [float(theta[1])], "k+")
    ax.set_xlabel(model.names[0], fontsize=9, labelpad=1)
    ax.set_ylabel(model.names[1], fontsize=9, labelpad=1)
    ax.set_title(model.name, fontsize=10)
    ax.tick_params(labelsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(4))
    if not ax_given:
        fig.tight_layout()
    return fig


def _valid_mask(model: Model, points: Tensor) -> Tensor:
    """Which points ``[n, d]`` the model accepts, by bisection (one validation for a valid batch)."""
    if points.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    try:
        model.validate(points)
        return torch.ones(points.shape[0], dtype=torch.bool)
    except FisherKLError:
        if points.shape[0] == 1:
            return torch.zeros(1, dtype=torch.bool)
    mid = points.shape[0] // 2
    return torch.cat([_valid_mask(model, points[:mid]), _valid_mask(model, points[mid:])])


def _kl_where_possible(model: Model, theta: Tensor, points: Tensor) -> Tensor:
    """KL(θ, point) for each point, NaN where the divergence cannot be computed (batch split on failure)."""
    if points.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    try:
        out = kl(model, theta.expand_as(points), points)
        assert isinstance(out, Tensor)
        return out.detach()
    except FisherKLError:
        if points.shape[0] == 1:
            return torch.full((1,), math.nan, dtype=torch.float64)
    mid = points.shape[0] // 2
    return torch.cat([_kl_where_possible(model, theta, points[:mid]), _kl_where_possible(model, theta, points[mid:])])


def kl_contour_grid(models: Sequence[Model], thetas: Sequence[Tensor], *, columns: int = 3) -> Figure:
    """:func:`kl_contours` for several 2-parameter models, side by side (labelled levels, one legend)."""
    plt = _pyplot()
    n = max(len(models), 1)
    cols = min(columns, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(2.75 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    for ax, m, t in zip(axes.flat, models, thetas):
        kl_contours(m, t, ax=ax)
    handles = [plt.Line2D([], [], color="C0", lw=1.3), plt.Line2D([], [], color="C3", ls="--", lw=1.0)]
    fig.legend(handles, ["KL(θ, θ+δ) = c", "½δᵀI(θ)δ = c"], loc="upper center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.6 * nrows)))
    return fig


def spectrum(models: Sequence[Model], thetas: Sequence[Tensor]) -> Figure:
    """Eigenvalues of I(θ) per model (log scale): how anisotropic each metric is."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 3.4))
    for i, (m, t) in enumerate(zip(models, thetas)):
        info = fisher(m, t)
        assert isinstance(info, Tensor)
        ev = torch.linalg.eigvalsh(info.detach()).clamp(min=1e-300)
        ax.scatter([i] * len(ev), ev.numpy(), s=12)
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([m.name for m in models], rotation=70, fontsize=8)
    ax.set_ylabel("eigenvalues of I(θ)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("Fisher eigen-spectrum at the typical θ", fontsize=10)
    ax.grid(True, axis="y", lw=0.3)
    fig.tight_layout()
    return fig
