"""How well does each Fisher representation predict the KL it stands for, on *your* network?

:func:`approximation_report` compares, for each representation (diag, KFAC, EKFAC, block, dense, …)
and each kind of step direction (random, the loss gradient, the representation's own natural
gradient, an actual optimiser step), the predicted KL ½·δᵀFδ with the exact mean KL
``nn.kl(net, net + δ)`` at several step sizes, and the angle / relative error of each
representation's natural-gradient direction (F + λI)⁻¹g against the exact one (dense Fisher, or
conjugate gradients on the matrix-free Fisher when p × p does not fit in memory).

Step sizes are, by default, **predicted KL values under the exact Fisher**: each direction d is
scaled to δ = t·d with ½ δᵀ F_exact δ = ε, so a row "ε = 1e-3" is a step that truly moves the
predictive distribution by about 1e-3 nats. ``scale="norm"`` instead takes |δ| = ε·|w|.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError, ParameterError
from ..matrix import FisherMatrix
from ..matrix.base import DenseTooLargeError, check_dense_fits
from .batch import Adapter, get_adapter
from .data import iter_raw
from .fisher import REPRESENTATIONS
from .fisher import fisher as nn_fisher
from .heads import Head, get_head
from .kl import kl as nn_kl
from .params import layout_of, parameters_vector, perturbed
from .passes import fisher_passes
from .rows import safe_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DIRECTIONS = ("random", "gradient", "natural", "sgd_step", "adam_step")
DEFAULT_STEPS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class KLRow:
    """One comparison: representation, direction, step size → predicted vs exact mean KL."""

    representation: str
    direction: str
    step: float
    norm: float
    predicted: float
    exact: float
    loss_change: float | None = None

    @property
    def ratio(self) -> float:
        """predicted / exact (1 is perfect; NaN when the exact KL is 0)."""
        return self.predicted / self.exact if self.exact > 0 else float("nan")


@dataclass
class DirectionRow:
    """A representation's natural-gradient direction x = (F + λI)⁻¹g against the reference one."""

    representation: str
    angle_deg: float
    rel_error: float
    fisher_cos: float


