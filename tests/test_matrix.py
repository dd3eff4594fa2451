"""fisherkl.matrix: every representation against its dense meaning, built by hand here.

Oracles: torch.kron and explicit index maps for Kronecker blocks, torch.linalg.solve / eigh on the
dense matrix, scipy for the LinearOperator view.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fisherkl.errors import FisherKLError, ParameterError
from fisherkl.matrix import (
    EKFAC,
    KFAC,
    BlockDiagonal,
    Dense,
    DenseTooLargeError,
    Diagonal,
    Implicit,
    KronBlock,
    LowRank,
    ParamLayout,
    from_state_dict,
    lowrank_of,
)

F64 = torch.float64
# a Conv2d-like weight [3, 2, 2, 1] (d_in = 4) with bias, a Linear weight [2, 3] without, and a "norm" vector
LAYOUT = ParamLayout(("conv.weight", "conv.bias", "lin.weight", "norm.weight"), ((3, 2, 2, 1), (3,), (2, 3), (4,)))
P = LAYOUT.numel  # 12 + 3 + 6 + 4 = 25


def psd(n: int, gen: torch.Generator, rank: int | None = None) -> torch.Tensor:
    m = torch.randn(n, rank or n, generator=gen, dtype=F64)
    return m @ m.T / n


def kron_block_dense(g: torch.Tensor, a: torch.Tensor, w_off: int, d_in: int, b_off: int | None) -> dict:
    """The Kronecker block G ⊗ A as entries of the full matrix, by an explicit index map."""
    d_out = g.shape[0]
    width = a.shape[0]

    def flat(i: int, j: int) -> int:
        return w_off + i * d_in + j if j < d_in else b_off + i

    out = {}
    for i in range(d_out):
        for j in range(width):
            for k in range(d_out):
                for m in range(width):
                    out[(flat(i, j), flat(k, m))] = float(g[i, k] * a[j, m])
    return out


def kfac_pieces(gen: torch.Generator):
    a1, g1 = psd(5, gen), psd(3, gen)
    a2, g2 = psd(3, gen), psd(2, gen)
    rest = torch.rand(4, generator=gen, dtype=F64) + 0.1
    blocks = [
        KronBlock("conv.weight", "conv.bias", 3, 4, {"A": a1, "G": g1}),
        KronBlock("lin.weight", None, 2, 3, {"A": a2, "G": g2}),
    ]
    dense = torch.zeros(P, P, dtype=F64)
    for (i, j), v in kron_block_dense(g1, a1, 0, 4, 12).items():
        dense[i, j] = v
    for (i, j), v in kron_block_dense(g2, a2, 15, 3, None).items():
        dense[i, j] = v
    dense[21:, 21:] = torch.diag(rest)
    return blocks, rest, dense


def all_matrices():
    """(name, representation, its dense meaning)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    m = psd(P, gen)
    out.append(("dense", Dense(m, LAYOUT), m))
    d = torch.rand(P, generator=gen, dtype=F64) + 0.1
    out.append(("diag", Diagonal(d, LAYOUT), torch.diag(d)))
    groups = [["conv.weight", "norm.weight"], ["conv.bias"], ["lin.weight"]]
    blocks = [psd(16, gen), psd(3, gen), psd(6, gen)]
    full = torch.zeros(P, P, dtype=F64)
    for g, b in zip(groups, blocks):
        idx = torch.cat([torch.arange(LAYOUT.slice(n).start, LAYOUT.slice(n).stop) for n in g])
        full[idx[:, None], idx[None, :]] = b
    out.append(("block", BlockDiagonal(groups, blocks, LAYOUT), full))
    kb, rest, kd = kfac_pieces(gen)
    out.append(("kfac", KFAC(kb, ["norm.weight"], rest, LAYOUT), kd))
    # EKFAC with S = λ_G ⊗ λ_A is KFAC; with other S: Q (S) Qᵀ by hand
    eb, dense_e = [], torch.zeros(P, P, dtype=F64)
    for b, (w_off, b_off) in zip(kb, [(0, 12), (15, None)]):
        wa, qa = torch.linalg.eigh(b.tensors["A"])
        wg, qg = torch.linalg.eigh(b.tensors["G"])
        s = torch.rand(len(wg), len(wa), generator=gen, dtype=F64) + 0.05
        eb.append(KronBlock(b.weight, b.bias, b.d_out, b.d_in, {"QA": qa, "QG": qg, "S": s}))
        q = torch.kron(qg, qa)
        blk = q @ torch.diag(s.reshape(-1)) @ q.T  # in the row-major order of [W | b]
        width = b.d_in + (b.bias is not None)
        idx = [w_off + i * b.d_in + j if j < b.d_in else b_off + i for i in range(b.d_out) for j in range(width)]
        idx_t = torch.tensor(idx)
        dense_e[idx_t[:, None], idx_t[None, :]] = blk
    dense_e[21:, 21:] = torch.diag(rest)
    out.append(("ekfac", EKFAC(eb, ["norm.weight"], rest, LAYOUT), dense_e))
    u, _ = torch.linalg.qr(torch.randn(P, 4, generator=gen, dtype=F64))
    lam = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=F64)
    out.append(("lowrank", LowRank(lam, u, LAYOUT), u @ torch.diag(lam) @ u.T))
    m2 = psd(P, gen)
    out.append(("implicit", Implicit(lambda v: m2 @ v, LAYOUT, F64), m2))
    return out


