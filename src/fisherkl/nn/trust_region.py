"""A KL trust region that holds: the exact Fisher and the exact KL of a step, on one batch.

Whatever Fisher representation preconditions a step δ, its size is measured with the **exact**
Fisher of the current batch and confirmed by the **exact** KL of that batch — the approximation
chooses the direction, never the guarantee. For a network f(x; w) with head p(y | f) and inputs
x₁..xₙ (Jₙ = ∂f(xₙ)/∂w):

    ½ δᵀ F δ = (1/n) Σₙ ½ uₙᵀ I_head(fₙ) uₙ,   uₙ = Jₙ δ      one forward pass carrying a tangent (jvp)
    F v      = (1/n) Σₙ Jₙᵀ I_head(fₙ) Jₙ v                  jvp → head Fisher → vjp (for conjugate gradients)
    KL(s)    = (1/n) Σₙ KL[p(y | f(xₙ; w)) ‖ p(y | f(xₙ; w + s δ))]     forward passes only

(the exact-kind Fisher and mean KL of :func:`fisherkl.nn.fisher` and :func:`fisherkl.nn.kl`, on one
batch, without re-validating the network at every product). :func:`kl_line_search` then finds a
scale s ∈ (0, 1] whose exact KL is at most ``max_kl`` — and at least 0.8 of it when the step had to be
shortened, whenever ``max_backtracks`` allows — as TRPO's backtracking line search does, with the
backtracking steered by the measured KL instead of fixed halvings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import FisherKLError, ParameterError
from .batch import Adapter, Batch, get_adapter
from .heads import Head, get_head
from .params import preserved_parameters
from .passes import fisher_passes

#: where a shortened step aims, as a fraction of max_kl: inside the boundary by more than the cubic term
#: of the KL usually moves it, so that one evaluation of the exact KL usually confirms the step
TARGET = 0.95


def raw_batches(data: Any) -> list[Any]:
    """The batches of ``data``, read as :func:`fisherkl.nn.fisher` reads them: one batch for a tensor x, a
    tuple of tensors (x,) / (x, y) or a dict of tensors; otherwise an iterable of batches (a *list* is always
    a list of batches: ``[((x1, x2), y)]`` for several inputs)."""
    if isinstance(data, (Tensor, Mapping)):
        return [data]
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        if len(data) > 2:
            raise ParameterError(f"data: a tuple of tensors must be (x,) or (x, y), got {len(data)} tensors")
        return [data]
    if not isinstance(data, Iterable):
        raise ParameterError(
            "data for the trust region must be a batch (a tensor x, a tuple (x, y), a dict of tensors) or an "
            f"iterable of batches; got {type(data).__name__}"
        )
    out = list(data)
    if not out:
        raise ParameterError("data for the trust region has no batches")
    return out


class _Outputs(nn.Module):
    """net's outputs ``[n, *P, C]`` for a parsed batch, as a module (so that functional_call can substitute
    the parameters and buffers of ``inner`` whatever the adapter's ``call`` does)."""

    def __init__(self, net: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.inner = net
        self.adapter = adapter

    def forward(self, batch: Batch) -> Tensor:
        return self.adapter.outputs(self.adapter.call(self.inner, batch))


class BatchGeometry:
    """The exact Fisher and the exact KL of ``net`` (parameters ``params``) on one batch of inputs.

    Parameters
    ----------
    net:
        The network; used in its current mode. Passes made here run on copies of its buffers (e.g.
        BatchNorm running statistics), so measuring a step has no side effect.
    params:
        The parameters a step moves, in the step's flat order (a subset of ``net``'s parameters; the
        others are held fixed).
    data:
        The batch: x ``[n, ...]``, ``(x, y)``, a dict of tensors (e.g. a HuggingFace batch), or an iterable
        of batches. Labels only mask positions (``ignore_index``): the exact Fisher and KL take the
        expectation over the model's own y.
    head:
        The output distribution (a name or a :class:`~fisherkl.nn.heads.Head`).
    adapter, positions:
        How batches become inputs, outputs ``[n, *P, C]`` and masks (:class:`fisherkl.nn.Adapter`), and
        whether a sequence counts the sum (``"sum"``, default) or the mean (``"mean"``) over its unmasked
        positions — as in :func:`fisherkl.nn.fisher` and :func:`fisherkl.nn.kl`.
    distributed, group:
        ``distributed=True``: every rank of the initialised ``torch.distributed`` process ``group`` holds
        its own batch, and every quantity here is the mean over all ranks' examples (sums and counts are
        all-reduced), so all ranks see the same numbers and take the same step. Every rank must call
        each method together.

    ``quad(δ)`` = δᵀFδ and ``mv(v)`` = F v at the parameters w the batch was given at (whatever the
    parameters are now), ``kl(δ, s)`` = mean KL between w and w + sδ; ``place(δ, s)`` sets the parameters
    to w + sδ and ``restore()`` back to w (bit for bit). Flat vectors are ``[p]`` in the parameters' dtype.
    """

    def __init__(
        self,
        net: nn.Module,
        params: Sequence[Tensor],
        data: Any,
        head: str | Head | Any,
        *,
        adapter: Adapter | None = None,
        positions: str = "sum",
        distributed: bool = False,
        group: Any = None,
    ) -> None:
        if not isinstance(net, nn.Module):
            raise ParameterError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.params = list(params)
        if not self.params:
            raise ParameterError("the trust region needs at least one parameter to move")
        names = {id(p): n for n, p in net.named_parameters()}
        missing = [i for i, p in enumerate(self.params) if id(p) not in names]
        if missing:
            raise ParameterError(f"parameters {missing} (in the step's order) are not parameters of net")
        self.names = [names[id(p)] for p in self.params]
        if positions not in ("sum", "mean"):
            raise ParameterError(f"positions must be 'sum' or 'mean', got {positions!r}")
        self.head = get_head(head)
        self.adapter = get_adapter(adapter)
        self._module = _Outputs(net, self.adapter)
        self._buffer_names = [n for n, _ in net.named_buffers()]
        like = self.params[0]
        self.inputs = [self.adapter.batch(raw).to(like) for raw in raw_batches(data)]
        self.distributed, self.group = bool(distributed), group
        self.start = [p.detach().clone() for p in self.params]
        self._buffers = [(b, b.detach().clone()) for b in net.buffers()]
        with torch.no_grad():
            self.outputs = [self.head.check(self._call(x, {})).detach() for x in self.inputs]
        self.masks: list[Tensor | None] = [self.adapter.targets(b, f)[1] for b, f in zip(self.inputs, self.outputs)]
        if positions == "sum":
            count = sum(b.n for b in self.inputs)
        else:
            count = sum(
                int(m.sum()) if m is not None else math.prod(f.shape[:-1]) for m, f in zip(self.masks, self.outputs)
            )
        self.n = int(self._sum(torch.tensor([float(count)], dtype=torch.float64))[0])
        if self.n == 0:
            raise ParameterError("data for the trust region has no examples (or every position is masked)")
        self._graph: list[Tensor] | None = None
        self._leaves: list[Tensor] = []
        self.n_products = 0

    @property
    def p(self) -> int:
        return sum(p.numel() for p in self.params)

    def _call(self, batch: Batch, params: dict[str, Tensor]) -> Tensor:
        """The outputs for a batch with ``params`` substituted, on copies of the buffers (a forward pass here
        updates no BatchNorm statistics, and no later restore can invalidate a graph that saved them)."""
        state = {"inner." + n: b.clone() for n, b in self.net.named_buffers()}
        swap = {"inner." + n: t for n, t in params.items()}
        with preserved_parameters(self.net), fisher_passes(math_attention=True):
            return functional_call(self._module, {**state, **swap}, (batch,))

    def _masked(self, t: Tensor, mask: Tensor | None) -> Tensor:
        """Zero ``t`` (``[n, *P]`` or ``[n, *P, C]``) at masked positions."""
        if mask is None:
            return t
        m = mask if t.ndim == mask.ndim else mask.unsqueeze(-1)
        return torch.where(m, t, torch.zeros_like(t))

    def _sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks (itself when not distributed)."""
        if not self.distributed:
            return t
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise FisherKLError("distributed=True but torch.distributed is not initialised")
        out = t.detach().to(torch.float64).clone()
        dist.all_reduce(out, group=self.group)
        return out

    def restore_buffers(self) -> None:
        """Put the network's buffers back to their values when the batch was given (after a user's loss)."""
        with torch.no_grad():
            for b, saved in self._buffers:
                b.copy_(saved)

    def _split(self, flat: Tensor, what: str) -> list[Tensor]:
        if flat.ndim != 1 or flat.shape[0] != self.p:
            raise ParameterError(f"{what} must have shape [{self.p}], got {tuple(flat.shape)}")
        out, at = [], 0
        for p in self.params:
            out.append(flat[at : at + p.numel()].reshape(p.shape).to(p.dtype))
            at += p.numel()
        return out

    def jvp(self, v: Tensor) -> list[Tensor]:
        """u = J v per batch ``[n_b, C]``: one forward pass carrying the tangent v (forward-mode AD)."""
        tangents = self._split(v, "v")
        out = []
        with torch.no_grad():
            for x, f0 in zip(self.inputs, self.outputs):
                with fwAD.dual_level():
                    duals = {n: fwAD.make_dual(w, t) for n, w, t in zip(self.names, self.start, tangents)}
                    u = fwAD.unpack_dual(self._call(x, duals)).tangent
                out.append(torch.zeros_like(f0) if u is None else u)
        return out

    def quad(self, v: Tensor) -> float:
        """vᵀ F v with the exact Fisher of the batch (½·quad(δ) predicts the mean KL of the step δ)."""
        total = 0.0
        for u, f0, mask in zip(self.jvp(v), self.outputs, self.masks):
            u = self._masked(u, mask)
            total += float((u * self.head.fisher_mv(f0, u)).sum())
        return float(self._sum(torch.tensor([total], dtype=torch.float64))[0]) / self.n

    def mv(self, v: Tensor) -> Tensor:
        """F v with the exact Fisher of the batch: jvp → head Fisher → vjp (through one cached graph)."""
        if self._graph is None:
            self._leaves = [w.detach().requires_grad_(True) for w in self.start]
            with torch.enable_grad():
                leaves = dict(zip(self.names, self._leaves))
                self._graph = [self.head.check(self._call(x, leaves)) for x in self.inputs]
        w = [
            self._masked(self.head.fisher_mv(f0, self._masked(u, m)), m)
            for u, f0, m in zip(self.jvp(v), self.outputs, self.masks)
        ]
        with torch.enable_grad():
            grads = torch.autograd.grad(
                self._graph, self._leaves, w, retain_graph=True, allow_unused=True, materialize_grads=True
            )
        self.n_products += 1
        return (self._sum(torch.cat([g.reshape(-1) for g in grads])) / self.n).to(v.dtype)

    def place(self, delta: Sequence[Tensor], scale: float) -> None:
        """Set the parameters to w + scale·δ (δ parameter-shaped, as from :meth:`split`)."""
        with torch.no_grad():
            for p, w, d in zip(self.params, self.start, delta):
                if scale == 0.0:
                    p.copy_(w)
                else:
                    p.copy_(torch.add(w, d, alpha=scale))

    def restore(self) -> None:
        """Put the parameters back to where they were (bit for bit)."""
        with torch.no_grad():
            for p, w in zip(self.params, self.start):
                p.copy_(w)

    def split(self, delta: Tensor) -> list[Tensor]:
        """A flat step ``[p]`` as parameter-shaped tensors."""
        return self._split(delta, "delta")

    def kl(self, delta: Sequence[Tensor], scale: float) -> float:
        """The exact mean KL[p(·|w) ‖ p(·|w + scale·δ)] over the batch (the parameters are left at w + scale·δ)."""
        self.place(delta, scale)
        total = 0.0
        with torch.no_grad():
            for x, f0, mask in zip(self.inputs, self.outputs, self.masks):
                f = self.head.check(self._call(x, {}))
                total += float(self._masked(self.head.kl(f0, f), mask).sum())
        return float(self._sum(torch.tensor([total], dtype=torch.float64))[0]) / self.n


def conjugate_gradient(
    mv: Callable[[Tensor], Tensor], b: Tensor, damping: float, iterations: int, rtol: float = 1e-10
) -> tuple[Tensor, int, float]:
    """x ≈ (F + damping·I)⁻¹ b by at most ``iterations`` conjugate-gradient steps (TRPO's truncated CG).

    Stops early when ‖r‖ ≤ rtol·‖b‖. Returns x, the number of products taken and the relative residual
    ‖b − (F + damping·I)x‖/‖b‖ (tracked by the recursion).
    """
    x = torch.zeros_like(b)
    bnorm = float(b.norm())
    if bnorm == 0.0:
        return x, 0, 0.0
    r = b.clone()
    d = r.clone()
    rs = float(r @ r)
    taken = 0
    for _ in range(iterations):
        if math.sqrt(rs) <= rtol * bnorm:
            break
        q = mv(d) + damping * d
        taken += 1
        curvature = float(d @ q)
        if not curvature > 0:  # a null direction of an undamped F: x so far is the best this Krylov space gives
            break
        alpha = rs / curvature
        x = x + alpha * d
        r = r - alpha * q
        rs_new = float(r @ r)
        d = r + (rs_new / rs) * d
        rs = rs_new
    if not bool(torch.isfinite(x).all()):
        raise FisherKLError("conjugate gradients diverged (NaN/inf); raise damping")
    return x, taken, math.sqrt(rs) / bnorm


@dataclass
class LineSearchResult:
    """The accepted scale (0 when no scale was acceptable: the step is rejected), its exact KL and loss."""

    scale: float
    kl: float
    loss: float | None
    evaluations: int
    accepted: bool


def _aim(s: float, k: float, goal: float, curvature: float | None) -> float:
    """The scale where a model of KL(t) through KL(0) = 0, fitted to the measured KL(s) = k, reaches ``goal``.

    With ``curvature`` q (KL(t) ≈ q·t² near 0, from the exact Fisher) the model is q·t² + c·t³, c fitted to
    (s, k): it follows a KL that grows faster or slower than the quadratic form. Without it (or when the
    cubic never reaches the goal) the model is the quadratic refitted to the point, s·√(goal/k).
    """
    fallback = s * math.sqrt(goal / k)
    if curvature is None or not curvature > 0:
        return fallback
    c = (k - curvature * s * s) / s**3

    def f(t: float) -> float:
        return curvature * t * t + c * t**3 - goal

    if k > goal:
        a, b = 0.0, s
    else:
        a = s
        if c >= 0:
            b = 2.0 * s
            for _ in range(200):
                if f(b) >= 0:
                    break
                b *= 2.0
            else:
                return fallback
        else:
            b = -2.0 * curvature / (3.0 * c)  # the cubic's peak
            if b <= s or f(b) < 0:
                return fallback
    for _ in range(100):  # bisection on a scalar cubic: exact to rounding
        m = 0.5 * (a + b)
        if f(m) < 0:
            a = m
        else:
            b = m
    return 0.5 * (a + b)


def kl_line_search(
    kl_at: Callable[[float], float],
    max_kl: float,
    first: float = 1.0,
    *,
    curvature: float | None = None,
    loss_at: Callable[[float], float] | None = None,
    loss0: float | None = None,
    max_backtracks: int = 10,
    accept_ratio: float = 0.8,
    target: float = TARGET,
    shrink: float = 0.5,
) -> LineSearchResult:
    """A scale s ∈ (0, 1] with KL(s) ≤ max_kl (and loss(s) < loss0 when ``loss_at`` is given).

    Tries ``first``, then at most ``max_backtracks`` more scales, aiming at ``target``·max_kl. A scale whose
    KL overshoots, or a feasible scale below 1 whose KL is under ``accept_ratio``·max_kl, is replaced by the
    scale where the KL is predicted to reach the aim: by a secant of log KL against log s when the aim is
    bracketed by two measured scales, otherwise by the cubic model of :func:`_aim` (``curvature`` = ½δᵀFδ of
    the unit step by the exact Fisher, so KL(s) ≈ curvature·s² near 0). A scale that fails the loss is
    multiplied by ``shrink`` (classic backtracking). Every proposal stays strictly inside the bracket (largest
    acceptable, smallest unacceptable scale) and falls back to its midpoint. The largest acceptable scale seen
    is returned; none at all rejects the step (scale 0).
    """
    lo, hi = 0.0, math.inf
    below: tuple[float, float] | None = None  # (s, KL) at the largest acceptable s with KL > 0
    above: tuple[float, float] | None = None  # (s, KL) at the smallest s whose finite KL overshoots
    best: LineSearchResult | None = None
    goal = target * max_kl
    s = min(1.0, float(first))
    evaluations = 0
    for _ in range(max_backtracks + 1):
        k = kl_at(s)
        evaluations += 1
        kl_ok = math.isfinite(k) and k <= max_kl
        loss: float | None = None
        loss_ok = True
        if kl_ok and loss_at is not None:
            loss = loss_at(s)
            loss_ok = math.isfinite(loss) and loss0 is not None and loss < loss0
        if kl_ok and loss_ok:
            lo = s
            if k > 0:
                below = (s, k)
            if best is None or s > best.scale:
                best = LineSearchResult(s, k, loss, evaluations, True)
            if s >= 1.0 or k >= accept_ratio * max_kl:
                break
        else:
            hi = s
            if not kl_ok and math.isfinite(k):
                above = (s, k)
        if kl_ok and not loss_ok:
            nxt = s * shrink
        elif not math.isfinite(k) or k <= 0:
            nxt = s * shrink if not kl_ok else 2.0 * s
        elif below is not None and above is not None and below[0] < above[0] and below[1] < above[1]:
            (a, ka), (b, kb) = below, above
            nxt = math.exp(math.log(a) + (math.log(goal) - math.log(ka)) * math.log(b / a) / math.log(kb / ka))
        else:
            nxt = _aim(s, k, goal, curvature)
        nxt = min(nxt, 1.0)
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi) if math.isfinite(hi) else min(1.0, 2.0 * s)
        if nxt == s or nxt <= 0.0:
            break
        s = nxt
    if best is None:
        return LineSearchResult(0.0, 0.0, None, evaluations, False)
    best.evaluations = evaluations
    return best


__all__ = ["TARGET", "BatchGeometry", "LineSearchResult", "conjugate_gradient", "kl_line_search", "raw_batches"]
