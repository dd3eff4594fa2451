"""``fisherkl report``: the catalogue checked end to end, as terminal tables, PNG plots and one HTML page.

The page is self-contained (plots embedded as base64 PNG, no scripts, no network) and written
atomically (temporary file + rename), so an interrupted run never leaves a half page behind.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__, families
from .agreement import Agreement, agreement, format_agreement
from .convergence import CheckRow, check_model, format_table
from .errors import FisherKLError
from .families.base import Family


@dataclass
class Report:
    out_dir: Path
    html_path: Path
    pngs: list[Path]
    agreements: list[Agreement]
    checks: list[CheckRow]
    seconds: float


def _progress(items: Sequence[Any], desc: str, enabled: bool | None) -> Iterable[Any]:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, unit="family", leave=False, file=sys.stderr)


def write_files_atomically(files: dict[Path, bytes]) -> None:
    """Write every file or none: all go to temporary files first, and are renamed into place only
    when every one was written (a full disk or an interrupt leaves the directory as it was)."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            temps.append((tmp, path))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException as exc:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            where = next(iter(files)).parent if files else "?"
            raise FisherKLError(
                f"could not write the report to {where}: {exc.strerror or exc}; nothing was written"
            ) from exc
        raise
    for tmp, path in temps:
        os.replace(tmp, path)


#: figures are drawn at this resolution and shown at their natural size (about 800 px wide)
DPI = 100


def _png(fig: Any) -> bytes:
    """The figure as a PNG, reduced to a 256-colour palette (plots have few colours: ~3× smaller)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        return buf.getvalue()
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def build_report(
    out_dir: str | os.PathLike[str] = "fisherkl-report",
    names: Sequence[str] | None = None,
    *,
    plots: bool = True,
    network: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = print,
) -> Report:
    """Check every family in ``names`` (default: the whole catalogue) and write the report.

    ``network=True`` adds a section on a neural network: an MLP trained on scikit-learn's bundled
    digits, and how well each Fisher approximation predicts the KL of steps in several directions
    (:func:`fisherkl.nn.approximation_report`; needs scikit-learn), and what changes cost: a pruning
    curve and per-layer quantisation sensitivity, predicted against exact KL (one plot each).
    """
    start = time.perf_counter()
    out = Path(out_dir)
    names = list(names) if names else families.names()
    models: list[Family] = [families.family(n) for n in names]
    agreements = [agreement(m, m.typical()) for m in _progress(models, "routes", progress)]
    checks = [check_model(m, m.typical()) for m in _progress(models, "convergence", progress)]
    if echo is not None:
        echo("Routes to the Fisher information at each family's typical θ (float64)\n")
        echo(format_agreement(agreements))
        echo("\nConvergence of the quadratic forms (fitted orders; validity radius of ½δᵀIδ at rtol 0.1)\n")
        echo(format_table(checks))
    images: list[tuple[str, str, bytes]] = []
    if plots:
        images = _figures(models, checks)
    network_text = change_text = ""
    if network:
        network_text, network_png = _network_section(plots)
        if echo is not None:
            echo("\nNeural network (MLP on digits): predicted KL ½δᵀFδ / exact KL per Fisher approximation\n")
            echo(network_text)
        if network_png is not None:
            images.append(("network", "Predicted / exact KL per Fisher approximation (digits MLP)", network_png))
        from .nn.change_report import change_cost_section

        change_text, change_images = change_cost_section(plots)
        if echo is not None:
            echo("\nWhat changes cost (digits MLP): pruning and quantisation, predicted ½δᵀFδ vs exact KL\n")
            echo(change_text)
        images += change_images
    pngs = [out / f"{stem}.png" for stem, _, _ in images]
    page = _html(agreements, checks, images, time.perf_counter() - start, network_text, change_text)
    html_path = out / "index.html"
    files = {p: data for p, (_, _, data) in zip(pngs, images)}
    files[html_path] = page.encode("utf-8")
    write_files_atomically(files)
    if echo is not None:
        echo(f"\nreport written to {html_path} ({len(pngs)} plots)")
    return Report(out, html_path, pngs, agreements, checks, time.perf_counter() - start)


def _figures(models: Sequence[Family], checks: Sequence[CheckRow]) -> list[tuple[str, str, bytes]]:
    from . import plot

    regular = [m for m in models if m.regular]
    two = [m for m in regular if m.dim == 2]
    out = [("convergence", "Relative error of the quadratic forms against |δ|", _png(plot.convergence(checks)))]
    if two:
        fig = plot.kl_contour_grid(two, [m.typical() for m in two])
        caption = (
            "KL contours (solid, levels labelled) beside the Fisher ellipses ½δᵀIδ = c (dashed), "
            "each in its parameters' own units"
        )
        out.append(("kl-contours", caption, _png(fig)))
    if regular:
        fig = plot.spectrum(regular, [m.typical() for m in regular])
        out.append(("spectrum", "Fisher eigen-spectra", _png(fig)))
    return out


def _cell(x: float, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, float) and math.isfinite(x) else "–"


def _html(
    agreements: Sequence[Agreement],
    checks: Sequence[CheckRow],
    images: Sequence[tuple[str, str, bytes]],
    seconds: float,
    network_text: str = "",
    change_text: str = "",
) -> str:
    esc = html.escape
    rows = []
    for a in agreements:
        if not a.routes:
            rows.append(f"<tr><td>{esc(a.name)}</td><td colspan='5'>{esc(a.note)}</td></tr>")
            continue
        for i, r in enumerate(a.routes):
            name = esc(a.name) if i == 0 else ""
            rows.append(
                f"<tr><td>{name}</td><td>{esc(r.route)}</td><td>{esc(r.method)}</td>"
                f"<td>{_cell(r.rel_diff, '.1e')}</td><td>{_cell(r.error, '.1e')}</td>"
                f"<td>{r.seconds * 1e3:.1f} ms</td></tr>"
            )
    conv = []
    for c in checks:
        if not c.sweeps:
            conv.append(f"<tr><td>{esc(c.name)}</td><td colspan='5'>{esc(c.note)}</td></tr>")
            continue
        s = c.sweeps[0]
        at = s.kl[s.steps.index(1e-2)] if 1e-2 in s.steps else math.nan
        conv.append(
            f"<tr><td>{esc(c.name)}</td><td>{_cell(c.kl_order, '.2f')}</td><td>{_cell(c.jeffreys_order, '.2f')}</td>"
            f"<td>{_cell(c.midpoint_order, '.2f')}</td><td>{_cell(at, '.2e')}</td>"
            f"<td>{_cell(c.radius, '.3g')} {esc(c.radius_bound if c.radius_bound != 'rtol' else '')}</td></tr>"
        )
    figs = "\n".join(
        f"<figure><img alt='{esc(caption)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
        for _, caption, data in images
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fisherkl report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child, td:nth-child(2), td:nth-child(3) {{ text-align: left; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; height: auto; }} code {{ background: #f4f4f4; }}
figcaption {{ font-size: 14px; color: #444; }}
</style></head><body>
<h1>fisherkl report</h1>
<p>fisherkl {esc(__version__)}, torch {esc(torch.__version__)}; {len(agreements)} models; built in {seconds:.1f} s.
For a model p(x|θ): KL[p<sub>θ</sub> ‖ p<sub>θ+δ</sub>] = ½ δᵀI(θ)δ + O(|δ|³). Below, every route to I(θ) is
checked against the first (reference) route, and the quadratic forms against the exact divergences.</p>
<h2>Routes to the Fisher information</h2>
<table><tr><th>family</th><th>route</th><th>computed as</th><th>max rel diff</th><th>stated error</th><th>time</th></tr>
{"".join(rows)}</table>
<h2>Convergence of the quadratic forms</h2>
<p>Fitted order of the relative error against |δ| (10⁻¹…10⁻⁴, median over 3 random directions):
one-sided KL vs ½δᵀI(θ)δ, one-sided Jeffreys vs δᵀI(θ)δ, and Jeffreys vs δᵀI(θ+δ/2)δ (midpoint).
The validity radius is the largest step t (unit direction) with |KL − ½t²uᵀIu| ≤ 0.1·KL.</p>
<table><tr><th>family</th><th>order KL</th><th>order J</th><th>order J midpoint</th><th>KL error at |δ|=10⁻²</th>
<th>validity radius</th></tr>
{"".join(conv)}</table>
{_network_html(network_text)}
{_change_html(change_text)}
<h2>Pictures</h2>
{figs or "<p>(plots disabled)</p>"}
</body></html>
"""