@dataclass
class ApproximationReport:
    """The tables of :func:`approximation_report`; ``str(report)`` / ``report.to_text()`` renders them."""

    rows: list[KLRow]
    directions: list[DirectionRow]
    representations: list[str]
    direction_kinds: list[str]
    steps: list[float]
    scale: str
    reference: str
    kind: str
    damping: float
    n_params: int
    n_examples: int
    seconds: dict[str, float] = field(default_factory=dict)

    # --- queries ----------------------------------------------------------------------------------
    def ratio(self, representation: str, direction: str, step: float) -> float:
        for r in self.rows:
            if r.representation == representation and r.direction == direction and r.step == step:
                return r.ratio
        raise KeyError((representation, direction, step))

    def best(self, step: float | None = None, *, approximations_only: bool = True) -> dict[str, str]:
        """For each direction, the representation whose ratio is closest to 1 (in |log ratio|) at
        ``step`` (default: the smallest step, where the quadratic model itself is exact). By default
        the exact ones (``dense``, ``implicit``) are left out: which *approximation* to use."""
        s = min(self.steps) if step is None else step
        skip = {"dense", "implicit"} if approximations_only else set()
        out = {}
        for d in self.direction_kinds:
            cand = [
                (abs(math.log(r.ratio)), r.representation)
                for r in self.rows
                if r.direction == d
                and r.step == s
                and r.representation not in skip
                and r.ratio > 0
                and math.isfinite(r.ratio)
            ]
            if cand:
                out[d] = min(cand)[1]
        return out

    def records(self) -> dict[str, Any]:
        """Plain dicts (JSON-able)."""
        return {
            "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
            "directions": [asdict(d) for d in self.directions],
            "scale": self.scale,
            "reference": self.reference,
            "kind": self.kind,
            "damping": self.damping,
            "n_params": self.n_params,
            "n_examples": self.n_examples,
            "seconds": self.seconds,
        }

    # --- rendering --------------------------------------------------------------------------------
    def to_text(self) -> str:
        reps = self.representations
        unit = "predicted KL under the exact Fisher" if self.scale == "kl" else "|δ| / |w|"
        lines = [
            f"Predicted KL ½δᵀFδ / exact mean KL   (p = {self.n_params}, N = {self.n_examples}, kind = {self.kind}, "
            f"step = {unit}; 1.000 is perfect)",
        ]
        head = f"{'direction':<10} {'step':>8} | " + " ".join(f"{r:>9}" for r in reps) + f" | {'exact KL':>9}"
        lines += [head, "-" * len(head)]
        for d in self.direction_kinds:
            for s in self.steps:
                cells, exact = [], None
                for rep in reps:
                    row = next(
                        (r for r in self.rows if r.representation == rep and r.direction == d and r.step == s), None
                    )
                    cells.append(f"{row.ratio:>9.3f}" if row is not None else f"{'—':>9}")
                    if row is not None and d != "natural":
                        exact = row.exact
                ex = f"{exact:>9.2e}" if exact is not None else f"{'(per rep)':>9}"
                lines.append(f"{d:<10} {s:>8.0e} | " + " ".join(cells) + f" | {ex}")
        best = self.best()
        if best:
            lines.append(
                "best approximation at the smallest step (exact dense left out): "
                + ", ".join(f"{d} → {r}" for d, r in best.items())
            )
        if self.directions:
            lines += [
                "",
                f"Natural-gradient direction (F + λI)⁻¹g vs the {self.reference} one (λ = {self.damping:.3g})",
                f"{'representation':<15} {'angle (deg)':>12} {'rel. error':>11} {'cos in F':>9}",
            ]
            for r in self.directions:
                lines.append(f"{r.representation:<15} {r.angle_deg:>12.2f} {r.rel_error:>11.3f} {r.fisher_cos:>9.4f}")
        if self.seconds:
            lines.append("time (s): " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, path: str | None = None) -> Figure:
        """Ratio against step size, one panel per direction, one line per representation (log-log),
        plus the natural-direction angles. Saved to ``path`` when given. Needs matplotlib."""
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise FisherKLError("ApproximationReport.plot needs matplotlib: pip install 'fisherkl[plot]'") from exc
        n = len(self.direction_kinds) + (1 if self.directions else 0)
        fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.0), squeeze=False)
        for ax, d in zip(axes[0], self.direction_kinds):
            for rep in self.representations:
                pts = [(r.step, r.ratio) for r in self.rows if r.direction == d and r.representation == rep]
                pts = [(s, v) for s, v in pts if v > 0 and math.isfinite(v)]
                if pts:
                    ax.loglog(*zip(*pts), "o-", ms=3, label=rep)
            ax.axhline(1.0, color="k", lw=0.6)
            ax.set_title(d, fontsize=9)
            ax.set_xlabel("predicted KL (exact F)" if self.scale == "kl" else "|δ|/|w|", fontsize=8)
            ax.grid(True, which="both", lw=0.3)
            ax.tick_params(labelsize=7)
        axes[0][0].set_ylabel("½δᵀFδ / KL", fontsize=8)
        axes[0][0].legend(fontsize=6)
        if self.directions:
            ax = axes[0][-1]
            ax.bar([r.representation for r in self.directions], [r.angle_deg for r in self.directions])
            ax.set_title("natural direction: angle to exact (deg)", fontsize=9)
            ax.tick_params(labelsize=7)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


