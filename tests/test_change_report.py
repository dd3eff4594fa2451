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
