"""Fisher matrices move like tensors: .to, logdet, sqrt and draws from N(0, (F + λI)⁻¹), per representation.

Oracle: torch.linalg on the dense meaning of each matrix (built by hand in test_matrix.py):
slogdet, eigh-based square root, and the covariance M Mᵀ of the linear map z ↦ draw recovered
from p draws of known standard normals.
"""

from __future__ import annotations

import pytest
import torch

from fisherkl.errors import FisherKLError, ParameterError
from fisherkl.matrix import Dense, Diagonal, LowRank, ScaledMatrix, SumMatrix
from test_matrix import CASES, IDS, LAYOUT, P

F64 = torch.float64
EXTRA = [
    ("scaled", 2.5 * CASES[3][1], 2.5 * CASES[3][2]),  # KFAC keeps its own scaling
    ("scaled-generic", ScaledMatrix(CASES[6][1], 0.5), 0.5 * CASES[6][2]),
    ("sum", SumMatrix([CASES[1][1], CASES[2][1]]), CASES[1][2] + CASES[2][2]),
]
ALL = CASES + EXTRA
ALL_IDS = IDS + [c[0] for c in EXTRA]


def dense_inv_sqrt_cov(dense: torch.Tensor, damping: float) -> torch.Tensor:
    return torch.linalg.inv(dense + damping * torch.eye(P, dtype=F64))


@pytest.mark.parametrize(("name", "f", "dense"), ALL, ids=ALL_IDS)
@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_logdet_against_slogdet(name, f, dense, damping):
    want_sign, want = torch.linalg.slogdet(dense + damping * torch.eye(P, dtype=F64))
    if name == "lowrank" and damping == 0:
        with pytest.raises(FisherKLError, match="singular"):
            f.logdet()
        return
    assert float(want_sign) == 1.0
    torch.testing.assert_close(f.logdet(damping), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("name", "f", "dense"), ALL, ids=ALL_IDS)
def test_sqrt_squares_to_the_matrix(name, f, dense):
    root = f.sqrt()
    r = root.to_dense()
    w, q = torch.linalg.eigh(dense)
    want = (q * w.clamp_min(0).sqrt()) @ q.T
    torch.testing.assert_close(r, want, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(r @ r, dense, rtol=1e-9, atol=1e-9)
    if name in ("diag", "block", "lowrank"):
        assert type(root) is type(f)  # the structure is kept
    if name in ("kfac", "ekfac"):
        assert type(root).__name__ == "EKFAC"


@pytest.mark.parametrize(("name", "f", "dense"), ALL, ids=ALL_IDS)
def test_draws_have_covariance_inverse_of_f_plus_damping(name, f, dense):
    """x = M z for standard normals z: recover M from p draws and check M Mᵀ = (F + λI)⁻¹."""
    damping = 0.3
    x = f.sample(P, damping=damping, generator=torch.Generator().manual_seed(7))
    z = torch.randn(P, P, dtype=F64, generator=torch.Generator().manual_seed(7))
    assert x.shape == (P, P)
    m = x.T @ torch.linalg.inv(z)
    torch.testing.assert_close(m @ m.T, dense_inv_sqrt_cov(dense, damping), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(("name", "f", "dense"), ALL, ids=ALL_IDS)
def test_to_float32_and_back(name, f, dense):
    g = f.to(torch.float32)
    assert g.dtype == torch.float32 and f.dtype == F64
    torch.testing.assert_close(g.to_dense(), dense.float(), rtol=1e-5, atol=1e-6)
    v = torch.randn(P, dtype=F64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(g.mv(v.float()), (dense @ v).float(), rtol=1e-4, atol=1e-5)
    back = g.to(dtype=F64, device="cpu")
    torch.testing.assert_close(back.to_dense(), dense, rtol=1e-6, atol=1e-6)
    assert f.to(F64) is f
    with pytest.raises(ParameterError, match="dtype"):
        f.to(torch.int64)


def test_sample_forms_and_arguments():
    f = CASES[1][1]  # diag
    parts = f.sample(4, damping=0.1, form="dict", generator=torch.Generator().manual_seed(0))
    assert set(parts) == set(LAYOUT.names)
    assert parts["conv.weight"].shape == (4, 3, 2, 2, 1)
    flat = f.sample(4, damping=0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(parts["lin.weight"].reshape(4, -1), flat[:, LAYOUT.slice("lin.weight")])
    lst = f.sample(2, form="list")
    assert [t.shape[1:] for t in lst] == [torch.Size(s) for s in LAYOUT.shapes]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ParameterError, match="n must"):
            f.sample(bad)
    for bad in (-1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ParameterError, match="damping"):
            f.sample(2, damping=bad)
        with pytest.raises(ParameterError, match="damping"):
            f.logdet(bad)
    with pytest.raises(ParameterError, match="form"):
        f.sample(2, form="tuple")


def test_singular_matrices_refuse_without_damping():
    lr = LowRank(torch.ones(1, dtype=F64), torch.eye(P, 1, dtype=F64), LAYOUT)
    with pytest.raises(FisherKLError, match="damping"):
        lr.sample(3)
    lr.sample(3, damping=1e-3)
    zero = Diagonal(torch.zeros(P, dtype=F64), LAYOUT)
    with pytest.raises(FisherKLError, match="singular"):
        zero.logdet()
    torch.testing.assert_close(zero.logdet(2.0), torch.tensor(P * 0.6931471805599453, dtype=F64))
    with pytest.raises(FisherKLError, match="singular"):
        Dense(torch.zeros(P, P, dtype=F64), LAYOUT).sample(2)
