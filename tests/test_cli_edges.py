"""The command line without rough edges (issues 15 and 16): every bad input is one line on stderr and
exit 2, never a traceback; JSON is strict; columns never touch; the report checks its destination and
its packages before computing; Ctrl-C exits 130 and leaves nothing behind.

Oracles: Python's json parser in strict mode (parse_constant raises on NaN/Infinity), the uniform
χ² written out by hand, widths of the printed fields, and the file system itself.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fisherkl as fk
from fisherkl import report as report_module
from fisherkl.cli import main


def err_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command expecting a refusal: exit 2 and exactly one line on stderr, no traceback."""
    with pytest.raises(SystemExit) as exc_info:
        code = main(argv)
        raise SystemExit(code)
    assert exc_info.value.code == 2, argv
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fisher", "normal", "--theta", "0,1", "--method", "score", "--samples", "1"], "--samples"),
        (["fisher", "normal", "--theta", "0,1", "--method", "score", "--samples", "0"], "--samples"),
        (["fisher", "normal", "--theta", "0,1", "--method", "score", "--samples", "-5"], "--samples"),
        (["fisher", "normal", "--theta", "0,1", "--samples", "1e5"], "integer"),
        (["fisher", "normal", "--theta", "0,1", "--seed", str(10**30)], "--seed"),
        (["fisher", "normal", "--theta", "0,1", "--seed", "-1"], "--seed"),
        (["fisher", "binomial", "--theta", "0.3", "--fixed", "total_count=1e30"], "total_count"),
        (["fisher", "normal", "--theta", "2_5,1"], "'_'"),
        (["fisher", "normal", "--theta", "\u0663,1"], "non-ASCII"),  # Arabic-Indic 3
        (["fisher", "normal", "--theta", "\uff11,1"], "non-ASCII"),  # fullwidth 1
        (["fisher", "binomial", "--theta", "0.3", "--fixed", "total_count=\u0662\u0660"], "non-ASCII"),
        (["kl", "normal", "--theta", "0,1", "--delta", "0,0"], "zero"),
        (["kl", "normal", "--theta", "0,1", "--delta", "nan,0.1"], "finite"),
        (["demo", "--delta", "nan"], "finite number > 0"),
        (["demo", "--delta", "inf"], "finite number > 0"),
        (["demo", "--delta", "-1"], "finite number > 0"),
        (["demo", "--delta", "0"], "finite number > 0"),
        (["fisher", "gama", "--theta", "1,2"], "did you mean 'gamma'"),
        (["fisher", "gamma", "--thetaa", "1,2"], "did you mean '--theta'"),
        (["fishr", "gamma"], "did you mean 'fisher'"),
        (["fisher", "gamma", "--theta", "1,2", "--method", "scor"], "did you mean 'score'"),
        (["report", "--family", "gama"], "did you mean 'gamma'"),
        (["report", "--out", ""], "--out is empty"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys):
    assert needle in err_line(argv, capsys)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc_info:
        main(["--version"])
    assert exc_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fisherkl {fk.__version__}"
    import importlib.metadata

    assert importlib.metadata.version("fisherkl") == fk.__version__  # pyproject reads the same place


