"""The examples run (small settings) and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_transformer_example_prints_the_approximation_report():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "transformer_fisher.py"), "--quick"],
        capture_output=True, text=True, timeout=600, check=True,
    ).stdout  # fmt: skip
    assert "trained a" in out and "Predicted KL" in out
    for rep in ("diag", "kfac", "ekfac"):
        assert rep in out