# --- helpers ------------------------------------------------------------------------------------------
def mean_loss(
    net: nn.Module,
    data: Any,
    head: Head,
    batch_size: int = 256,
    *,
    grad: bool = False,
    adapter: Adapter | None = None,
    positions: str = "sum",
) -> Tensor:
    """Mean negative log-likelihood −mean log p(y | x, net) over labelled ``data`` (per example, summed over
    its unmasked positions; ``positions="mean"``: per unmasked position)."""
    ad = get_adapter(adapter)
    like = next(iter(net.parameters()))
    total, count = None, 0
    with torch.set_grad_enabled(grad), fisher_passes():
        for raw in iter_raw(data, batch_size):
            batch = ad.batch(raw).to(like)
            out = head.check(ad.outputs(ad.call(net, batch)))
            labels, mask = ad.targets(batch, out)
            if labels is None:
                raise ParameterError("this needs labels: give data as (x, y) batches (or a dict with labels)")
            lp = head.log_prob(out, safe_labels(head.check_labels(out, labels.to(out.device), mask), mask))
            if mask is not None:
                lp = torch.where(mask, lp, torch.zeros_like(lp))
            s = -lp.sum()
            total = s if total is None else total + s
            if positions == "sum":
                count += batch.n
            else:
                count += int(mask.sum()) if mask is not None else math.prod(out.shape[:-1])
    if total is None:
        raise ParameterError("data: no examples")
    return total / max(count, 1)


