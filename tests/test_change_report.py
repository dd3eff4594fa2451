"""The report's "what changes cost" section: its table, its figures, and what it must show."""

from __future__ import annotations

import pytest

from fisherkl.nn.change_report import SPARSITIES, change_cost_section


@pytest.mark.slow
def test_change_cost_section():
    text, images = change_cost_section(plots=True, n_examples=300)
    lines = text.splitlines()
    rows = [ln.split() for ln in lines if ln[:1].isdigit() and "%" in ln.split()[0]]
    assert [r[0] for r in rows] == [f"{s:.0%}" for s in SPARSITIES]
    at50 = next(r for r in rows if r[0] == "50%")
    magnitude_exact, obs_exact = float(at50[2]), float(at50[6])
    assert obs_exact * 2 < magnitude_exact  # OBS with its update costs far less than magnitude pruning
    assert "Quantising one layer alone" in text and "0.weight" in text
    assert [stem for stem, _, _ in images] == ["change-pruning", "change-quantisation"]
    for _, _, png in images:
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_network_has_the_change_section(tmp_path, monkeypatch):
    """build_report(network=True) echoes the section, embeds its figures and writes its PNGs (the sections'
    computations stubbed: they are tested above and in test_nn_apps)."""
    import fisherkl.nn.change_report as cr
    import fisherkl.report as report

    png = b"\x89PNG\r\n\x1a\n" + b"0" * 64
    monkeypatch.setattr(report, "_network_section", lambda plots: ("approx table", None))
    monkeypatch.setattr(cr, "change_cost_section", lambda plots: ("sparsity <table>", [("change-pruning", "cap", png)]))
    said: list[str] = []
    rep = report.build_report(tmp_path / "r", ["normal"], plots=False, network=True, echo=said.append)
    assert any("What changes cost" in s for s in said) and "sparsity <table>" in said
    page = rep.html_path.read_text()
    assert "<h2>What changes cost</h2>" in page and "sparsity &lt;table&gt;" in page
    assert (tmp_path / "r" / "change-pruning.png").read_bytes() == png