def _network_html(text: str) -> str:
    if not text:
        return ""
    return (
        "<h2>A neural network</h2><p>An MLP 64–32–32–10 trained on scikit-learn's digits: the predicted KL "
        "½δᵀFδ of each Fisher representation divided by the exact mean KL of the step (1.000 is perfect), "
        "per direction and step size.</p><pre>" + html.escape(text) + "</pre>"
    )


def _change_html(text: str) -> str:
    if not text:
        return ""
    return (
        "<h2>What changes cost</h2><p>The same MLP pruned (magnitude, OBD, OBS with KFAC; no retraining) and "
        "quantised one layer at a time: the predicted KL ½δᵀFδ of the actual change beside the exact mean KL "
        "(fisherkl.nn.prune, fisherkl.nn.quantization_sensitivity).</p><pre>" + html.escape(text) + "</pre>"
    )


def _network_section(plots: bool) -> tuple[str, bytes | None]:
    """Train the digits MLP and run the approximation report on it."""
    from .nn.approx import approximation_report
    from .nn.digits import digits_mlp, load_digits_split, train_classifier

    (x, y), _ = load_digits_split(seed=0, n_train=1797)
    net = digits_mlp(seed=0)
    train_classifier(net, x, y, epochs=10)
    report = approximation_report(
        net,
        (x[:400], y[:400]),
        "categorical",
        representations=("diag", "kfac", "ekfac", "block", "dense"),
        directions=("random", "gradient", "natural", "sgd_step"),
        step_sizes=(1e-5, 1e-3, 1e-1),
    )
    png = None
    if plots:
        png = _png(report.plot())
    return report.to_text(), png


def main_report(out: str, names: Sequence[str] | None, plots: bool, network: bool = False) -> Report:
    """Entry point of the CLI subcommand."""
    try:
        return build_report(out, names, plots=plots, network=network)
    except ImportError as exc:
        raise FisherKLError(
            f"report plots need matplotlib ({exc}); use --no-plots or pip install 'fisherkl[plot]'"
        ) from exc


def require_packages(plots: bool, network: bool) -> None:
    """Refuse, before any work, a report that would need a package that is not installed."""
    import importlib.util

    if plots and importlib.util.find_spec("matplotlib") is None:
        raise FisherKLError(
            "fisherkl report draws its plots with matplotlib, which is not installed: "
            "pip install 'fisherkl[plot]', or pass --no-plots for tables only"
        )
    if network and importlib.util.find_spec("sklearn") is None:
        raise FisherKLError(
            "fisherkl report --network trains on scikit-learn's bundled digits; scikit-learn is not installed "
            "(pip install scikit-learn), or leave out --network"
        )
