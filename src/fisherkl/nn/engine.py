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
        # an nn.Sequential of plain torch layers uses each parameter only inside its own layer and keeps
        # examples apart, so the first-batch check (``verify``) is skipped for it
        self.separable = _separable(net) and not self.tied
        self.calls: dict[Rule, list[Call]] = {}
        self._active = False
        self._clone: set[Rule] = set()

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
            call.versions = [o._version for o in outs]
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
            changed = {r for r, cs in self.calls.items() for c in cs if [o._version for o in c.outs] != c.versions}
            if not changed:
                return out
            self._clone |= changed  # an in-place op downstream modified a recorded output: copy it
        raise FisherKLError(f"layer outputs were modified in place and could not be protected: {changed}")

    def backward(self, out: Tensor, e: Tensor, keep_graph: bool = False) -> None:
        """Backpropagate the R cotangent rows ``e [n, R, C]`` to every recorded layer output.

        One backward pass per row, through the activations only (never to the weights); each call
        keeps the R gradients of its outputs (``Call.rows``, stacked to ``[R, n, ...]`` only when a rule
        asks for ``Call.grads``). (This beats a vmapped backward,
        ``is_grads_batched``, which falls back to a slow loop for convolutions and pooling.) The graph
        is freed after the last row unless ``keep_graph``.
        """
        calls = [c for cs in self.calls.values() for c in cs]
        targets = [o for c in calls for o in c.outs]
        rows = e.transpose(0, 1).to(out.dtype)  # [R, n, C]
        n_rows = rows.shape[0]
        per_out: list[list[Tensor]] = [[] for _ in targets]
        for r in range(n_rows):
            keep = keep_graph or r < n_rows - 1
            gs = torch.autograd.grad(out, targets, rows[r], retain_graph=keep, materialize_grads=True)
            for lst, g in zip(per_out, gs):
                lst.append(g)
        at = 0
        for c in calls:
            c.set_rows(per_out[at : at + len(c.outs)])
            at += len(c.outs)
        for r, cs in self.calls.items():
            for c in cs:
                if not c.outs:
                    raise FisherKLError(f"{r}: its output does not depend on its parameters")

    def verify(self, x: Tensor, e: Tensor, m: int = 8) -> None:
        """Check that per-example gradients sum to the batch gradient, on the first ``m`` examples of
        a batch (their own forward and backward, so the check costs about m/n of the batch): catches
        layers whose parameters are used outside their forward, and examples that interact."""
        m = min(x.shape[0], m)
        saved = self.calls
        try:
            out = self.forward(x[:m])
            calls = [c for cs in self.calls.values() for c in cs]
            targets = [o for c in calls for o in c.outs]
            k = len(self.params)
            both = torch.autograd.grad(out, self.params + targets, e[:m, 0].to(out.dtype), allow_unused=True)
            want, at = both[:k], k
            for c in calls:  # one row: [1, m, ...]
                c.grads = [(torch.zeros_like(o) if g is None else g).unsqueeze(0) for o, g in zip(c.outs, both[at:])]
                at += len(c.outs)
            got = self.per_example(self.rules, slice(0, m))
        finally:
            self.calls = saved
        names = list(self.layout.names)
        ws = [torch.zeros_like(p) if w is None else w for p, w in zip(self.params, want)]
        gs = [got[k][0].sum(0) if k in got else torch.zeros_like(w) for k, w in zip(names, ws)]
        fg, fw = torch.cat([g.reshape(-1) for g in gs]), torch.cat([w.reshape(-1) for w in ws])
        tol = 1e-4 if fw.dtype == torch.float32 else 1e-8
        bad = (fg - fw).abs_() > tol * (1 + fw.abs().max() + fw.abs())  # one test for all parameters
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            name = next(k for k in names if self.layout.slice(k).start <= first < self.layout.slice(k).stop)
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

    def kron_gram(self, names: list[str]) -> Tensor | None:
        """Σₙ Σᵣ gₙᵣ gₙᵣᵀ over the parameters ``names`` (flat, in that order) for the current batch, by the
        Kronecker structure of Linear layers without weight sharing: for layers k, l the block is
        Σₙ (Σᵣ gₙᵣᵏ gₙᵣˡᵀ) ⊗ (âₙᵏ âₙˡᵀ), n·p² work instead of n·R·p² through per-example gradients.

        Returns None (use per-example gradients) unless ``names`` are exactly the parameters of such
        layers, each layer's weight then bias, called once per batch and not tied.
        """
        rules = [r for r in self.rules if any(k in names for k in r.names)]
        if not rules or [k for r in rules for k in r.names] != list(names):
            return None
        parts = []
        for r in rules:
            calls = self.calls.get(r) or []
            if type(r) is not LinearRule or not r.kronecker or len(calls) != 1 or set(r.names) & self.tied:
                return None
            at = r.at(calls[0])
            if at.shape[-1] != 1 or r.names != [k for k in (r.weight_name, r.bias_name) if k is not None]:
                return None
            a = at[..., 0]
            if r.has_bias:
                a = torch.cat([a, a.new_ones(a.shape[0], 1)], 1)
            w = a.shape[1]
            idx = torch.arange(r.d_out * w, device=a.device).reshape(r.d_out, w)
            order = torch.cat([idx[:, : r.d_in].reshape(-1), idx[:, r.d_in :].reshape(-1)])  # weight, then bias
            parts.append((a, r.gt(calls[0])[..., 0].permute(1, 2, 0), order))  # â [n, w], g [n, d_out, R]
        size = sum(len(o) for _, _, o in parts)
        out = torch.empty(size, size, dtype=parts[0][0].dtype, device=parts[0][0].device)
        starts = [0]
        for _, _, o in parts:
            starts.append(starts[-1] + len(o))
        n = parts[0][0].shape[0]
        for i, (ai, gi, oi) in enumerate(parts):
            for j in range(i, len(parts)):
                aj, gj, oj = parts[j]
                di, dj, wi, wj = gi.shape[1], gj.shape[1], ai.shape[1], aj.shape[1]
                k = torch.zeros(di * dj, wi * wj, dtype=out.dtype, device=out.device)
                step = self.chunk(1, max(di * dj, wi * wj))
                for s in range(0, n, step):
                    gg = torch.bmm(gi[s : s + step], gj[s : s + step].transpose(1, 2)).reshape(-1, di * dj)
                    aa = (ai[s : s + step, :, None] * aj[s : s + step, None, :]).reshape(-1, wi * wj)
                    k += gg.T @ aa
                k = k.reshape(di, dj, wi, wj).permute(0, 2, 1, 3).reshape(di * wi, dj * wj)[oi][:, oj]
                out[starts[i] : starts[i + 1], starts[j] : starts[j + 1]] = k
                if j != i:
                    out[starts[j] : starts[j + 1], starts[i] : starts[i + 1]] = k.T
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
                del out
                if index == 0 and self.check and not self.separable:
                    self.verify(x, e)
                for s in stats:
                    s.add(self, x.shape[0])
                total += int(x.shape[0])
                self.calls = {}
        if total == 0:
            raise ParameterError("data: no examples")
        return total


