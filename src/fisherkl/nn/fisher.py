"""The Fisher information of a network p(y | x, w) = Head(net(x)), over a stream of data.

    F(w) = (1/N) Σₙ Jₙᵀ I_head(net(xₙ)) Jₙ,      Jₙ = ∂net(xₙ)/∂w  ``[C, p]``,

the **mean** over examples, so that ½ δᵀ F δ ≈ mean over x of KL[p(y|x,w) ‖ p(y|x,w+δ)].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ParameterError, RouteError
from ..matrix import Dense, FisherMatrix, Implicit, lowrank_of
from ..matrix.base import DenseTooLargeError, check_dense_fits
from .data import batches, is_reiterable, seed_generator
from .engine import KINDS, Engine
from .heads import Head, get_head
from .implicit import fisher_mm
from .stats import BlockStat, DiagStat, EKFACStat, KFACStat, groups_by_layer

REPRESENTATIONS = ("dense", "diag", "block", "kfac", "ekfac", "lowrank", "implicit")


def fisher(
    net: nn.Module,
    data: Any,
    head: str | Head | Any = "categorical",
    kind: str = "exact",
    representation: str = "kfac",
    *,
    mc_samples: int = 1,
    rank: int = 10,
    kfac_mode: str = "expand",
    batch_size: int = 256,
    progress: bool | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    check: bool = True,
) -> FisherMatrix:
    """The Fisher information of ``net`` with ``head``, averaged over ``data``, as a Fisher matrix.

    Parameters
    ----------
    net:
        A ``torch.nn.Module`` mapping a batch x ``[n, ...]`` to outputs ``[n, C]``. It is used in its
        current mode (call ``net.eval()`` for BatchNorm / Dropout). Parameters with
        ``requires_grad=False`` are left out.
    data:
        A DataLoader, an iterable of ``(x, y)`` batches (or of x alone), or a tuple of tensors
        ``(x, y)`` cut into batches of ``batch_size``. Streamed: memory does not grow with N.
    head:
        ``"categorical"`` (logits), ``"bernoulli"`` (logits), ``"gaussian"`` (mean, σ = 1; pass
        ``heads.Gaussian(sigma)`` for another σ), ``"gaussian_var"`` (means then log-variances),
        ``"poisson"`` (log-rates), a :class:`~fisherkl.nn.heads.Head`, or any callable outputs ↦
        torch Distribution (its Fisher in output coordinates by :func:`fisherkl.fisher`).
    kind:
        ``"exact"``: the expectation over the model's own y, via the head's square root (≈ C backward
        rows per batch, batched). ``"mc"``: ``mc_samples`` labels sampled from the model per example
        (unbiased, error ∝ 1/√mc_samples). ``"empirical"``: the observed labels y — this is **not**
        the Fisher information (it is the uncentred covariance of the loss gradients, and differs
        from the Fisher away from a perfect fit); it is offered because it is widely used.
    representation:
        ``"dense"`` ``[p, p]``; ``"diag"`` the exact diagonal; ``"block"`` exact dense blocks per layer;
        ``"kfac"`` Kronecker factors per Linear/Conv2d layer (exact diagonal for other parameters);
        ``"ekfac"`` KFAC's eigenbasis with refitted eigenvalues (two passes over the data);
        ``"lowrank"`` the top-``rank`` eigenpairs; ``"implicit"`` matrix-free products, one pass over
        the data per product.
    kfac_mode:
        For layers whose weight is shared over positions t (Conv2d, Linear on ``[n, T, d]``), per
        Eschenhagen et al. (2023): ``"expand"`` (A = Σₙₜ âₙₜâₙₜᵀ/(N·T), G = Σₙₜ gₙₜgₙₜᵀ/N: the classic
        convolutional KFAC) or ``"reduce"`` (A from the position-mean of â, G from the position-sum
        of g, both over N). Without sharing both are the usual KFAC, A = E[ââᵀ], G = E[ggᵀ].
    generator, seed:
        Randomness of ``kind="mc"`` (labels are drawn per batch from a seed, so an implicit Fisher
        reuses the same labels in every product).
    check:
        Verify on the first batch that per-example gradients add up to the batch gradient (catches
        parameters used outside their layer's forward and examples that interact).
    """
    if kind not in KINDS:
        raise RouteError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if representation not in REPRESENTATIONS:
        raise RouteError(f"unknown representation {representation!r}; choose one of {', '.join(REPRESENTATIONS)}")
    if kfac_mode not in ("expand", "reduce"):
        raise RouteError(f"unknown kfac_mode {kfac_mode!r}; choose 'expand' or 'reduce'")
    if not isinstance(net, nn.Module):
        raise ParameterError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    h = get_head(head)
    engine = Engine(net, check=check)
    layout = engine.layout
    base = int(torch.randint(0, 2**62, (), generator=generator)) if seed is None else int(seed)

    def gen_for(index: int) -> torch.Generator | None:
        return seed_generator(base, index, engine.device) if kind == "mc" else None

    def stream(stats: list[Any], desc: str) -> int:
        return engine.run(batches(data, batch_size, progress, desc), h, kind, mc_samples, gen_for, stats)

    def needs_reiterable(what: str) -> None:
        if not is_reiterable(data):
            raise ParameterError(
                f"representation {what!r} passes over the data more than once; give a DataLoader, a list or "
                "a tuple of tensors, not a one-shot iterator"
            )

    if representation == "diag":
        diag = DiagStat(engine)
        stream([diag], "Fisher diag")
        return diag.finish(layout)
    if representation in ("dense", "block"):
        groups = [list(layout.names)] if representation == "dense" else groups_by_layer(engine)
        stat = BlockStat(engine, groups)
        stream([stat], f"Fisher {representation}")
        return stat.finish_dense(layout) if representation == "dense" else stat.finish_blocks(layout)
    if representation in ("kfac", "ekfac"):
        kfac = KFACStat(engine, kfac_mode)
        stream([kfac], "KFAC factors")
        if representation == "kfac":
            return kfac.finish(layout)
        needs_reiterable("ekfac")
        ekfac = EKFACStat(kfac)
        stream([ekfac], "EKFAC scales")
        return ekfac.finish(layout)

    needs_reiterable(representation)

    def exact_diag() -> torch.Tensor:
        d = DiagStat(engine)
        stream([d], "Fisher diag")
        return d.flat(layout)

    mm = fisher_mm(net, layout, data, h, kind, mc_samples, batch_size, gen_for)
    implicit = Implicit(mm, layout, engine.dtype, engine.device, diag_fn=exact_diag)
    if representation == "implicit":
        return implicit
    try:
        check_dense_fits(layout.numel, engine.dtype, "lowrank", factor=3)
    except DenseTooLargeError:
        return lowrank_of(implicit, rank)
    stat = BlockStat(engine, [list(layout.names)])
    stream([stat], "Fisher dense")
    dense: Dense = stat.finish_dense(layout)
    return lowrank_of(dense, min(rank, layout.numel))
