"""Every ```python block of README.md runs (in order, in one namespace, in a fresh process).

The names a block leaves to the reader (a network, a loader, a direction) are defined by a prelude
keyed by a line of that block; a block with no prelude runs as written. The distributed block runs on
a one-process gloo group. A block that raises fails this test with its number and first line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

PRELUDES = {
    "validity_radius(gamma, theta, direction": """
        direction = torch.tensor([1.0, -0.5], dtype=torch.float64)
    """,
    "fk.geodesic(model, theta1, theta2": """
        model = fk.family("normal")
        theta1 = theta = torch.tensor([0.0, 1.0], dtype=torch.float64)
        theta2 = torch.tensor([1.0, 2.0], dtype=torch.float64)
        velocity = torch.tensor([0.1, 0.05], dtype=torch.float64)
        F = fk.fisher(model, theta)
        grad = torch.tensor([0.3, -0.2], dtype=torch.float64)
    """,
    "fnn.fisher(net, loader": """
        from torch.utils.data import DataLoader, TensorDataset
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        x = torch.randn(64, 4, dtype=torch.float64)
        y = torch.randint(0, 3, (64,))
        loader = DataLoader(TensorDataset(x, y), batch_size=16)
        delta = 1e-2 * torch.randn(sum(p.numel() for p in net.parameters()), dtype=torch.float64)
        anchor_params = torch.cat([p.detach().reshape(-1) for p in net.parameters()]) + delta
    """,
    "fnn.fisher(gpt2, loader_of_dicts": """
        import transformers
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
        gpt2 = transformers.GPT2LMHeadModel(cfg).double().eval()
        ids = torch.randint(0, 13, (4, 6))
        loader_of_dicts = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}]
        delta = 1e-3 * torch.randn(sum(p.numel() for p in gpt2.parameters()), dtype=torch.float64)

        class TwoInputs(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(2, 4)

            def forward(self, x1, x2):
                return self.a(x1) + self.b(x2)

        net = TwoInputs().double()
        x1, x2 = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
        y = torch.randint(0, 4, (16,))
    """,
    "distributed=True": """
        import fisherkl, torch.distributed as dist
        from torch.utils.data import DataLoader, TensorDataset
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
        loader = DataLoader(TensorDataset(torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))),
                            batch_size=16)
        dist.init_process_group("gloo", init_method="file://" + str(WORKDIR / "pg"), rank=0, world_size=1)
    """,
}

RUNNER = """
import json, os, sys, traceback
from pathlib import Path
import torch
torch.set_num_threads(1)
WORKDIR = Path(sys.argv[1])
os.chdir(WORKDIR)
blocks, preludes = json.loads(Path(sys.argv[2]).read_text())
ns = {"WORKDIR": WORKDIR, "__name__": "readme"}
for i, (block, prelude) in enumerate(zip(blocks, preludes)):
    try:
        if prelude:
            exec(compile(prelude, f"<prelude {i}>", "exec"), ns)
        exec(compile(block, f"<README block {i}>", "exec"), ns)
    except Exception:
        print(f"README block {i} ({block.splitlines()[0]!r}) raised:")
        traceback.print_exc()
        sys.exit(1)
print(f"{len(blocks)} blocks ran")
"""


def test_every_readme_python_block_runs(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 5
    preludes = []
    for block in blocks:
        found = [textwrap.dedent(p) for key, p in PRELUDES.items() if key in block]
        assert len(found) <= 1
        preludes.append(found[0] if found else "")
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([blocks, preludes]))
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path), str(spec)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"{len(blocks)} blocks ran" in out.stdout