def per_example_gradients(
    net: nn.Module, x: Tensor, y: Tensor, head: str | Head | Any = "categorical"
) -> dict[str, Tensor]:
    """Per-example gradients of the log-likelihood, ∇_w log p(yₙ | xₙ, w), as ``{name: [n, *shape]}``.

    One forward and one backward through the activations; the layer rules (Linear, Conv2d: from
    layer inputs and output gradients; other layers: torch.func on the layer alone) do the rest.
    """
    from .heads import get_head

    h = get_head(head)
    engine = Engine(net, check=False)
    with engine:
        out = engine.forward(x)
        e = cotangents(h, h.check(out), y, "empirical", 1, None)
        engine.backward(out, e)
        del out
        pe = engine.per_example(engine.rules, slice(None))
    return {k: v[0] for k, v in pe.items()}


def _first_rows(c: Call, rows: int) -> Call:
    out = Call(c.args, c.kwargs, c.outs, cache=c.cache)
    out.set_rows([r[:rows] for r in c.rows])
    return out


def _clone_tensors(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_clone_tensors(o) for o in out)
    if isinstance(out, list):
        return [_clone_tensors(o) for o in out]
    return out


_SEPARABLE = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)


def _separable(m: nn.Module) -> bool:
    """True for an nn.Sequential (nested) of exactly these torch layers (not subclasses, whose forward
    could use other parameters), with Flatten keeping the batch dimension."""
    if type(m) is nn.Sequential:
        return all(_separable(c) for c in m.children())
    if type(m) is nn.Flatten:
        return m.start_dim >= 1
    return type(m) in _SEPARABLE


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
