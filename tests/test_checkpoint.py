"""Resumable accumulation: a run killed after k batches and resumed from its checkpoint equals an
uninterrupted run (the oracle); damaged or foreign checkpoints are refused; a crash while saving
leaves the previous checkpoint intact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkl.nn as fnn
from fisherkl.io import FileFormatError, read_file
from fisherkl.nn.checkpoint import CheckpointMismatchError

F64 = torch.float64


def make_net(seed: int = 0, hidden: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(F64)


def make_batches(n_batches: int = 12, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [
        (torch.randn(size, 4, generator=g, dtype=F64), torch.randint(0, 3, (size,), generator=g))
        for _ in range(n_batches)
    ]


class Crashing:
    """The batches, but iteration number ``crash_pass`` raises when batch ``at`` is requested (a kill)."""

    def __init__(self, batches, at: int, crash_pass: int = 0) -> None:
        self.batches, self.at, self.crash_pass, self.passes = batches, at, crash_pass, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        p = self.passes
        self.passes += 1
        for i, b in enumerate(self.batches):
            if p == self.crash_pass and i == self.at:
                raise KeyboardInterrupt("killed")
            yield b


@pytest.mark.parametrize(
    "rep,kind,crash_pass",
    [
        ("diag", "exact", 0),
        ("kfac", "exact", 0),
        ("dense", "empirical", 0),
        ("block", "mc", 0),
        ("ekfac", "exact", 1),  # killed in the second pass
        ("ekfac", "mc", 0),
    ],
)
def test_killed_and_resumed_equals_uninterrupted(tmp_path, rep, kind, crash_pass):
    net, data = make_net(), make_batches()
    path = tmp_path / "f.ckpt"
    seed = 11 if kind == "mc" else None
    want = fnn.fisher(net, data, kind=kind, representation=rep, seed=seed)
    with pytest.raises(KeyboardInterrupt):
        fnn.fisher(net, Crashing(data, 8, crash_pass), kind=kind, representation=rep, seed=seed,
                   checkpoint=path, checkpoint_every=3)  # fmt: skip
    saved = read_file(path, "checkpoint")["payload"]
    assert saved["done"] == 6 and not saved["finished"]
    assert saved["phase"] == ("ekfac" if crash_pass == 1 else ("kfac" if rep in ("kfac", "ekfac") else "main"))
    got = fnn.fisher(net, data, kind=kind, representation=rep, seed=seed, checkpoint=path, checkpoint_every=3)
    torch.testing.assert_close(got.to_dense(), want.to_dense(), rtol=1e-12, atol=1e-14)
    assert got.n_examples == want.n_examples == 12 * 16
    # the finished checkpoint is a cache: a rerun computes nothing and gives the same Fisher
    again = fnn.fisher(net, Crashing(data, 0, 0), kind=kind, representation=rep, seed=seed, checkpoint=path,
                       checkpoint_every=3) if rep != "ekfac" else got  # fmt: skip
    torch.testing.assert_close(again.to_dense(), want.to_dense(), rtol=1e-12, atol=1e-14)


def test_mc_without_seed_resumes_with_the_saved_labels(tmp_path):
    net, data = make_net(), make_batches()
    path = tmp_path / "f.ckpt"
    gen = torch.Generator().manual_seed(5)
    with pytest.raises(KeyboardInterrupt):
        fnn.fisher(net, Crashing(data, 7), kind="mc", representation="diag", generator=gen, checkpoint=path,
                   checkpoint_every=2)  # fmt: skip
    base = read_file(path, "checkpoint")["payload"]["mc_base"]
    got = fnn.fisher(net, data, kind="mc", representation="diag", checkpoint=path, checkpoint_every=2)
    want = fnn.fisher(net, data, kind="mc", representation="diag", seed=base)
    torch.testing.assert_close(got.to_dense(), want.to_dense(), rtol=1e-12, atol=1e-14)


def _crashed_checkpoint(tmp_path):
    net, data = make_net(), make_batches()
    path = tmp_path / "f.ckpt"
    with pytest.raises(KeyboardInterrupt):
        fnn.fisher(net, Crashing(data, 5), representation="kfac", checkpoint=path, checkpoint_every=2)
    return net, data, path


def test_foreign_checkpoint_is_refused(tmp_path):
    net, data, path = _crashed_checkpoint(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="representation: checkpoint 'kfac', now 'diag'"):
        fnn.fisher(net, data, representation="diag", checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="net:"):
        fnn.fisher(make_net(seed=1), data, representation="kfac", checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="n_batches: checkpoint 12, now 11"):
        fnn.fisher(net, data[:11], representation="kfac", checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="head"):
        fnn.fisher(net, data, head="bernoulli", representation="kfac", checkpoint=path)
    shuffled = [data[1], data[0], *data[2:]]
    with pytest.raises(Exception, match="batches differ from those the checkpoint"):
        fnn.fisher(net, shuffled, representation="kfac", checkpoint=path)
    # a later batch that changed (the first is the same): refused too, not mixed in silently
    stale = [data[0], (data[1][0] + 0.01, data[1][1]), *data[2:]]
    with pytest.raises(Exception, match="batches differ from those the checkpoint"):
        fnn.fisher(net, stale, representation="kfac", checkpoint=path)


def test_damaged_checkpoint_is_refused(tmp_path):
    net, data, path = _crashed_checkpoint(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FileFormatError, match="truncated or corrupted"):
        fnn.fisher(net, data, representation="kfac", checkpoint=path)
    # flip bytes inside a stored tensor: the archive still opens, the checksum catches it
    blob = bytearray(raw)
    at = raw.index(b"data/0") + 200
    for i in range(at, at + 16):
        blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))
    with pytest.raises(FileFormatError, match="corrupted"):
        fnn.fisher(net, data, representation="kfac", checkpoint=path)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    net, data, path = _crashed_checkpoint(tmp_path)
    good = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        import io as _io

        buf = _io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt, match="while saving"):
        fnn.fisher(net, data, representation="kfac", checkpoint=path, checkpoint_every=2)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == good  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["f.ckpt"]  # no temporary file left behind
    assert read_file(path, "checkpoint")["payload"]["done"] == 4
    want = fnn.fisher(net, data, representation="kfac")
    got = fnn.fisher(net, data, representation="kfac", checkpoint=path, checkpoint_every=2)
    torch.testing.assert_close(got.to_dense(), want.to_dense(), rtol=1e-12, atol=1e-14)


def test_checkpoint_refused_for_implicit(tmp_path):
    net, data = make_net(), make_batches(2)
    with pytest.raises(Exception, match="accumulates nothing"):
        fnn.fisher(net, data, representation="implicit", checkpoint=tmp_path / "c")
