"""`fisherkl report` and `fisherkl.plot`: files on disk, a self-contained HTML page, a real browser, and plots
whose contents are checked against hand formulas."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from fisherkl import families, plot
from fisherkl.convergence import check
from fisherkl.errors import FisherKLError
from fisherkl.report import Report, build_report

NAMES = ["normal", "poisson", "gamma"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "area", "base", "col", "embed", "track"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, list[str]]:
    out = tmp_path_factory.mktemp("report")
    lines: list[str] = []
    rep = build_report(out, NAMES, plots=True, progress=False, echo=lines.append)
    return rep, lines


class StrictParser(HTMLParser):
    """Collects tags and attributes and checks that every non-void element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.decl: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.decl.append(decl)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> StrictParser:
    p = StrictParser()
    p.feed(page)
    p.close()
    return p


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- 6. the report -----------------------------------------------------------------------------------------


def test_report_writes_the_page_and_valid_pngs(report):
    rep, _ = report
    assert rep.html_path == rep.out_dir / "index.html" and rep.html_path.is_file()
    assert [p.name for p in rep.pngs] == ["convergence.png", "kl-contours.png", "spectrum.png"]
    for p in rep.pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE
        assert len(data) > 3_000, (p, len(data))  # palette PNGs are small; the full decode below checks content
        w, h = png_size(data)
        assert w >= 300 and h >= 200
        pixels = mpimg.imread(p)  # a full decode, not just the header
        assert pixels.shape[:2] == (h, w) and float(pixels[..., :3].std()) > 0.01
    # written atomically: nothing else (no temporary files) in the directory
    assert sorted(os.listdir(rep.out_dir)) == sorted(["index.html", *(p.name for p in rep.pngs)])
    assert [c.name for c in rep.checks] == NAMES and [a.name for a in rep.agreements] == NAMES
    for c in rep.checks:
        assert (c.kl_order, c.midpoint_order) == (pytest.approx(1, abs=0.1), pytest.approx(2, abs=0.1))


def test_report_page_is_small_and_figures_are_shown_unshrunk(report):
    """Figures at most ~1000 px wide (shown at natural size, so fonts stay readable) and a page under 1 MB."""
    rep, _ = report
    for p in rep.pngs:
        w, _ = png_size(p.read_bytes())
        assert w <= 1000, (p.name, w)
    assert rep.html_path.stat().st_size < 1024**2


def test_report_html_is_self_contained_and_well_formed(report):
    rep, _ = report
    page = rep.html_path.read_text(encoding="utf-8")
    p = parse(page)
    assert p.decl and p.decl[0].lower() == "doctype html"
    assert p.problems == [] and p.stack == []
    tags = [t for t, _ in p.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    for tag, attrs in p.tags:
        for key in ("src", "href", "srcset", "action", "data"):
            value = attrs.get(key) or ""
            assert not value.lower().startswith(("http:", "https:", "//", "file:")), (tag, key, value[:60])
    assert "http://" not in page and "https://" not in page
    imgs = [attrs for tag, attrs in p.tags if tag == "img"]
    assert len(imgs) == len(rep.pngs) == 3
    for attrs, path in zip(imgs, rep.pngs):
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True) == path.read_bytes()
        assert attrs.get("alt")
    assert tags.count("table") == 2
    text = " ".join(p.text)
    for name in NAMES:
        assert text.count(name) >= 2  # one row in each table


def test_report_echoes_the_tables(report):
    _, lines = report
    text = "\n".join(lines)
    assert "order KL" in text and "radius(0.1)" in text
    for name in NAMES:
        assert name in text
    assert "report written to" in text and "index.html" in text


