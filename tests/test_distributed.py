"""fisherkl.nn over torch.distributed (gloo, CPU): 2 and 3 real processes against the single-process
Fisher on all the data (the oracle), with uneven shards (1,000 examples in batches of 64 over 3 ranks:
6, 5 and 5 batches, the last one of 40 examples)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import fisherkl.nn as fnn
from fisherkl.errors import FisherKLError
from fisherkl.matrix import Dense, Diagonal, LowRank

F64 = torch.float64
TOL = {"rtol": 1e-9, "atol": 1e-12}
REPS = ("diag", "block", "kfac", "dense", "ekfac", "lowrank")


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3)).to(F64)


def make_data(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 5, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)


WORKER = textwrap.dedent(
    """
    import os
    import sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, TensorDataset

    sys.path.insert(0, {tests!r})
    import fisherkl.nn as fnn
    from test_distributed import REPS, make_data, make_net

    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    net = make_net()
    x, y = make_data()
    res = {{}}
    for rep in REPS:
        res[rep] = fnn.fisher(net, (x, y), "categorical", "exact", rep, batch_size=64, rank=4,
                              distributed=True).to_dense()
    res["empirical_kfac"] = fnn.fisher(net, (x, y), kind="empirical", batch_size=64, distributed=True).to_dense()
    res["mc_diag"] = fnn.fisher(net, (x, y), kind="mc", representation="diag", batch_size=64, seed=3,
                                distributed=True).to_dense()
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    res["loader_kfac"] = fnn.fisher(net, loader, batch_size=64, distributed=True).to_dense()
    res["strided_diag"] = fnn.fisher(net, iter([(x[i:i + 64], y[i:i + 64]) for i in range(0, 1000, 64)]),
                                     representation="diag", distributed=True).to_dense()
    imp = fnn.fisher(net, (x, y), representation="implicit", batch_size=64, distributed=True)
    v = torch.randn(imp.p, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res["implicit_mv"] = imp.mv(v)
    res["implicit_diag"] = imp.diag()
    # a user's own uneven shards (first 500, next 300, last 200 of 3; halves of 2), then F.all_reduce()
    cuts = [0, 500, 800, 1000] if world == 3 else [0, 600, 1000]
    sl = slice(cuts[rank], cuts[rank + 1])
    for rep in ("dense", "diag", "block", "kfac"):
        f = fnn.fisher(net, (x[sl], y[sl]), representation=rep, batch_size=64)
        res["allreduce_" + rep] = f.all_reduce().to_dense()
    try:
        fnn.fisher(net, (x[sl], y[sl]), representation="ekfac", batch_size=64).all_reduce()
        res["ekfac_error"] = ""
    except Exception as e:
        res["ekfac_error"] = str(e)
    torch.save(res, out)
    dist.barrier()
    dist.destroy_process_group()
    # skip interpreter teardown: gloo's background threads sometimes abort it ("terminate called
    # without an active exception") after all work is done and saved
    sys.stdout.flush()
    os._exit(0)
    """
)


def run_ranks(tmp_path: Path, world: int) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    init = tmp_path / "init"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(world), str(init), str(tmp_path / f"out{r}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for r in range(world)
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
    return [torch.load(tmp_path / f"out{r}.pt", weights_only=True) for r in range(world)]


@pytest.fixture(scope="module")
def oracle() -> dict:
    net = make_net()
    x, y = make_data()
    out = {rep: fnn.fisher(net, (x, y), representation=rep, batch_size=64, rank=4).to_dense() for rep in REPS}
    out["empirical_kfac"] = fnn.fisher(net, (x, y), kind="empirical", batch_size=64).to_dense()
    out["mc_diag"] = fnn.fisher(net, (x, y), kind="mc", representation="diag", batch_size=64, seed=3).to_dense()
    imp = fnn.fisher(net, (x, y), representation="implicit", batch_size=64)
    v = torch.randn(imp.p, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    out["implicit_mv"] = imp.mv(v)
    out["implicit_diag"] = imp.diag()
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_equal_single_process(tmp_path, oracle, world):
    results = run_ranks(tmp_path, world)
    for rank, res in enumerate(results):
        for rep in (*REPS, "empirical_kfac", "mc_diag", "implicit_mv", "implicit_diag"):
            torch.testing.assert_close(res[rep], oracle[rep], **TOL, msg=f"{rep}, rank {rank} of {world}")
        torch.testing.assert_close(res["loader_kfac"], oracle["kfac"], **TOL)
        torch.testing.assert_close(res["strided_diag"], oracle["diag"], **TOL)
        for rep in ("dense", "diag", "block", "kfac"):
            torch.testing.assert_close(res["allreduce_" + rep], oracle[rep], **TOL, msg=f"all_reduce {rep}")
        assert "eigenbases differ" in res["ekfac_error"]
    for res in results[1:]:  # every rank holds the same Fisher
        torch.testing.assert_close(res["kfac"], results[0]["kfac"], rtol=0, atol=0)


def test_all_reduce_needs_a_process_group():
    net = make_net()
    x, y = make_data(100)
    f = fnn.fisher(net, (x, y), representation="diag")
    with pytest.raises(FisherKLError, match="not initialised"):
        f.all_reduce()
    with pytest.raises(FisherKLError, match="not initialised"):
        fnn.fisher(net, (x, y), representation="diag", distributed=True)
    with pytest.raises(FisherKLError, match="n_examples"):
        (2 * f).all_reduce()
    lr = LowRank(torch.ones(1, dtype=F64), torch.eye(f.p, 1, dtype=F64), f.layout)
    lr.n_examples = 3
    with pytest.raises(FisherKLError, match="top-k eigenpairs"):
        lr.all_reduce()


def test_counts_are_recorded():
    net = make_net()
    x, y = make_data(130)
    assert fnn.fisher(net, (x, y), representation="dense", batch_size=64).n_examples == 130
    k = fnn.fisher(net, (x, y), representation="kfac", batch_size=64)
    assert k.n_examples == 130 and k.row_counts == {"0.weight": 130, "3.weight": 130}
    assert isinstance(fnn.fisher(net, (x, y), representation="diag"), Diagonal)
    assert isinstance(fnn.fisher(net, (x, y), representation="dense"), Dense)


MISMATCH_WORKER = textwrap.dedent(
    """
    import os
    import sys
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    sys.path.insert(0, {tests!r})
    import fisherkl.nn as fnn
    from test_distributed import make_data, make_net

    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    x, y = make_data(200)
    net = make_net()
    other = make_net()
    with torch.no_grad():
        other[0].weight.add_(0.1 * rank)  # different weights on rank 1
    wide = torch.nn.Sequential(torch.nn.Linear(5, 8 + 4 * rank), torch.nn.Tanh(),
                               torch.nn.Linear(8 + 4 * rank, 3)).double()
    res = {{}}
    cases = {{
        "kind": lambda: fnn.fisher(net, (x, y), kind=["exact", "empirical"][rank], representation="diag",
                                   distributed=True),
        "weights": lambda: fnn.fisher(other, (x, y), representation="kfac", distributed=True),
        "batch_size": lambda: fnn.fisher(net, (x, y), representation="diag", batch_size=[32, 64][rank],
                                         distributed=True),
        "all_reduce_architectures": lambda: fnn.fisher(wide, (x, y), representation="kfac").all_reduce(),
        "all_reduce_weights": lambda: fnn.fisher(other, (x, y), representation="kfac").all_reduce(),
    }}
    for name, case in cases.items():
        try:
            case()
            res[name] = "no error"
        except Exception as e:
            res[name] = type(e).__name__ + ": " + str(e)
    torch.save(res, out)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
    """
)


def test_ranks_that_disagree_get_a_named_error_on_every_rank(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(MISMATCH_WORKER.format(tests=str(Path(__file__).parent)))
    init = tmp_path / "init"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", str(init), str(tmp_path / f"m{r}.pt")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=180)[0].decode() for p in procs]
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r]}"
    results = [torch.load(tmp_path / f"m{r}.pt", weights_only=True) for r in range(2)]
    expect = {
        "kind": "disagree on kind",
        "weights": "disagree on network",
        "batch_size": "disagree on batch_size",
        "all_reduce_architectures": "disagree on",
        "all_reduce_weights": "disagree on network",
    }
    for res in results:
        for case, text in expect.items():
            assert res[case].startswith("FisherKLError") and text in res[case], (case, res[case])
