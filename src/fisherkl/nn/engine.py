"""The streaming engine: one forward and a batched backward per batch, statistics summed over data.

For each batch the network runs once; hooks record each parameterised layer's inputs and outputs.
The head supplies R output cotangent rows per example (``cotangents``):

* ``exact``: the rows of B with BᵀB = I_head(outputs) (R = C − 1 for categorical, C otherwise);
* ``mc``: ∇_outputs log p(ŷ | outputs)/√S for S sampled labels ŷ ~ p(·|outputs);
* ``empirical``: ∇_outputs log p(y | outputs) for the observed label.

so that F = (1/N) Σₙ Σᵣ Jₙᵀ eₙᵣ eₙᵣᵀ Jₙ. All R rows are backpropagated at once (a vmapped
backward through the activations only, never through the weight gradients) and the layer rules
turn the recorded gradients into the requested statistics. Every statistic is a plain sum with an
example count, so partial results add (across batches, or across processes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError, ParameterError, RouteError
from ..matrix.layout import ParamLayout
from .data import Batch, as_input
from .heads import Head
from .rules import Call, Conv2dRule, GenericRule, LinearRule, Rule, flat_tensors

KINDS = ("exact", "mc", "empirical")
CHUNK_BYTES = 64 * 1024**2


def cotangents(
    head: Head, outputs: Tensor, y: Tensor | None, kind: str, mc_samples: int, gen: torch.Generator | None
) -> Tensor:
    """Output cotangent rows E ``[n, R, C]`` with F = mean over n of Σᵣ Jₙᵀ eₙᵣ eₙᵣᵀ Jₙ (see module doc)."""
    f = outputs.detach()
    if kind == "exact":
        return head.sqrt_fisher(f)
    if kind == "mc":
        if mc_samples < 1:
            raise ParameterError(f"mc_samples must be >= 1, got {mc_samples}")
        ys = head.sample(f, mc_samples, gen)
        return head.score(f, ys).transpose(0, 1) / math.sqrt(mc_samples)
    if kind == "empirical":
        if y is None:
            raise ParameterError("kind='empirical' needs labels: give data as (x, y) batches")
        return head.score(f, y.to(device=f.device)).unsqueeze(1)
    raise RouteError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")


class Engine:
    """Hooks on a network's parameterised layers, and the per-batch forward / batched backward."""

    def __init__(self, net: nn.Module, check: bool = True) -> None:
        self.net = net
        named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        if not named:
            raise ParameterError("the network has no parameters that require grad")
        self.layout = ParamLayout.of(named)
        self.params = [p for _, p in named]
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        name_of = {id(p): n for n, p in named}
        owners: dict[int, int] = {}
        self.rules: list[Rule] = []
        for mname, m in net.named_modules():
            local = [k for k, p in m.named_parameters(recurse=False) if p.requires_grad]
            if not local:
                continue
            _refuse_batch_coupling(mname, m)
            names = [name_of[id(getattr(m, k))] for k in local]
            for k in local:
                owners[id(getattr(m, k))] = owners.get(id(getattr(m, k)), 0) + 1
            self.rules.append(_rule_for(mname, m, local, names))
        self.tied = {name_of[i] for i, c in owners.items() if c > 1}
        for r in self.rules:
            if r.kronecker and set(r.names) & self.tied:
                r.kronecker = False
        self.check = check
        self.calls: dict[Rule, list[Call]] = {}
        self._active = False
        self._clone: set[Rule] = set()
        self._batched_ok = True

    # --- hooks -----------------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        self._handles = [r.module.register_forward_hook(self._hook(r), with_kwargs=True) for r in self.rules]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self.calls = {}

    def _hook(self, rule: Rule) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
            if not self._active:
                return None
            outs = [o for o in flat_tensors(out) if o.requires_grad]
            detached = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
            kw = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in kwargs.items()}
            call = Call(detached, kw, outs)
            call.cache["versions"] = torch.tensor([o._version for o in outs])
            self.calls.setdefault(rule, []).append(call)
            return _clone_tensors(out) if rule in self._clone else None  # downstream edits the copy

        return hook

    # --- one batch ---------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """Run the network on a batch, recording layer calls; returns outputs ``[n, C]`` (with graph)."""
        for _ in range(2):
            self.calls = {}
            self._active = True
            try:
                with torch.enable_grad():
                    out = self.net(as_input(x, self.params[0]))
            finally:
                self._active = False
            if not isinstance(out, Tensor):
                raise ParameterError(f"the network must return a tensor [n, C], got {type(out).__name__}")
            changed = {
                r
                for r, cs in self.calls.items()
                for c in cs
                if [o._version for o in c.outs] != c.cache["versions"].tolist()
            }
            if not changed:
                return out
            self._clone |= changed  # an in-place op downstream modified a recorded output: copy it
        raise FisherKLError(f"layer outputs were modified in place and could not be protected: {changed}")

    def backward(self, out: Tensor, e: Tensor) -> None:
        """Backpropagate the R cotangent rows ``e [n, R, C]`` to every recorded layer output at once."""
        calls = [c for cs in self.calls.values() for c in cs]
        targets = [o for c in calls for o in c.outs]
        rows = e.transpose(0, 1).to(out.dtype)  # [R, n, C]
        grads: list[Tensor] | None = None
        if self._batched_ok:
            try:
                grads = list(
                    torch.autograd.grad(
                        out, targets, rows, retain_graph=True, is_grads_batched=True, materialize_grads=True
                    )
                )
            except RuntimeError:
                self._batched_ok = False  # an op without a batching rule: one backward per row
        if grads is None:
            per_row = [
                torch.autograd.grad(out, targets, rows[r], retain_graph=True, materialize_grads=True)
                for r in range(rows.shape[0])
            ]
            grads = [torch.stack([pr[i] for pr in per_row]) for i in range(len(targets))]
        at = 0
        for c in calls:
            c.grads = [g.detach() for g in grads[at : at + len(c.outs)]]
            at += len(c.outs)
        for r, cs in self.calls.items():
            for c in cs:
                if not c.outs:
                    raise FisherKLError(f"{r}: its output does not depend on its parameters")

    def verify(self, out: Tensor, e: Tensor) -> None:
        """Check that per-example gradients sum to the batch gradient (first row): catches layers
        whose parameters are used outside their forward, and examples that interact."""
        m = min(out.shape[0], 8)  # a few examples suffice, and keep the check cheap
        row = e[:, 0].to(out.dtype).clone()
        row[m:] = 0
        want = torch.autograd.grad(out, self.params, row, retain_graph=True, allow_unused=True)
        got = self.per_example(self.rules, slice(0, m), rows=1)
        for name, w in zip(self.layout.names, want):
            w = torch.zeros_like(self.params[self.layout.index(name)]) if w is None else w
            g = got.get(name)
            g = torch.zeros_like(w) if g is None else g[0].sum(0)
            tol = 1e-4 if w.dtype == torch.float32 else 1e-8
            if not torch.allclose(g, w, rtol=tol, atol=tol * (1 + float(w.abs().max()))):
                owner = [r for r in self.rules if name in r.names]
                raise RouteError(
                    f"parameter {name!r} ({owner[0] if owner else 'no layer'}): per-example gradients do not add up to "
                    "the batch gradient — the parameter is used outside its layer's forward, or examples interact "
                    "(e.g. BatchNorm in training mode); use representation='implicit' or restructure the network"
                )

    def per_example(self, rules: Iterable[Rule], sl: slice, rows: int | None = None) -> dict[str, Tensor]:
        """Per-example gradients ``{name: [R, m, *shape]}`` for examples ``sl`` (tied parameters summed)."""
        out: dict[str, Tensor] = {}
        for r in rules:
            calls = self.calls.get(r)
            if not calls:
                continue
            if rows is not None:
                calls = [_first_rows(c, rows) for c in calls]
            for k, v in r.per_example(calls, sl).items():
                out[k] = out[k] + v if k in out else v
        return out

    def chunk(self, r: int, width: int) -> int:
        """Examples per chunk so that ``[r, m, width]`` stays under the chunk memory."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return max(1, CHUNK_BYTES // max(1, r * width * size))

    def run(
        self, batches: Iterable[Batch], head: Head, kind: str, mc_samples: int, gen_for: Any, stats: list[Any]
    ) -> int:
        """Stream the data: for every batch, forward, cotangents, batched backward, then each stat's
        ``add(engine, n)``. Returns the number of examples N."""
        total = 0
        with self:
            for index, (x, y) in enumerate(batches):
                out = self.forward(x)
                head.check(out)
                e = cotangents(head, out, y, kind, mc_samples, gen_for(index))
                self.backward(out, e)
                if index == 0 and self.check:
                    self.verify(out, e)
                del out
                for s in stats:
                    s.add(self, x.shape[0])
                total += int(x.shape[0])
                self.calls = {}
        if total == 0:
            raise ParameterError("data: no examples")
        return total


def _first_rows(c: Call, rows: int) -> Call:
    return Call(c.args, c.kwargs, c.outs, [g[:rows] for g in c.grads], c.cache)


def _clone_tensors(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone_tensors(o) for o in out)
    if isinstance(out, list):
        return [_clone_tensors(o) for o in out]
    return out


def _refuse_batch_coupling(name: str, m: nn.Module) -> None:
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
        raise RouteError(
            f"layer {name!r} ({type(m).__name__}) normalises with batch statistics, so one example's output "
            "depends on the others and the per-example Fisher is undefined; call net.eval() first"
        )


def _rule_for(name: str, m: nn.Module, local: list[str], names: list[str]) -> Rule:
    extra = set(local) - {"weight", "bias"}
    if isinstance(m, nn.Linear) and not extra:
        return LinearRule(m, name, local, names)
    if (
        isinstance(m, nn.Conv2d)
        and not extra
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    ):
        return Conv2dRule(m, name, local, names)
    return GenericRule(m, name, local, names)