def test_report_without_plots(tmp_path):
    rep = build_report(tmp_path / "out", ["poisson"], plots=False, progress=False, echo=None)
    assert rep.pngs == [] and os.listdir(tmp_path / "out") == ["index.html"]
    page = rep.html_path.read_text(encoding="utf-8")
    assert "plots disabled" in page and "<img" not in page
    assert parse(page).problems == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "fisherkl", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def test_cli_report_no_plots(tmp_path):
    out = tmp_path / "cli-report"
    proc = _cli("report", "--no-plots", "--family", "normal", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (out / "index.html").is_file() and not list(out.glob("*.png"))
    assert "normal" in proc.stdout and "order KL" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_cli_report_unknown_family_fails_in_one_line(tmp_path):
    out = tmp_path / "never"
    proc = _cli("report", "--family", "nosuchfamily", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fisherkl: error:") and "nosuchfamily" in lines[0]
    assert not out.exists()  # failed before any work


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _headless(browser: str, page: Path, profile: Path) -> subprocess.CompletedProcess[str]:
    args = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        f"--user-data-dir={profile}",
        page.resolve().as_uri(),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_report_opens_in_headless_chromium(report, tmp_path):
    """The page loads in a real browser (file://): exit 0, the DOM has both tables and every image, and the browser
    logs no console message. A page that does log (control) proves the console check can see errors."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium binary (chromium, chromium-browser, google-chrome) on this machine")
    rep, _ = report
    proc = _headless(browser, rep.html_path, tmp_path / "profile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<table") == 2 and dom.count("<img") == 3
    assert dom.count('src="data:image/png;base64,') == 3
    for name in NAMES:
        assert name in dom
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []

    control = tmp_path / "control.html"
    control.write_text(
        "<!DOCTYPE html><html><body><script>console.error('boom'); undefinedCall();</script></body></html>"
    )
    ctl = _headless(browser, control, tmp_path / "profile2")
    assert any(":CONSOLE" in line and "boom" in line for line in ctl.stderr.splitlines()), ctl.stderr[-2000:]


# --- the plots, checked against hand formulas -----------------------------------------------------------


def _level_points(cs) -> list[tuple[float, np.ndarray]]:
    out = []
    for level, path in zip(cs.levels, cs.get_paths()):
        codes = path.codes if path.codes is not None else np.ones(len(path.vertices))
        out.append((float(level), path.vertices[codes != 79]))  # drop CLOSEPOLY placeholders
    return out


def test_kl_contours_lie_on_the_kl_and_fisher_level_sets():
    """Solid contours: KL(θ, θ') = c by the normal's KL formula (to the grid's interpolation error, < 3%);
    dashed: ½δᵀI(θ)δ = c with I = diag(1/σ², 2/σ²) (same tolerance: linear interpolation on the 41² grid)."""
    m, mu, sigma = families.family("normal"), 0.5, 1.5
    fig = plot.kl_contours(m, torch.tensor([mu, sigma], dtype=torch.float64))
    try:
        ax = fig.axes[0]
        solid, dashed = ax.collections[:2]
        assert list(solid.levels) == list(dashed.levels) == [0.005, 0.02, 0.08]
        for level, pts in _level_points(solid):
            assert len(pts) > 10
            m2, s2 = pts[:, 0], pts[:, 1]
            kl = np.log(s2 / sigma) + (sigma**2 + (mu - m2) ** 2) / (2 * s2**2) - 0.5
            assert np.abs(kl / level - 1).max() < 0.03, level
        for level, pts in _level_points(dashed):
            d = pts - np.array([mu, sigma])
            quad = 0.5 * (d[:, 0] ** 2 / sigma**2 + 2 * d[:, 1] ** 2 / sigma**2)
            assert np.abs(quad / level - 1).max() < 0.03, level
        assert ax.get_xlabel() == "loc" and ax.get_ylabel() == "scale"
        labels = {t.get_text() for t in ax.texts}
        assert {"0.02", "0.08"} <= labels  # the KL levels are labelled on the contours
    finally:
        plt.close(fig)
    with pytest.raises(FisherKLError, match="2-parameter"):
        plot.kl_contours(families.family("poisson"), torch.tensor([3.5], dtype=torch.float64))


def test_convergence_plot_shows_the_sweeps():
    rows = check([families.family("poisson"), families.family("beta")], directions=1, radius=False)
    fig = plot.convergence(rows)
    try:
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
        assert [ax.get_title() for ax in axes] == ["poisson", "beta"]
        for ax, row in zip(axes, rows):
            lines = ax.get_lines()
            assert len(lines) == 3
            s = row.sweeps[0]
            for line, ys in zip(lines, (s.kl, s.jeffreys, s.midpoint)):
                np.testing.assert_allclose(line.get_xdata(), s.steps)
                np.testing.assert_allclose(line.get_ydata(), ys)
            assert ax.get_xscale() == ax.get_yscale() == "log"
            labels = [t.get_text() for t in ax.get_legend().get_texts()]
            assert labels[2].endswith(f"{row.midpoint_order:.2f}")
            # every panel labels its own axes and shows at least three labelled decades
            assert ax.get_xlabel() == "|δ|" and ax.get_ylabel() == "relative error"
            lo, hi = ax.get_ylim()
            assert np.log10(hi) - np.log10(lo) >= 2 - 1e-9
    finally:
        plt.close(fig)


def test_spectrum_and_contour_grid():
    n, p = families.family("normal"), families.family("poisson")
    fig = plot.spectrum(
        [n, p], [torch.tensor([0.5, 1.5], dtype=torch.float64), torch.tensor([3.5], dtype=torch.float64)]
    )
    try:
        ax = fig.axes[0]
        first, second = (np.asarray(c.get_offsets()) for c in ax.collections)
        np.testing.assert_allclose(sorted(first[:, 1]), [1 / 1.5**2, 2 / 1.5**2], rtol=1e-12)
        np.testing.assert_allclose(second[:, 1], [1 / 3.5], rtol=1e-12)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["normal", "poisson"]
        assert ax.get_yscale() == "log"
    finally:
        plt.close(fig)
    two = [families.family(x) for x in ("normal", "gamma", "beta")]
    fig = plot.kl_contour_grid(two, [m.typical() for m in two], columns=2)
    try:
        shown = [ax for ax in fig.axes if ax.axison]
        assert len(fig.axes) == 4 and len(shown) == 3
        assert all(len(ax.collections) >= 2 for ax in shown)
    finally:
        plt.close(fig)


def test_kl_contours_use_each_parameters_own_scale():
    """Normal at (μ, σ) = (1000, 1e-3): I = diag(1/σ², 2/σ²), so both axes span ±1.6·√(2·0.08·(I⁻¹)ᵢᵢ)
    in their own units (σ and σ/√2) instead of one common range that flattens the picture to a line;
    the dashed ellipses still satisfy ½δᵀIδ = c."""
    mu, sigma = 1000.0, 1e-3
    m = families.family("normal")
    fig = plot.kl_contours(m, torch.tensor([mu, sigma], dtype=torch.float64))
    try:
        ax = fig.axes[0]
        solid, dashed = ax.collections[:2]
        for level, pts in _level_points(dashed):
            d = pts - np.array([mu, sigma])
            quad = 0.5 * (d[:, 0] ** 2 / sigma**2 + 2 * d[:, 1] ** 2 / sigma**2)
            assert np.abs(quad / level - 1).max() < 0.03, level
        half_x = 1.6 * np.sqrt(2 * 0.08 * sigma**2)
        half_y = 1.6 * np.sqrt(2 * 0.08 * sigma**2 / 2)
        xs = np.concatenate([p[:, 0] for _, p in _level_points(solid)])
        ys = np.concatenate([p[:, 1] for _, p in _level_points(solid)])
        assert xs.max() - xs.min() > 0.5 * half_x and ys.max() - ys.min() > 0.5 * half_y  # a real ellipse
        lo, hi = ax.get_xlim()
        assert hi - lo == pytest.approx(2 * half_x, rel=0.05)
        lo, hi = ax.get_ylim()
        assert hi - lo == pytest.approx(2 * half_y, rel=0.05)
    finally:
        plt.close(fig)
