"""The fisherkl command: listings, Fisher matrices, KL tables and the demo, checked against formulas."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from scipy import special

import fisherkl as fk
from fisherkl.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_families_lists_every_family_with_parameters(capsys):
    rows = json.loads(run(["families", "--json"], capsys))
    assert [r["name"] for r in rows] == fk.families.names()
    by = {r["name"]: r for r in rows}
    assert [p[0] for p in by["gamma"]["params"]] == ["concentration", "rate"]
    assert by["binomial"]["fixed"] == {"total_count": 10}
    assert by["uniform"]["routes"] == ["none (non-regular)"]
    assert "score (mc)" in by["dirichlet"]["routes"]
    text = run(["families"], capsys)
    for name in fk.families.names():
        assert name in text


def test_fisher_gamma_json_matches_the_formula(capsys):
    out = json.loads(run(["fisher", "gamma", "--theta", "2.5,1.7", "--json"], capsys))
    a, b = 2.5, 1.7
    expected = [[special.polygamma(1, a), -1 / b], [-1 / b, a / b**2]]
    for i in range(2):
        for j in range(2):
            assert out["fisher"][i][j] == pytest.approx(expected[i][j], rel=1e-14)
    assert out["method"] == "closed"
    assert out["theta"] == {"concentration": 2.5, "rate": 1.7}


@pytest.mark.parametrize("method", ["kl_hessian", "score", "neg_hessian", "jeffreys_hessian"])
def test_fisher_methods_from_the_cli(method, capsys):
    out = json.loads(run(["fisher", "normal", "--theta", "-1,2", "--method", method, "--json"], capsys))
    assert out["fisher"][0][0] == pytest.approx(0.25, rel=1e-12)
    assert out["fisher"][1][1] == pytest.approx(0.5, rel=1e-12)
    assert abs(out["fisher"][0][1]) < 1e-12


def test_fisher_with_fixed_argument(capsys):
    out = json.loads(run(["fisher", "binomial", "--theta", "0.3", "--fixed", "total_count=20", "--json"], capsys))
    assert out["fisher"][0][0] == pytest.approx(20 / (0.3 * 0.7), rel=1e-14)


def test_fisher_text_output_shows_names_and_method(capsys):
    text = run(["fisher", "gamma", "--theta", "2.5,1.7"], capsys)
    assert "concentration" in text and "rate" in text and "method: closed" in text
    text = run(["fisher", "dirichlet", "--theta", "1,2,3", "--method", "score", "--samples", "2000"], capsys)
    assert "standard error" in text


def test_kl_table_against_independent_formulas(capsys):
    # Poisson: KL = λp log(λp/λq) − λp + λq; Jeffreys = (λp − λq) log(λp/λq)
    out = json.loads(run(["kl", "poisson", "--theta", "3", "--delta", "0.1", "--json"], capsys))
    lp, lq = 3.0, 3.1
    assert out["kl"] == pytest.approx(lp * math.log(lp / lq) - lp + lq, rel=1e-12)
    assert out["jeffreys"] == pytest.approx((lp - lq) * math.log(lp / lq), rel=1e-12)
    assert out["kl_quadratic"] == pytest.approx(0.5 * 0.01 / 3, rel=1e-12)
    assert out["jeffreys_quadratic"] == pytest.approx(0.01 / 3, rel=1e-12)
    assert out["chi2"] == pytest.approx(math.expm1((lq - lp) ** 2 / lp), rel=1e-12)
    assert out["kl_ratio"] == pytest.approx(out["kl"] / out["kl_quadratic"])
    text = run(["kl", "gamma", "--theta", "2.5,1.7", "--delta", "0.01,-0.02"], capsys)
    assert "ratio KL/(½δᵀIδ)" in text and "Jeffreys" in text


def test_demo_runs_and_every_exact_route_agrees(capsys):
    rows = json.loads(run(["demo", "--json"], capsys))
    assert {r["family"] for r in rows} == set(fk.families.names())
    for r in rows:
        if r["family"] == "uniform":
            assert "non-regular" in r["note"]
            continue
        for route in r["routes"]:
            if route["method"].endswith("/mc"):
                assert route["rel_diff"] < 0.05, (r["family"], route)
            else:
                assert route["rel_diff"] < 1e-8, (r["family"], route)
        assert r["kl"] / r["kl_quadratic"] == pytest.approx(1, abs=5e-3)


def test_console_script_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "fisherkl", "fisher", "poisson", "--theta", "2"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "0.5" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "fisherkl", "fisher", "poisson", "--theta", "-2"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("fisherkl: error: poisson: parameter 'rate' must be > 0")