CASES = all_matrices()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("name", "f", "dense"), CASES, ids=IDS)
def test_products_diag_trace_dense(name, f, dense):
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(P, generator=gen, dtype=F64)
    torch.testing.assert_close(f.to_dense(), dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.mv(v), dense @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f @ v, dense @ v, rtol=1e-12, atol=1e-12)
    cols = torch.randn(P, 3, generator=gen, dtype=F64)
    torch.testing.assert_close(f.mv(cols), dense @ cols, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.quad(v), v @ dense @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.quad(cols), torch.einsum("pk,pq,qk->k", cols, dense, cols), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.diag(), dense.diagonal(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f.trace(), dense.trace(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "f", "dense"), CASES, ids=IDS)
def test_vector_forms(name, f, dense):
    v = torch.randn(P, generator=torch.Generator().manual_seed(2), dtype=F64)
    parts = [v[LAYOUT.slice(n)].reshape(s) for n, s in zip(LAYOUT.names, LAYOUT.shapes)]
    want = dense @ v
    out_list = f.mv(parts)
    assert isinstance(out_list, list)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in out_list]), want)
    out_dict = f.mv(dict(zip(LAYOUT.names, parts)))
    assert set(out_dict) == set(LAYOUT.names)
    torch.testing.assert_close(out_dict["lin.weight"], want[LAYOUT.slice("lin.weight")].reshape(2, 3))
    d = f.diag("dict")
    torch.testing.assert_close(d["conv.weight"], dense.diagonal()[:12].reshape(3, 2, 2, 1))
    with pytest.raises(ParameterError, match="shape"):
        f.mv(torch.zeros(P + 1, dtype=F64))
    with pytest.raises(ParameterError, match=r"lin\.weight"):
        f.mv({**dict(zip(LAYOUT.names, parts)), "lin.weight": torch.zeros(3, 2, dtype=F64)})


@pytest.mark.parametrize(("name", "f", "dense"), CASES, ids=IDS)
def test_solve(name, f, dense):
    b = torch.randn(P, generator=torch.Generator().manual_seed(3), dtype=F64)
    damping = 0.3
    want = torch.linalg.solve(dense + damping * torch.eye(P, dtype=F64), b)
    torch.testing.assert_close(f.solve(b, damping), want, rtol=1e-8, atol=1e-9)
    parts = f.solve(LAYOUT.unflatten(b, "list"), damping)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in parts]), want, rtol=1e-8, atol=1e-9)
    with pytest.raises(ParameterError, match="damping"):
        f.solve(b, -1.0)


def test_solve_singular_needs_damping():
    f = LowRank(torch.ones(1, dtype=F64), torch.eye(P, 1, dtype=F64), LAYOUT)
    with pytest.raises(FisherKLError, match="damping"):
        f.solve(torch.ones(P, dtype=F64))
    with pytest.raises(FisherKLError, match="damping"):
        Dense(torch.zeros(P, P, dtype=F64), LAYOUT).solve(torch.ones(P, dtype=F64))


