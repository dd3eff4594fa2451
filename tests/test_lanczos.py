"""Thick-restart Lanczos (fisherkl.matrix.lanczos) against a dense eigendecomposition."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fisherkl.errors import ConvergenceError
from fisherkl.matrix.lanczos import topk_eigh

F64 = torch.float64
CPU = torch.device("cpu")


def spd(p: int, lam: torch.Tensor, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return (q * lam) @ q.T


def check(a: torch.Tensor, k: int, rtol: float = 1e-10) -> int:
    count = [0]

    def mm(v: torch.Tensor) -> torch.Tensor:
        count[0] += v.shape[1]
        return a @ v

    vals, vecs = topk_eigh(mm, a.shape[0], k, F64, CPU)
    ref = torch.linalg.eigvalsh(a).flip(0)[:k]
    scale = float(ref.abs().max())
    torch.testing.assert_close(vals, ref, rtol=0, atol=rtol * scale)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(k, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(a @ vecs, vecs * vals, rtol=0, atol=1e-6 * scale)
    return count[0]


def test_slow_decay_needs_restarts_and_converges():
    p, k = 800, 20
    lam = 1 / torch.arange(1, p + 1, dtype=F64)
    products = check(spd(p, lam, 0), k)
    assert products > 41  # more than one basis of m = 41 vectors: the thick restart was exercised


@pytest.mark.parametrize("scale", [1e-12, 1e12])
def test_the_scale_of_the_matrix_does_not_matter(scale):
    p, k = 300, 10
    lam = scale / torch.arange(1, p + 1, dtype=F64)
    check(spd(p, lam, 7), k)


def test_rank_deficient_matrix_continues_past_the_invariant_subspace():
    p, k = 300, 12
    lam = torch.zeros(p, dtype=F64)
    lam[:5] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])  # rank 5: the top 12 include seven zeros
    check(spd(p, lam, 1), k)


def test_small_matrix_takes_the_dense_route():
    a = spd(15, torch.linspace(1, 3, 15, dtype=F64), 2)
    assert check(a, 4) == 15


@pytest.mark.parametrize("scale", [1.0, 1e-9])
def test_float32_operator_meets_its_tolerance(scale):
    p, k = 500, 10
    a = spd(p, scale * torch.exp(-torch.arange(p, dtype=F64) / 20), 3).float()
    vals, vecs = topk_eigh(lambda v: a @ v, p, k, torch.float32, CPU)
    ref = torch.linalg.eigvalsh(a.double()).flip(0)[:k]
    assert vals.dtype == torch.float32 and vecs.shape == (p, k)
    assert float((vals.double() - ref).abs().max()) < 1e-4 * float(ref[0])


def test_no_convergence_is_an_error_not_a_wrong_answer():
    p = 400
    a = spd(p, 1 + 1e-3 * torch.rand(p, generator=torch.Generator().manual_seed(4), dtype=F64), 4)
    with pytest.raises(ConvergenceError, match="did not converge"):
        topk_eigh(lambda v: a @ v, p, 10, F64, CPU, max_products=60)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 8), decay=st.floats(0.5, 3.0))
def test_property_matches_eigh(seed, k, decay):
    p = 120
    lam = torch.as_tensor(np.arange(1, p + 1, dtype=np.float64) ** -decay)
    check(spd(p, lam, seed), k, rtol=1e-9)


# --- preconditioned conjugate gradients (FisherMatrix.solve(preconditioner=...)) ---------------------------
def test_preconditioned_cg_gives_the_dense_solution_in_fewer_products():
    from fisherkl.matrix import Dense, Diagonal, Implicit
    from fisherkl.matrix.layout import ParamLayout

    p = 400
    g = torch.Generator().manual_seed(5)
    scales = torch.logspace(-2, 2, p, dtype=F64)  # badly scaled coordinates: CG alone needs many products
    core = spd(p, 1 + torch.rand(p, generator=g, dtype=F64), 6)
    a = scales.sqrt()[:, None] * core * scales.sqrt()[None, :]
    layout = ParamLayout(("w",), ((p,),))
    count = [0]

    def mm(v: torch.Tensor) -> torch.Tensor:
        count[0] += v.shape[1]
        return a @ v

    f = Implicit(mm, layout, F64)
    b = torch.randn(p, generator=g, dtype=F64)
    lam = 1e-4
    ref = torch.linalg.solve(a + lam * torch.eye(p, dtype=F64), b)
    x_plain = f.solve(b, lam)
    plain = count[0]
    count[0] = 0
    x_pre = f.solve(b, lam, preconditioner=Diagonal(a.diagonal().clone(), layout))
    pre = count[0]
    for x in (x_plain, x_pre):
        torch.testing.assert_close(x, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
    assert pre < plain / 3, (pre, plain)
    with pytest.raises(Exception, match="preconditioner must be a FisherMatrix of the same p"):
        f.solve(b, lam, preconditioner=Dense(torch.eye(3, dtype=F64), ParamLayout(("v",), ((3,),))))