def loss_gradient(
    net: nn.Module,
    data: Any,
    head: Head,
    batch_size: int = 256,
    adapter: Adapter | None = None,
    positions: str = "sum",
) -> Tensor:
    """Flat gradient ``[p]`` of the mean negative log-likelihood (parameters that require grad)."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = mean_loss(net, data, head, batch_size, grad=True, adapter=adapter, positions=positions)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def _first_batch(data: Any, batch_size: int) -> Any:
    return next(iter(iter_raw(data, batch_size)))


def optimizer_step(
    net: nn.Module,
    data: Any,
    head: Head,
    make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
    batch_size: int = 64,
    adapter: Adapter | None = None,
    positions: str = "sum",
) -> Tensor:
    """δ = w_after − w_before for one step of ``make_optimizer`` on the first minibatch of ``data``."""
    other = copy.deepcopy(net)
    before = parameters_vector(other)
    opt = make_optimizer([p for p in other.parameters() if p.requires_grad])
    first = _first_batch(data, batch_size)
    opt.zero_grad()
    mean_loss(other, [first], head, batch_size, grad=True, adapter=adapter, positions=positions).backward()
    opt.step()
    return parameters_vector(other) - before


def _angle(a: Tensor, b: Tensor) -> float:
    c = float((a @ b) / (a.norm() * b.norm()).clamp_min(torch.finfo(a.dtype).tiny))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# --- the report ----------------------------------------------------------------------------------------
def approximation_report(
    net: nn.Module,
    data: Any,
    head: str | Head | Any = "categorical",
    representations: Sequence[str] = ("diag", "kfac", "ekfac", "block", "dense"),
    directions: Sequence[str] = ("random", "gradient", "natural", "sgd_step"),
    step_sizes: Sequence[float] = DEFAULT_STEPS,
    kind: str = "exact",
    *,
    scale: str = "kl",
    damping: float | None = None,
    reference: str = "auto",
    fishers: Mapping[str, FisherMatrix] | None = None,
    extra_directions: Mapping[str, Tensor] | None = None,
    optimizers: Mapping[str, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]] | None = None,
    dtype: torch.dtype | None = torch.float64,
    batch_size: int = 256,
    seed: int = 0,
    loss: bool = True,
    fisher_kwargs: Mapping[str, Any] | None = None,
    adapter: Adapter | None = None,
    positions: str = "sum",
) -> ApproximationReport:
    """Predicted KL ½δᵀFδ of each representation against the exact mean KL, per direction and step.

    Parameters
    ----------
    net, data, head, adapter, positions:
        As for :func:`fisherkl.nn.fisher`. ``data`` should be re-iterable (a tuple of tensors, a list
        or a DataLoader); ``"gradient"``, ``"sgd_step"`` / ``"adam_step"`` and ``loss`` need labels.
    representations:
        Any of :data:`fisherkl.nn.REPRESENTATIONS` (``"implicit"`` is the exact Fisher, matrix-free).
    directions:
        ``"random"`` (Gaussian, from ``seed``), ``"gradient"`` (of the mean negative log-likelihood),
        ``"natural"`` (each representation's own (F + λI)⁻¹g — the step it would take),
        ``"sgd_step"`` / ``"adam_step"`` (one actual step of SGD(lr=0.1) / Adam(lr=1e-3) on the first
        minibatch of 64; other optimisers through ``optimizers={"name": make_optimizer}``). Any
        tensor ``[p]`` given in ``extra_directions`` is added under its key.
    step_sizes:
        With ``scale="kl"`` (default) each direction is scaled so that ½δᵀF_exact δ = step (the
        predicted KL under the exact Fisher); with ``scale="norm"``, |δ| = step·|w|.
    kind:
        The Fisher kind of the representations (``"exact"``, ``"mc"``, ``"empirical"``). The reference
        is always the exact Fisher.
    damping:
        λ of the natural directions; default 1e-3·tr(F_exact)/p.
    reference:
        ``"dense"``, ``"implicit"`` (matrix-free, natural direction by conjugate gradients), or
        ``"auto"``: dense when p × p fits in memory.
    fishers:
        Representations computed already (name → FisherMatrix), used instead of recomputing.
    dtype:
        The report runs on a copy of ``net`` in this dtype (float64 by default: the exact KL of a
        1e-5 step is not resolvable in float32). ``None`` keeps the network's dtype.

    Returns an :class:`ApproximationReport` (``print`` it; ``.plot(path)``; ``.records()``).
    """
    import time

    h = get_head(head)
    for r in representations:
        if r not in REPRESENTATIONS:
            raise ParameterError(f"representations: unknown {r!r}; choose from {', '.join(REPRESENTATIONS)}")
    optimizers = dict(optimizers or {})
    optimizers.setdefault("sgd_step", lambda ps: torch.optim.SGD(ps, lr=0.1))
    optimizers.setdefault("adam_step", lambda ps: torch.optim.Adam(ps, lr=1e-3))
    for d in directions:
        if d not in ("random", "gradient", "natural") and d not in optimizers:
            raise ParameterError(f"directions: unknown {d!r}; choose from {', '.join(DIRECTIONS)} (or pass optimizers)")
    if scale not in ("kl", "norm"):
        raise ParameterError(f"scale must be 'kl' or 'norm', got {scale!r}")
    steps = [float(s) for s in step_sizes]
    if not steps or any(not (s > 0 and math.isfinite(s)) for s in steps):
        raise ParameterError(f"step_sizes must be positive finite numbers, got {list(step_sizes)}")
    fkw = {"adapter": adapter, "positions": positions, **dict(fisher_kwargs or {})}
    lkw = {"adapter": adapter, "positions": positions}

    work = copy.deepcopy(net)
    if dtype is not None:
        work = work.to(dtype)
    layout = layout_of(work)
    w = parameters_vector(work)
    p = layout.numel
    seconds: dict[str, float] = {}

    if reference == "auto":
        try:
            check_dense_fits(p, w.dtype, "reference", factor=3)
            reference = "dense"
        except DenseTooLargeError:
            reference = "implicit"
    if reference not in ("dense", "implicit"):
        raise ParameterError(f"reference must be 'auto', 'dense' or 'implicit', got {reference!r}")

    def cast(f: FisherMatrix) -> FisherMatrix:
        # precomputed matrices may be float32: compare in the report's dtype
        if f.dtype == w.dtype:
            return f
        return cast_fisher(f, w.dtype)

    mats: dict[str, FisherMatrix] = {}
    for rep in representations:
        t0 = time.perf_counter()
        if fishers and rep in fishers:
            mats[rep] = cast(fishers[rep])
        else:
            mats[rep] = nn_fisher(work, data, h, kind, rep, batch_size=batch_size, seed=seed, **fkw)
        seconds[rep] = time.perf_counter() - t0
    if kind == "exact" and reference in mats:
        ref = mats[reference]
    else:
        t0 = time.perf_counter()
        ref = nn_fisher(work, data, h, "exact", reference, batch_size=batch_size, **fkw)
        seconds[f"reference ({reference})"] = time.perf_counter() - t0
    lam = 1e-3 * float(ref.trace()) / p if damping is None else float(damping)

    # shared directions
    gen = torch.Generator().manual_seed(seed)
    needs_grad = "gradient" in directions or "natural" in directions
    g = loss_gradient(work, data, h, batch_size, **lkw) if needs_grad else None
    shared: dict[str, Tensor] = {}
    for d in directions:
        if d == "random":
            shared[d] = torch.randn(p, generator=gen, dtype=torch.float64).to(w)
        elif d == "gradient":
            assert g is not None
            shared[d] = g
        elif d != "natural":
            shared[d] = optimizer_step(work, data, h, optimizers[d], **lkw)
    for k, v in (extra_directions or {}).items():
        flat, _ = layout.flatten(v, f"extra_directions[{k!r}]")
        shared[k] = flat.detach().to(w)
    kinds = list(directions) + [k for k in (extra_directions or {}) if k not in directions]

    def scaled(d: Tensor, s: float) -> Tensor:
        if scale == "kl":
            q = float(ref.quad(d))
            if q <= 0:
                raise FisherKLError("a direction has zero Fisher norm (it does not change the predictions)")
            return d * math.sqrt(2 * s / q)
        return d * (s * float(w.norm()) / float(d.norm()))

    base_loss = float(mean_loss(work, data, h, batch_size, **lkw)) if loss and _has_labels(data, adapter) else None

    def measure(delta: Tensor) -> tuple[float, float | None]:
        moved = perturbed(work, delta)
        exact = float(nn_kl(work, moved, data, h, batch_size=batch_size, **lkw))
        dl = None if base_loss is None else float(mean_loss(moved, data, h, batch_size, **lkw)) - base_loss
        return exact, dl

    t0 = time.perf_counter()
    rows: list[KLRow] = []
    for d in kinds:
        if d == "natural":
            continue
        for s in steps:
            delta = scaled(shared[d], s)
            exact, dl = measure(delta)
            for rep in representations:
                pred = 0.5 * float(mats[rep].quad(delta))
                rows.append(KLRow(rep, d, s, float(delta.norm()), pred, exact, dl))
    dir_rows: list[DirectionRow] = []
    if "natural" in directions:
        assert g is not None
        x_ref = ref.solve(g, lam)
        assert isinstance(x_ref, Tensor)
        fx_ref = ref.mv(x_ref)
        assert isinstance(fx_ref, Tensor)
        for rep in representations:
            x = mats[rep].solve(g, lam)
            assert isinstance(x, Tensor)
            fcos = float((x @ fx_ref) / math.sqrt(max(float(ref.quad(x)) * float(x_ref @ fx_ref), 1e-300)))
            dir_rows.append(DirectionRow(rep, _angle(x, x_ref), float((x - x_ref).norm() / x_ref.norm()), fcos))
            for s in steps:
                delta = scaled(-x, s)
                exact, dl = measure(delta)
                rows.append(
                    KLRow(rep, "natural", s, float(delta.norm()), 0.5 * float(mats[rep].quad(delta)), exact, dl)
                )
    seconds["comparisons"] = time.perf_counter() - t0
    n = sum(get_adapter(adapter).batch(raw).n for raw in iter_raw(data, batch_size))
    return ApproximationReport(
        rows, dir_rows, list(representations), kinds, steps, scale, reference, kind, lam, p, n, seconds
    )


def _has_labels(data: Any, adapter: Adapter | None = None) -> bool:
    try:
        return get_adapter(adapter).batch(_first_batch(data, 1)).labels is not None
    except StopIteration:
        return False


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast(v, dtype) for v in obj)
    return obj


def cast_fisher(f: FisherMatrix, dtype: torch.dtype) -> FisherMatrix:
    """A copy of a (saveable) Fisher matrix in another floating dtype, through its state_dict."""
    from ..matrix import from_state_dict

    return from_state_dict(_cast(f.state_dict(), dtype))


__all__ = ["DIRECTIONS", "ApproximationReport", "DirectionRow", "KLRow", "approximation_report"]
