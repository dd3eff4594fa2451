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


def convergence(rows: Sequence[CheckRow], *, columns: int = 4) -> Figure:
    """Small multiples: relative error vs |δ| per model (first direction), with fitted slopes."""
    plt = _pyplot()
    rows = [r for r in rows if r.sweeps]
    n = max(len(rows), 1)
    cols = min(columns, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        s = row.sweeps[0]
        ax.loglog(s.steps, s.kl, "o-", ms=3, label=f"KL vs ½δᵀIδ ({row.kl_order:.2f})")
        ax.loglog(s.steps, s.jeffreys, "s-", ms=3, label=f"J vs δᵀIδ ({row.jeffreys_order:.2f})")
        ax.loglog(s.steps, s.midpoint, "^-", ms=3, label=f"J vs midpoint ({row.midpoint_order:.2f})")
        ax.set_title(row.name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(True, which="both", lw=0.3)
    fig.supxlabel("|δ|")
    fig.supylabel("relative error (fitted order)")
    fig.tight_layout()
    return fig


def kl_contours(
    model: Model, theta: Tensor, *, levels: Sequence[float] = (0.005, 0.02, 0.08), grid: int = 61, ax: Any = None
) -> Figure:
    """KL(θ, θ+δ) contours (solid) and Fisher ellipses ½δᵀIδ = c (dashed) for a 2-parameter model."""
    plt = _pyplot()
    if model.dim != 2:
        raise FisherKLError(f"kl_contours needs a 2-parameter model; {model.name} has {model.dim}")
    theta = model.validate(theta).to(torch.float64)
    info = fisher(model, theta)
    assert isinstance(info, Tensor)
    evals = torch.linalg.eigvalsh(info)
    reach = math.sqrt(2 * max(levels) / float(evals.min())) * 1.6
    ax_given = ax is not None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4, 4))
    else:
        fig = ax.figure
    lin = torch.linspace(-reach, reach, grid, dtype=torch.float64)
    dx, dy = torch.meshgrid(lin, lin, indexing="xy")
    delta = torch.stack([dx, dy], -1)
    other = theta + delta
    valid = torch.ones(dx.shape, dtype=torch.bool)
    for i, c in enumerate(model.constraints):
        valid &= c.check(other[..., i])
    values = torch.full(dx.shape, math.nan, dtype=torch.float64)
    for r in range(grid):  # row by row: a point outside a joint constraint or a failed quadrature costs one row
        pts = other[r][valid[r]]
        if pts.shape[0] == 0:
            continue
        try:
            model.validate(pts)
        except FisherKLError:
            keep = torch.tensor([_valid(model, p) for p in pts], dtype=torch.bool)
            idx = valid[r].nonzero().squeeze(-1)[~keep]
            valid[r, idx] = False
            pts = other[r][valid[r]]
        try:
            values[r, valid[r]] = kl(model, theta.expand_as(pts), pts).detach()  # type: ignore[union-attr]
        except FisherKLError:
            continue
    quad = 0.5 * torch.einsum("...i,ij,...j->...", delta, info, delta)
    ax.contour(
        dx.numpy() + float(theta[0]),
        dy.numpy() + float(theta[1]),
        values.numpy(),
        levels=sorted(levels),
        colors="C0",
        linewidths=1.2,
    )
    ax.contour(
        dx.numpy() + float(theta[0]),
        dy.numpy() + float(theta[1]),
        quad.numpy(),
        levels=sorted(levels),
        colors="C3",
        linestyles="--",
        linewidths=1.0,
    )
    ax.plot([float(theta[0])], [float(theta[1])], "k+")
    ax.set_xlabel(model.names[0], fontsize=8)
    ax.set_ylabel(model.names[1], fontsize=8)
    ax.set_title(f"{model.name}: KL (solid) vs ½δᵀIδ (dashed)", fontsize=8)
    ax.tick_params(labelsize=7)
    if not ax_given:
        fig.tight_layout()
    return fig


def _valid(model: Model, theta: Tensor) -> bool:
    try:
        model.validate(theta)
    except FisherKLError:
        return False
    return True


def kl_contour_grid(models: Sequence[Model], thetas: Sequence[Tensor], *, columns: int = 4) -> Figure:
    """:func:`kl_contours` for several 2-parameter models, side by side."""
    plt = _pyplot()
    n = max(len(models), 1)
    cols = min(columns, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    for ax, m, t in zip(axes.flat, models, thetas):
        kl_contours(m, t, ax=ax)
    fig.tight_layout()
    return fig


def spectrum(models: Sequence[Model], thetas: Sequence[Tensor]) -> Figure:
    """Eigenvalues of I(θ) per model (log scale): how anisotropic each metric is."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(models)), 3.2))
    for i, (m, t) in enumerate(zip(models, thetas)):
        info = fisher(m, t)
        assert isinstance(info, Tensor)
        ev = torch.linalg.eigvalsh(info.detach()).clamp(min=1e-300)
        ax.scatter([i] * len(ev), ev.numpy(), s=12)
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)))
    ax.set_xticklabels([m.name for m in models], rotation=70, fontsize=7)
    ax.set_ylabel("eigenvalues of I(θ)")
    ax.set_title("Fisher eigen-spectrum at the typical θ", fontsize=9)
    ax.grid(True, axis="y", lw=0.3)
    fig.tight_layout()
    return fig
