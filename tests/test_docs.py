"""Every ```python block of README.md and docs/*.md runs, as written, in a fresh process.

The blocks of one file run in order in one namespace (as a reader would paste them), in a scratch
directory, with one torch thread. The environment of ``torchrun --nproc_per_node=1`` (RANK,
WORLD_SIZE, MASTER_ADDR, a free MASTER_PORT) is set, so the distributed examples run as a
one-process group. A block that needs what a test machine cannot have is preceded by
``<!-- docs-test: skip (why) -->``; the reason is required and listed in the test output.
Oracle: the blocks' own ``assert`` statements and the absence of an exception.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->\s*$")


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(first line, code, skip reason or None) for each python block of ``path``."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        info = m.group(1).strip().split()
        if not info or info[0] not in ("python", "py"):
            continue
        line = text.count("\n", 0, m.start()) + 2
        before = text[: m.start()].rstrip("\n").splitlines()
        skip = SKIP.search(before[-1]) if before else None
        out.append((line, m.group(2), skip.group("why").strip() if skip else None))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DRIVER = """
import sys, traceback
import torch
torch.set_num_threads(1)
import matplotlib
matplotlib.use("Agg")
namespace = {"__name__": "__main__"}
for where, code in BLOCKS:
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print("BLOCK FAILED: " + where, file=sys.stderr)
        sys.exit(1)
"""


def test_the_block_finder_sees_fences_and_skips(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "text\n```python\na = 1\n```\n\n```bash\nls\n```\n<!-- docs-test: skip (needs a GPU) -->\n"
        "```python\nb = 2\n```\n"
    )
    assert python_blocks(md) == [(3, "a = 1\n", None), (11, "b = 2\n", "needs a GPU")]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_python_blocks_run(path, tmp_path):
    blocks = python_blocks(path)
    rel = path.relative_to(ROOT)
    skipped = [(line, why) for line, _, why in blocks if why is not None]
    for line, why in skipped:
        assert len(why) >= 10, f"{rel}:{line}: a skipped block needs its reason"
        print(f"{rel}:{line} not run: {why}")
    runnable = [(f"{rel}:{line}", code) for line, code, why in blocks if why is None]
    if not runnable:
        return
    script = tmp_path / "run_blocks.py"
    script.write_text(f"BLOCKS = {runnable!r}\n{DRIVER}", encoding="utf-8")
    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
