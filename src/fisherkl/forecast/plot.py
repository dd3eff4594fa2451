"""Triangle plots of Fisher forecasts (needs matplotlib).

Each panel is drawn in its parameters' own units, over fiducial ± ``span`` marginalised σ of the
first forecast, so parameters of very different scales are all readable. Diagonal: the
marginalised 1-D Gaussian (peak 1). Below it: the ``levels`` confidence ellipses of each pair
(default 1σ and 2σ of a 2-D Gaussian: 68.3 % and 95.4 %).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ParameterError
from .forecast import LEVELS_2D, Forecast

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def triangle(
    forecasts: Sequence[Forecast],
    names: Sequence[str] | None = None,
    *,
    levels: Sequence[float] = LEVELS_2D,
    labels: Sequence[str] | None = None,
    span: float = 3.5,
    size: float = 2.0,
) -> Figure:
    """A triangle plot of one or more forecasts over ``names`` (default: the first one's).

    ``labels`` name the forecasts in a legend; ``size`` is the panel size in inches.
    """
    from ..plot import pyplot

    plt = pyplot()
    if not forecasts:
        raise ParameterError("triangle: give at least one Forecast")
    names = list(names) if names is not None else list(forecasts[0].names)
    subs = [f.select(*names) for f in forecasts]
    sigma = subs[0].marginal_errors()
    centre = subs[0].fiducial
    lims = [(float(c - span * s), float(c + span * s)) for c, s in zip(centre, sigma)]
    d = len(names)
    fig, axes = plt.subplots(d, d, figsize=(size * d + 0.6, size * d + 0.4), squeeze=False)
    colors = [f"C{i}" for i in range(len(subs))]
    for row in range(d):
        for col in range(d):
            ax = axes[row, col]
            if col > row:
                ax.axis("off")
                continue
            ax.set_xlim(*lims[col])
            if row == col:
                _diagonal(ax, subs, col, lims[col], colors)
            else:
                ax.set_ylim(*lims[row])
                for sub, color in zip(subs, colors):
                    for k, level in enumerate(sorted(levels)):
                        pts = sub.ellipse(names[col], names[row], level).numpy()
                        ax.plot(pts[:, 0], pts[:, 1], color=color, lw=1.4 - 0.4 * k)
                        ax.fill(pts[:, 0], pts[:, 1], color=color, alpha=0.18 - 0.06 * k, lw=0)
                ax.plot([float(centre[col])], [float(centre[row])], "k+", ms=6)
            _ticks(ax, row, col, d, names)
    if labels is not None:
        handles = [plt.Line2D([], [], color=c, lw=2) for c in colors]
        fig.legend(handles, list(labels), loc="upper right", fontsize=10, frameon=False)
    fig.tight_layout(pad=0.4)
    return fig


def _diagonal(ax: Any, subs: Sequence[Forecast], i: int, lim: tuple[float, float], colors: Sequence[str]) -> None:
    x = torch.linspace(lim[0], lim[1], 301, dtype=torch.float64)
    for sub, color in zip(subs, colors):
        s = float(sub.marginal_errors()[i])
        c = float(sub.fiducial[i])
        ax.plot(x.numpy(), torch.exp(-0.5 * ((x - c) / s) ** 2).numpy(), color=color, lw=1.4)
    ax.set_ylim(0, 1.08)
    ax.set_yticks([])


def _ticks(ax: Any, row: int, col: int, d: int, names: Sequence[str]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(3, prune="both"))
    # no offset text ("+1.2e3") that would hide the parameters' values
    ax.ticklabel_format(axis="x", useOffset=False, style="sci", scilimits=(-3, 4))
    if row != col:
        ax.yaxis.set_major_locator(MaxNLocator(3, prune="both"))
        ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 4))
    ax.tick_params(labelsize=8)
    if row == d - 1:
        ax.set_xlabel(names[col], fontsize=10)
    else:
        ax.tick_params(labelbottom=False)
    if col == 0 and row > 0:
        ax.set_ylabel(names[row], fontsize=10)
    elif row != col:
        ax.tick_params(labelleft=False)
