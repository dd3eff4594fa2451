"""The change-cost examples run (small settings) and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=600, check=True, cwd=ROOT
    ).stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_change_cost_example(model, tmp_path):
    out = run("examples/change_cost.py", "--model", model, "--quick", "--plots", str(tmp_path), "--bits", "4")
    for text in ("Spearman", "OBS (kfac)", "magnitude", "bit allocation", "Fisher trace (diag)"):
        assert text in out
    assert (tmp_path / f"change_{model}_pruning.png").stat().st_size > 10_000
    assert (tmp_path / f"change_{model}_quantisation.png").stat().st_size > 10_000


@pytest.mark.slow
def test_digits_merge_example():
    out = run("examples/digits_merge.py", "--seeds", "1", "--reps", "diag,kfac", "--damping", "1e-2", "--pretrain", "1")
    for text in ("average", "Fisher diag, λ=0.01", "Fisher kfac, λ=0.01", "KL(A‖merge)"):
        assert text in out