def test_ascii_numbers_still_parse(capsys):
    assert main(["fisher", "normal", "--theta", "+.5,1E0", "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["theta"] == {"loc": 0.5, "scale": 1.0}
    assert main(["fisher", "binomial", "--theta", "0.3", "--fixed", "total_count=20", "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["fisher"][0][0] == pytest.approx(20 / 0.21, rel=1e-14)


def test_json_is_strict_and_lists_non_finite_values(capsys):
    # uniform: q = U(0.1, 1.1) puts mass where p = U(0, 1) has none, so KL, Jeffreys and χ² are +inf
    assert main(["kl", "uniform", "--theta", "0,1", "--delta", "0.1,0.1", "--json"]) == 0
    out = strict_loads(capsys.readouterr().out)
    assert out["kl"] is None and out["chi2"] is None and out["jeffreys"] is None
    assert out["non_finite"] == {"kl": "inf", "jeffreys": "inf", "chi2": "inf"}
    assert out["kl_quadratic"] is None and "non-regular" in out["note"]
    # inside: q = U(0.1, 0.9) ⊂ p: χ² = ∫(q − p)²/p = (1 − 0)/(0.8) − 1 = 0.25
    assert main(["kl", "uniform", "--theta", "0,1", "--delta", "0.1,-0.1", "--json"]) == 0
    out = strict_loads(capsys.readouterr().out)
    assert out["chi2"] == pytest.approx(0.25, rel=1e-14)
    assert out["chi2_method"] == "closed"
    # KL[p ‖ q] is infinite here (p has mass outside q); KL[q ‖ p] = log(1/0.8): Jeffreys is infinite
    assert out["non_finite"] == {"kl": "inf", "jeffreys": "inf"}


def test_text_kl_for_uniform_says_inf(capsys):
    assert main(["kl", "uniform", "--theta", "0,1", "--delta", "0.1,0.1"]) == 0
    text = capsys.readouterr().out
    chi = next(line for line in text.splitlines() if "χ²" in line)
    assert chi.split()[-1] == "inf" and "not converged" not in text and "nan" not in text


def test_matrix_columns_never_touch(capsys):
    assert main(["fisher", "gamma", "--theta", "0.5,3e-9", "--method", "kl_hessian"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[2:]
    for line in table[1:]:
        fields = line.split()
        assert len(fields) == 3, line  # name and two values, separated by blanks
    assert main(["fisher", "normal", "--theta", "0,1", "--method", "score", "--samples", "200"]) == 0


def test_kl_along_a_null_direction_is_not_nan(capsys):
    # normal at |δ| tiny in loc only is fine; a text ratio is never printed as nan
    assert main(["kl", "normal", "--theta", "0,1", "--delta", "0.01,0"]) == 0
    assert "nan" not in capsys.readouterr().out


# --- report: destination and packages first ------------------------------------------------------------


def _spy_no_work(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(report_module, "build_report", boom)


def test_report_destination_checked_before_any_work(tmp_path, capsys, monkeypatch):
    _spy_no_work(monkeypatch)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert "not a directory" in err_line(["report", "--out", str(a_file)], capsys)
    assert "is a file" in err_line(["report", "--out", str(a_file / "sub")], capsys)
    long = tmp_path / ("x" * 300)
    assert "300 bytes" in err_line(["report", "--out", str(long)], capsys)
    assert "300 bytes" in err_line(["report", "--out", str(tmp_path / "new" / ("x" * 300))], capsys)
    if Path("/proc").is_dir():  # a read-only file system even for root
        assert "cannot write" in err_line(["report", "--out", "/proc/fisherkl-report"], capsys)
    assert a_file.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["file.txt"]


def test_report_refuses_without_room(tmp_path, capsys, monkeypatch):
    _spy_no_work(monkeypatch)
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1024))
    assert "MiB free" in err_line(["report", "--out", str(tmp_path / "new")], capsys)
    assert not (tmp_path / "new").exists()  # created for the probe, removed again


def test_report_without_matplotlib_says_so_first(tmp_path, capsys, monkeypatch):
    _spy_no_work(monkeypatch)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    line = err_line(["report", "--out", str(tmp_path / "r")], capsys)
    assert "matplotlib" in line and "--no-plots" in line
    assert not (tmp_path / "r").exists()


def test_full_disk_leaves_nothing_behind(tmp_path, monkeypatch):
    """ENOSPC on the second file: no PNG, no page, no temporary file (all or nothing)."""
    real_fdopen = os.fdopen
    calls = {"n": 0}

    def fdopen(fd, *args, **kwargs):
        calls["n"] += 1
        fh = real_fdopen(fd, *args, **kwargs)
        if calls["n"] == 2:
            fh.close()
            raise OSError(errno.ENOSPC, "No space left on device")
        return fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    out = tmp_path / "r"
    out.mkdir()
    files = {out / "a.png": b"a" * 10, out / "b.png": b"b" * 10, out / "index.html": b"<html>"}
    with pytest.raises(fk.FisherKLError, match="No space left on device; nothing was written"):
        report_module.write_files_atomically(files)
    assert os.listdir(out) == []


def test_interrupt_exits_130_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "build_report", interrupted)
    out = tmp_path / "r"
    assert main(["report", "--no-plots", "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fisherkl: interrupted (nothing was written)"]
    assert not out.exists()


def test_ctrl_c_in_a_real_process(tmp_path):
    """SIGINT to a running `fisherkl report`: exit 130, one line, no traceback, no files."""
    import signal
    import time

    out = tmp_path / "r"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fisherkl", "report", "--no-plots", "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not out.exists() and time.time() < deadline:  # the destination probe ran: computing now
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == ["fisherkl: interrupted (nothing was written)"]
    assert not out.exists() or os.listdir(out) == []
