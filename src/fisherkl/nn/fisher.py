"""The Fisher information of a network p(y | x, w) = Head(net(x)), over a stream of data.

    F(w) = (1/N) Σₙ Σₜ Jₙₜᵀ I_head(net(xₙ)ₜ) Jₙₜ,      Jₙₜ = ∂net(xₙ)ₜ/∂w  ``[C, p]``,

the **mean** over examples (sequences) of the **sum** over their unmasked positions t (one term for a
network with outputs ``[n, C]``), so that ½ δᵀ F δ ≈ mean over x of KL[p(y|x,w) ‖ p(y|x,w+δ)] with the KL
of a sequence the sum of its positions' KLs (:func:`fisherkl.nn.kl` uses the same convention).
``positions="mean"`` divides by the number of unmasked positions instead (a per-token mean).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import FisherKLError, ParameterError, RouteError
from ..matrix import Dense, FisherMatrix, Implicit, lowrank_of
from ..matrix.base import DenseTooLargeError, agree, all_reduce_sums, check_dense_fits, require_process_group
from .batch import Adapter
from .checkpoint import Checkpoint, batch_digest, chain_digest, net_digest, rank_path
from .data import dataset_size, is_reiterable, iter_raw, n_batches, progress_bar, seed_generator
from .distributed import broadcast_int, indexed_batches, rank_world, reduce_stat, shard_mode
from .engine import KINDS, Engine
from .heads import Head, get_head
from .implicit import fisher_mm, fisher_mm_sums
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
    batch_size: int | None = None,
    progress: bool | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    check: bool = True,
    distributed: bool = False,
    group: Any = None,
    shard: bool | None = None,
    checkpoint: Any = None,
    checkpoint_every: int = 100,
    adapter: Adapter | None = None,
    positions: str = "sum",
    stat_dtype: torch.dtype | None = None,
) -> FisherMatrix:
    """The Fisher information of ``net`` with ``head``, averaged over ``data``, as a Fisher matrix.

    Parameters
    ----------
    net:
        A ``torch.nn.Module`` mapping a batch to outputs ``[n, C]`` or ``[n, *P, C]`` (P: positions —
        tokens, pixels, time steps — each with its own independent head). It is used in its current mode
        (call ``net.eval()`` for BatchNorm / Dropout). Parameters with ``requires_grad=False`` are left out.
        ``torch.compile`` / DDP wrappers are looked through. Layers: Linear, Conv1d/2d/3d (any groups,
        stride, dilation, padding), Embedding, LayerNorm, RMSNorm, GroupNorm, BatchNorm (eval),
        MultiheadAttention (and so ``nn.Transformer*`` layers), HuggingFace Conv1D have their own rules;
        any other module is handled exactly by torch.func on that module; parameters used outside their
        module (a tied head ``F.linear(h, emb.weight)``) by torch.func on the whole network.
    data:
        A DataLoader or any iterable of batches, or a whole data set cut into batches of ``batch_size``
        (default: as many examples as keep one batch's activations under 1 GiB, measured on two examples)
        (a tensor x, a tuple of tensors (x, y), a dict of tensors). A batch is x, ``(inputs, y)`` with
        inputs a tensor, tuple or dict, or a dict such as a HuggingFace batch (see ``adapter``).
        Streamed: memory does not grow with N.
    adapter:
        How a batch becomes inputs, outputs, labels and a mask: :class:`fisherkl.nn.Adapter` (default:
        labels from ``y`` or a dict's ``"labels"``; outputs from a tensor, a tuple's first element or
        ``.logits``; labels equal to −100 masked). :func:`fisherkl.nn.causal_lm` for language models
        (logits at position t predict token t + 1). A masked position contributes nothing to any kind or
        representation.
    positions:
        ``"sum"`` (default): the Fisher of a sequence sums over its positions and F is the mean over
        sequences; ``"mean"``: F is the mean over all unmasked positions (per token).
    stat_dtype:
        The dtype the statistics are accumulated in (and the result's). Default: the network's, except
        float32 for bf16 / fp16 networks (whose forward and backward passes stay in low precision; the
        head's statistics, the per-layer products and sums run in float32, eigendecompositions in float64).
    head:
        ``"categorical"`` (logits), ``"bernoulli"`` (logits), ``"gaussian"`` (mean, σ = 1; pass
        ``heads.Gaussian(sigma)`` for another σ), ``"gaussian_var"`` (means then log-variances),
        ``"poisson"`` (log-rates), a :class:`~fisherkl.nn.heads.Head`, or any callable outputs ↦
        torch Distribution (its Fisher in output coordinates by :func:`fisherkl.fisher`).
    kind:
        ``"exact"``: the expectation over the model's own y, via the head's square root (≈ C backward
        rows per batch, batched; with positions, C − 1 rows **per position**, each a backward pass
        through the whole batch — for language models with large vocabularies or long sequences use
        ``"mc"``, whose cost does not grow with C or T). ``"mc"``: ``mc_samples`` labels sampled from the
        model per example (unbiased, error ∝ 1/√mc_samples). ``"empirical"``: the observed labels y — this is **not**
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
        On the first batch, verify on 3 examples with a random cotangent that the layer rules' per-example
        gradients add up to the batch gradient; parameters for which they do not (used outside their
        module's forward) are then handled by torch.func on the whole network, so the result stays exact.
        Examples whose outputs depend on the rest of the batch are refused. Skipped for an
        ``nn.Sequential`` of plain torch layers without tied weights, which can do neither.
    distributed, group, shard:
        ``distributed=True``: every rank of the initialised ``torch.distributed`` process ``group``
        (default: the world) calls ``fisher`` with the same arguments and gets the same Fisher, the
        mean over all ranks' data (per-rank sums and example counts are all-reduced, so uneven shards
        are exact). The data is sharded here (``shard=None``/``True``): tensors and default
        DataLoaders by batch (batch b to rank b mod world), other iterables by keeping every
        world-th batch (the order must be the same on every rank); ``shard=False`` (or a DataLoader
        with a ``DistributedSampler``) means each rank already holds its own shard. EKFAC takes its
        eigenbasis from the reduced KFAC factors, then reduces the refitted scales; ``lowrank``
        reduces the dense statistics before the eigendecomposition (or, when p × p does not fit,
        runs Lanczos on all-reduced products); ``implicit`` all-reduces every product (every rank
        must call ``mv`` / ``diag`` / ``solve`` together). See docs/distributed.md.
    checkpoint, checkpoint_every:
        A path: the partial statistics are saved there atomically every ``checkpoint_every`` batches
        and at the end of each pass; a later call with the same arguments resumes from it (skipping
        the batches done) and gives the result of an uninterrupted run. The data order must be
        deterministic. A checkpoint for another network, configuration or data is refused. With
        ``distributed=True`` each rank keeps its own file (``name.rank{r}-of-{world}.pt``). Not for
        ``implicit`` (nothing accumulates).
    """
    if kind not in KINDS:
        raise RouteError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if representation not in REPRESENTATIONS:
        raise RouteError(f"unknown representation {representation!r}; choose one of {', '.join(REPRESENTATIONS)}")
    if kfac_mode not in ("expand", "reduce"):
        raise RouteError(f"unknown kfac_mode {kfac_mode!r}; choose 'expand' or 'reduce'")
    if positions not in ("sum", "mean"):
        raise ParameterError(f"positions must be 'sum' or 'mean', got {positions!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ParameterError(f"batch_size must be an integer >= 1 or None (from memory), got {batch_size!r}")
    for what, value in (("mc_samples", mc_samples), ("rank", rank), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParameterError(f"{what} must be an integer >= 1, got {value!r}")
    if not isinstance(net, nn.Module):
        raise ParameterError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    h = get_head(head)
    engine = Engine(net, check=check, adapter=adapter, stat_dtype=stat_dtype)
    net = engine.net
    if batch_size is None:
        batch_size = auto_batch_size(engine, data)
    layout = engine.layout
    my_rank, world = rank_world(group) if distributed else (0, 1)
    mode = shard_mode(data, world, shard)
    if distributed:
        agree(
            {
                "network": net_digest(net)[:16],
                "kind": kind,
                "representation": representation,
                "head": repr(h),
                "batch_size": batch_size,
                "kfac_mode": kfac_mode,
                "mc_samples": mc_samples if kind == "mc" else None,
                "rank (lowrank)": rank if representation == "lowrank" else None,
                "positions": positions,
                "adapter": repr(engine.adapter),
                "dtype": f"{engine.net_dtype}/{engine.dtype}",
                "sharding": mode,
            },
            group,
            "fisherkl.nn.fisher(distributed=True)",
        )
    base = int(torch.randint(0, 2**62, (), generator=generator)) if seed is None else int(seed)
    if distributed and kind == "mc" and seed is None:
        base = broadcast_int(base, group)
    lanczos = False
    if representation == "lowrank":
        try:
            check_dense_fits(layout.numel, engine.dtype, "lowrank", factor=3)
        except DenseTooLargeError:
            lanczos = True

    ckpt: Checkpoint | None = None
    saved: dict[str, Any] | None = None
    if checkpoint is not None:
        if representation == "implicit" or lanczos:
            raise RouteError(
                f"checkpoint: representation {representation!r} accumulates nothing over the data "
                "(each product is a pass of its own); checkpoints are for dense, diag, block, kfac, ekfac "
                "and lowrank when p × p fits"
            )
        fp = {
            "net": net_digest(net)[:32],
            "representation": representation,
            "kind": kind,
            "head": repr(h),
            "kfac_mode": kfac_mode,
            "batch_size": int(batch_size),
            "n_batches": n_batches(data, batch_size),
            "mc_samples": int(mc_samples) if kind == "mc" else None,
            "seed": None if seed is None else int(seed),
            "rank": my_rank,
            "world_size": world,
            "shard": mode,
            "adapter": repr(engine.adapter),
            "positions": positions,
            "stat_dtype": str(engine.dtype),
        }
        ckpt = Checkpoint(rank_path(checkpoint, my_rank, world), checkpoint_every, fp)
        saved = ckpt.load()
        if saved is not None and kind == "mc":
            base = int(saved["mc_base"])
    current = {"index": 0}

    def gen_for(_: int) -> torch.Generator | None:
        return seed_generator(base, current["index"], engine.device) if kind == "mc" else None

    def own_batches() -> Iterator[tuple[int, Any]]:
        return indexed_batches(data, batch_size, my_rank, world, mode)

    total_batches = n_batches(data, batch_size)
    local_total = None if total_batches is None or world > 1 else total_batches
    done_stats: dict[str, Any] = {}

    one_batch = total_batches == 1 and ckpt is None and not distributed
    keep = _KeepOnlyBatch() if representation == "ekfac" and one_batch else None

    def accumulate(phase: str, stat: Any, desc: str) -> None:
        """One pass over this rank's batches into ``stat``, resuming / checkpointing ``phase``."""
        skip, data_hash = 0, None
        if saved is not None and phase in saved["stats"]:
            stat.load(saved["stats"][phase])
            if saved["phase"] != phase or saved["finished"]:
                done_stats[phase] = stat.state()
                return
            skip, data_hash = int(saved["done"]), saved["data_hash"]
        tick = _Tick(skip)

        def checkpoint_now(finished: bool) -> None:
            if ckpt is not None:
                ckpt.save(
                    {
                        "phase": phase,
                        "done": tick.done,
                        "finished": finished,
                        "stats": {**done_stats, phase: stat.state()},
                        "mc_base": base,
                        "data_hash": tick.data_hash,
                    }
                )

        if ckpt is not None:
            tick.every, tick.save = ckpt.every, lambda: checkpoint_now(False)

        def stream() -> Iterator[Any]:
            for local, (g, raw) in enumerate(own_batches()):
                if ckpt is not None:  # a running hash of every batch read: resuming on other data is refused
                    tick.data_hash = chain_digest(tick.data_hash, batch_digest(raw))
                    if local == skip - 1 and data_hash is not None and data_hash != tick.data_hash:
                        raise FisherKLError(
                            f"checkpoint {ckpt.path}: the first {skip} batches differ from those the checkpoint was "
                            "written with; resuming needs the same data in the same order (no unseeded shuffling)"
                        )
                if local < skip:
                    continue
                current["index"] = g
                yield raw

        it = iter(progress_bar(stream(), local_total, progress, desc))
        try:
            first = next(it)
        except StopIteration:  # this rank has no (more) batches
            pass
        else:
            stats = [stat, tick, keep] if keep is not None and phase == "kfac" else [stat, tick]
            engine.run(itertools.chain([first], it), h, kind, mc_samples, gen_for, stats, positions)
        checkpoint_now(True)
        done_stats[phase] = stat.state()

    def collect(phase: str, stat: Any, desc: str) -> Any:
        accumulate(phase, stat, desc)
        if distributed:
            reduce_stat(stat, group)
        if stat.count == 0:
            raise ParameterError("data: no examples" + (" on any rank" if distributed else ""))
        return stat

    def done(m: FisherMatrix) -> FisherMatrix:
        """Keep references to the parameters (so that the matrix serves the same network reached another way)."""
        m.param_refs = tuple(weakref.ref(p) for p in engine.params)  # type: ignore[attr-defined]
        if distributed or _distributed_ready():  # so that F.all_reduce() can tell other networks apart
            m.source = net_digest(net)[:16]  # type: ignore[attr-defined]
        return m

    if representation == "diag":
        return done(collect("main", DiagStat(engine), "Fisher diag").finish(layout))
    if representation in ("dense", "block") or (representation == "lowrank" and not lanczos):
        groups = groups_by_layer(engine) if representation == "block" else [list(layout.names)]
        stat = collect("main", BlockStat(engine, groups), f"Fisher {representation}")
        if representation == "block":
            return done(stat.finish_blocks(layout))
        dense: Dense = stat.finish_dense(layout)
        return done(dense if representation == "dense" else lowrank_of(dense, min(rank, layout.numel)))
    if representation in ("kfac", "ekfac"):
        kfac = collect("kfac", KFACStat(engine, kfac_mode), "KFAC factors")
        if representation == "kfac":
            return done(kfac.finish(layout))
        needs_reiterable(data, "ekfac")
        ekfac = EKFACStat(kfac, eigh_dtype=kfac.eigh_dtype)
        if distributed:  # one eigenbasis for all ranks (eigh of the same reduced factors, made certain)
            dist = require_process_group(group)
            src = 0 if group is None else int(dist.get_global_rank(group, 0))
            for qg, qa in ekfac.bases.values():
                dist.broadcast(qg, src=src, group=group)
                if qa is not None:
                    dist.broadcast(qa, src=src, group=group)
        if keep is not None and keep.calls is not None:  # one batch, one backward: its gradients are still here
            ekfac.add_rows(keep.use(engine))
            ekfac.end_batch(engine, keep.count)
            engine.calls = {}
            return done(ekfac.finish(layout))
        return done(collect("ekfac", ekfac, "EKFAC scales").finish(layout))

    needs_reiterable(data, representation)
    if not distributed:

        def exact_diag() -> torch.Tensor:
            d = DiagStat(engine)
            engine.run(
                progress_bar((b for _, b in own_batches()), total_batches, progress, "Fisher diag"),
                h,
                kind,
                mc_samples,
                lambda i: seed_generator(base, i, engine.device) if kind == "mc" else None,
                [d],
                positions,
            )
            return d.flat(layout)

        mm = fisher_mm(
            net,
            layout,
            data,
            h,
            kind,
            mc_samples,
            batch_size,
            gen_for_index(kind, base, engine),
            engine.adapter,
            positions,
        )
    else:
        shard_data = _Counted(own_batches, current)
        local_mm = fisher_mm_sums(
            net, layout, shard_data, h, kind, mc_samples, batch_size, gen_for, engine.adapter, positions
        )

        def mm(v: torch.Tensor) -> torch.Tensor:
            local, count = local_mm(v)
            (s,), (n,) = all_reduce_sums([local], [count], group)
            if n == 0:
                raise ParameterError("data: no examples on any rank")
            return s / n

        def exact_diag() -> torch.Tensor:
            return collect("diag", DiagStat(engine), "Fisher diag").flat(layout)

    implicit = Implicit(mm, layout, engine.dtype, engine.device, diag_fn=exact_diag)
    if representation == "implicit":
        return done(implicit)
    return done(lowrank_of(implicit, rank))


class _Tick:
    """A pseudo-statistic, added last: counts batches and saves a checkpoint every ``every``."""

    def __init__(self, done: int) -> None:
        self.done = done
        self.every = 0
        self.save: Any = None
        self.data_hash: str | None = None
        self.count = 0

    ready = True

    def streams(self, engine: Engine, rule: Any) -> bool:
        return True

    def add_rows(self, engine: Engine, rules: list[Any] | None = None) -> None:
        pass

    def end_batch(self, engine: Engine, count: int) -> None:
        self.done += 1
        if self.every and self.done % self.every == 0:
            self.save()


class _Counted:
    """This rank's batches, tracking the global batch index (for the Monte Carlo seeds)."""

    def __init__(self, source: Any, current: dict[str, int]) -> None:
        self.source, self.current = source, current

    def __iter__(self) -> Iterator[Any]:
        for g, raw in self.source():
            self.current["index"] = g
            yield raw


def _distributed_ready() -> bool:
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


AUTO_BATCH_BYTES = 1024**3


def auto_batch_size(engine: Engine, data: Any) -> int:
    """Examples per batch for a whole data set: one batch's recorded activations under ``AUTO_BATCH_BYTES``
    (measured by a forward of two examples); larger batches amortise the per-batch passes. For an iterable
    of batches (a DataLoader) the batches are the data's own and this is not used."""
    size = dataset_size(data)
    if size is None:
        return 256
    first = next(iter(iter_raw(data, 2)))
    per = engine.example_bytes(engine.adapter.batch(first))
    return max(1, min(size, AUTO_BATCH_BYTES // max(1, per)))


def gen_for_index(kind: str, base: int, engine: Engine) -> Any:
    return lambda i: seed_generator(base, i, engine.device) if kind == "mc" else None


def needs_reiterable(data: Any, what: str) -> None:
    if not is_reiterable(data):
        raise ParameterError(
            f"representation {what!r} passes over the data more than once; give a DataLoader, a list or "
            "a tuple of tensors, not a one-shot iterator"
        )


class _KeepOnlyBatch:
    """Keeps the recorded calls of a pass over a single batch with a single backward, so that EKFAC's second
    pass (its scales in the eigenbasis of the factors) reuses them instead of repeating the forward and backward
    passes. The second pass would draw the same Monte Carlo rows (seeded per batch), so the result is the same.
    Only while that is cheap: when one row's gradients of the recorded outputs exceed ``KEEP_BYTES`` the layers
    are streamed instead (see :mod:`fisherkl.nn.tap`) and the second pass runs."""

    ready = True
    KEEP_BYTES = 64 * 1024**2

    def __init__(self) -> None:
        self.calls: dict[Any, Any] | None = None
        self.count = 0
        self.backwards = 0
        self.keeping = True

    def streams(self, engine: Engine, rule: Any) -> bool:
        self.keeping = self.keeping and engine.row_bytes() <= self.KEEP_BYTES
        return not self.keeping

    def add_rows(self, engine: Engine, rules: list[Any] | None = None) -> None:
        self.backwards += 1

    def end_batch(self, engine: Engine, count: int) -> None:
        self.calls = engine.calls if self.backwards == 1 and self.keeping else None
        self.count = count

    def use(self, engine: Engine) -> Engine:
        assert self.calls is not None
        engine.calls, self.calls = self.calls, None
        return engine