@pytest.mark.parametrize(("name", "f", "dense"), CASES, ids=IDS)
def test_topk_and_eig(name, f, dense):
    w, _q = torch.linalg.eigh(dense)
    k = 3
    vals, vecs = f.topk(k)
    torch.testing.assert_close(vals, w.flip(0)[:k], rtol=1e-9, atol=1e-10)
    # eigenvectors up to sign: F u = λ u and orthonormal
    torch.testing.assert_close(dense @ vecs, vecs * vals, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(k, dtype=F64), rtol=1e-8, atol=1e-8)
    if name not in ("implicit",):
        ev, _ = f.eig()
        torch.testing.assert_close(ev, w, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(("name", "f", "dense"), [c for c in CASES if c[0] != "implicit"], ids=IDS[:-1])
def test_state_dict_round_trip(name, f, dense):
    buf = io.BytesIO()
    torch.save(f.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    g = from_state_dict(state)
    assert type(g) is type(f)
    torch.testing.assert_close(g.to_dense(), dense, rtol=1e-12, atol=1e-12)
    h = f * 2.0
    h.load_state_dict(state) if type(h) is type(f) else None
    if type(h) is type(f):
        torch.testing.assert_close(h.to_dense(), dense, rtol=1e-12, atol=1e-12)
    with pytest.raises(ParameterError, match="not a"):
        Diagonal(torch.ones(P, dtype=F64), LAYOUT).load_state_dict(Dense(dense, LAYOUT).state_dict())


def test_implicit_has_no_state_dict():
    f = next(c[1] for c in CASES if c[0] == "implicit")
    with pytest.raises(FisherKLError, match="state_dict"):
        f.state_dict()


@pytest.mark.parametrize(("name", "f", "dense"), CASES, ids=IDS)
def test_algebra(name, f, dense):
    v = torch.randn(P, generator=torch.Generator().manual_seed(4), dtype=F64)
    torch.testing.assert_close((2.5 * f).mv(v), 2.5 * dense @ v)
    torch.testing.assert_close((f * 2.5).to_dense(), 2.5 * dense)
    torch.testing.assert_close((f / 4).diag(), dense.diagonal() / 4)
    other = Diagonal(torch.arange(P, dtype=F64), LAYOUT)
    s = f + other
    torch.testing.assert_close(s.to_dense(), dense + torch.diag(torch.arange(P, dtype=F64)))
    torch.testing.assert_close((f + f).to_dense(), 2 * dense)
    torch.testing.assert_close(sum([f, f, f]).trace(), 3 * dense.trace())
    torch.testing.assert_close(
        (0.5 * (f + other)).solve(v, 1.0),
        torch.linalg.solve(0.5 * (dense + torch.diag(torch.arange(P, dtype=F64))) + torch.eye(P, dtype=F64), v),
    )
    with pytest.raises(ParameterError, match="negative"):
        _ = -1.0 * f


@pytest.mark.parametrize(("name", "f", "dense"), CASES, ids=IDS)
def test_linear_operator(name, f, dense):
    from scipy.sparse.linalg import LinearOperator, cg

    op = f.as_linear_operator()
    assert isinstance(op, LinearOperator) and op.shape == (P, P)
    x = np.random.default_rng(0).standard_normal(P)
    np.testing.assert_allclose(op @ x, dense.numpy() @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.matmat(np.eye(P)), dense.numpy(), rtol=1e-12, atol=1e-12)
    shifted = op + 0.5 * LinearOperator((P, P), matvec=lambda z: z, dtype=np.float64)
    sol, info = cg(shifted, x, rtol=1e-12, maxiter=1000)
    assert info == 0
    np.testing.assert_allclose(sol, np.linalg.solve(dense.numpy() + 0.5 * np.eye(P), x), rtol=1e-6, atol=1e-8)


def test_to_dense_refuses_beyond_memory_limit():
    f = Diagonal(torch.ones(P, dtype=F64), LAYOUT)
    with pytest.raises(DenseTooLargeError, match="MiB"):
        f.to_dense(max_bytes=100)
    f.to_dense(max_bytes=P * P * 8)


def test_lowrank_of_is_best_rank_k():
    f = CASES[0][1]
    lr = lowrank_of(f, 5)
    w, q = torch.linalg.eigh(CASES[0][2])
    want = q[:, -5:] @ torch.diag(w[-5:]) @ q[:, -5:].T
    torch.testing.assert_close(lr.to_dense(), want, rtol=1e-9, atol=1e-10)


def test_kfac_equals_torch_kron_for_a_single_block():
    layout = ParamLayout(("w", "b"), ((2, 3), (2,)))
    gen = torch.Generator().manual_seed(5)
    a, g = psd(4, gen), psd(2, gen)
    f = KFAC([KronBlock("w", "b", 2, 3, {"A": a, "G": g})], [], torch.zeros(0, dtype=F64), layout)
    # order [W row-major | b] vs Ŵ = [W | b] row-major: permutation by hand
    perm = [0, 1, 2, 4, 5, 6, 3, 7]  # layout index -> Ŵ index
    k = torch.kron(g, a)
    want = k[perm][:, perm]
    torch.testing.assert_close(f.to_dense(), want)
