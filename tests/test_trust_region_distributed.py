"""NaturalGradient's exact trust region over torch.distributed (gloo, CPU, 2 real processes).

Each rank holds half of every batch and averages its gradients with the other (as DDP does); with
``fisher_kwargs={"distributed": True}`` the trust region measures the step on both halves. Oracles:
the ranks end bit-identical, and the exact KL of every step on the whole batch, computed here in one
process with torch.distributions, is within max_kl and equals what the ranks reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

WORKER = textwrap.dedent(
    """
    import os
    import sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    sys.path.insert(0, {tests!r})
    from test_trust_region import dataset, flat, mlp
    from fisherkl.nn.optim import NaturalGradient

    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    x, y = dataset("mlp")
    res = {{}}
    for rep in ("kfac", "implicit"):
        net = mlp()
        opt = NaturalGradient(net.parameters(), rep, lr=1.0, damping=1e-3, max_kl=1e-2, net=net, update_every=1,
                              ema=0.0, fisher_kwargs={{"distributed": True, "shard": False}})
        params, kls = [flat(net)], []
        for i in range(4):
            xb, yb = x[50 * i + rank : 50 * i + 50 : world], y[50 * i + rank : 50 * i + 50 : world]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            for p in net.parameters():  # average the gradients over the ranks, as DDP does
                dist.all_reduce(p.grad)
                p.grad /= world
            opt.step(fisher_data=xb)
            params.append(flat(net))
            kls.append(opt.last_step["exact_kl"])
        res[rep] = {{"params": torch.stack(params), "kl": torch.tensor(kls, dtype=torch.float64)}}
    torch.save(res, out)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
    """
)


@pytest.mark.slow
def test_ranks_take_the_same_step_within_the_exact_kl_of_all_their_data(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", str(tmp_path / "init"), str(tmp_path / f"out{r}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for r in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0].decode())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r]}"
    results = [torch.load(tmp_path / f"out{r}.pt", weights_only=True) for r in range(2)]

    from test_trust_region import dataset, mlp

    x, _ = dataset("mlp")
    for rep in ("kfac", "implicit"):
        a, b = results[0][rep], results[1][rep]
        assert torch.equal(a["params"], b["params"]) and torch.equal(a["kl"], b["kl"])
        net = mlp()
        for i in range(4):
            xb = x[50 * i : 50 * i + 50]  # the union of both ranks' halves
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(a["params"][i], net.parameters())
                before = net(xb)
                torch.nn.utils.vector_to_parameters(a["params"][i + 1], net.parameters())
                after = net(xb)
            exact = float(kl_divergence(Categorical(logits=before), Categorical(logits=after)).mean())
            assert exact <= 1e-2, (rep, i, exact)
            assert exact == pytest.approx(float(a["kl"][i]), rel=1e-9)
