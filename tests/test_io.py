"""F.save / fisherkl.io.load: round trips of every representation, and refusals naming the problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fisherkl.nn as fnn
from fisherkl.errors import FisherKLError
from fisherkl.io import FileFormatError, digest, load
from fisherkl.matrix import SumMatrix

F64 = torch.float64


def make_net(hidden: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.LayerNorm(hidden), nn.Tanh(), nn.Linear(hidden, 3)).to(F64)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(50, 4, generator=g, dtype=F64), torch.randint(0, 3, (50,), generator=g)


@pytest.mark.parametrize("rep", ["dense", "diag", "block", "kfac", "ekfac", "lowrank"])
def test_round_trip(tmp_path, data, rep):
    net = make_net()
    f = fnn.fisher(net, data, representation=rep, rank=5)
    path = tmp_path / f"{rep}.pt"
    f.save(path)
    g = load(path, net=net, representation=rep)
    assert type(g) is type(f) and g.layout == f.layout and g.n_examples == f.n_examples
    torch.testing.assert_close(g.to_dense(), f.to_dense(), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == [f"{rep}.pt"]  # no temporary file left


def test_round_trip_sums_and_scalings(tmp_path, data):
    net = make_net()
    f = fnn.fisher(net, data, representation="kfac") + 2 * fnn.fisher(net, data, representation="diag")
    assert isinstance(f, SumMatrix)
    f.save(tmp_path / "s.pt")
    torch.testing.assert_close(load(tmp_path / "s.pt", net).to_dense(), f.to_dense(), rtol=0, atol=0)


def test_implicit_cannot_be_saved(tmp_path, data):
    f = fnn.fisher(make_net(), data, representation="implicit")
    with pytest.raises(FisherKLError, match="state_dict"):
        f.save(tmp_path / "i.pt")
    assert not list(tmp_path.iterdir())


def test_other_network_is_refused_naming_the_parameter(tmp_path, data):
    f = fnn.fisher(make_net(6), data, representation="diag")
    f.save(tmp_path / "f.pt")
    with pytest.raises(FileFormatError, match=r"parameter '0.weight' has shape \(6, 4\) in the file but \(7, 4\)"):
        load(tmp_path / "f.pt", net=make_net(7))
    other = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(F64)
    with pytest.raises(FileFormatError, match=r"parameter '1\.weight'"):
        load(tmp_path / "f.pt", net=other)
    with pytest.raises(FileFormatError, match="holds a Diagonal Fisher, not the 'kfac'"):
        load(tmp_path / "f.pt", representation="kfac")


def test_damaged_or_foreign_files_are_refused(tmp_path, data):
    f = fnn.fisher(make_net(), data, representation="kfac")
    path = tmp_path / "f.pt"
    f.save(path)
    raw = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[:-100])
    with pytest.raises(FileFormatError, match="truncated or corrupted"):
        load(tmp_path / "trunc.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(FileFormatError, match="truncated or corrupted"):
        load(tmp_path / "empty.pt")
    torch.save({"a": torch.ones(2)}, tmp_path / "plain.pt")
    with pytest.raises(FileFormatError, match="not a fisherkl file"):
        load(tmp_path / "plain.pt")
    state = f.state_dict()
    doc = {"format": "fisherkl", "version": 99, "what": "matrix", "representation": "KFAC", "payload": state}
    doc["checksum"] = digest(state)
    torch.save(doc, tmp_path / "new.pt")
    with pytest.raises(FileFormatError, match="format version 99"):
        load(tmp_path / "new.pt")
    doc = {**doc, "version": 1, "checksum": "0" * 64}
    torch.save(doc, tmp_path / "sum.pt")
    with pytest.raises(FileFormatError, match="checksum"):
        load(tmp_path / "sum.pt")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt")


def test_load_refuses_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "fisherkl", "x": Evil()}))
    with pytest.raises(FileFormatError):
        load(tmp_path / "evil.pt")
