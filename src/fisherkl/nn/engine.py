"""The streaming engine: one forward and batched backward passes per batch, statistics summed over data.

For each batch the network runs once; hooks record every call of a module that owns parameters (its
inputs and outputs, see :mod:`fisherkl.nn.rules`). The head supplies output cotangent rows
(:mod:`fisherkl.nn.rows`), so that F = (1/N) Σₙ Σᵣ Jₙᵀ eₙᵣ eₙᵣᵀ Jₙ; rows are backpropagated in chunks,
through the activations only (never to the weights), and the layer rules turn the recorded gradients
into the requested statistics. Every statistic is a plain sum with a count, so partial results add
(across batches, row chunks, or processes).

The first batch is also checked, at the cost of two small extra forwards:

* **batch dimensions**: a forward on 2–3 of its examples tells, for every recorded call, which dimension
  of each input and output is the batch one — or that a tensor does not depend on the batch (a position
  embedding of ``arange(T)``): such outputs are broadcast over the examples, so each example gets its
  own gradient;
* **independence**: the examples' outputs must not depend on the rest of the batch;
* **completeness**: with a random cotangent, the per-example gradients of every parameter must add up
  to the batch gradient. Parameters for which they do not (used outside their module's forward: a tied
  head ``F.linear(h, emb.weight)``) are handed to :class:`~fisherkl.nn.rules.network.NetworkRule`, so
  the result is exact either way.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError, ParameterError, RouteError
from ..matrix.layout import ParamLayout
from .batch import Adapter, Batch, get_adapter
from .heads import Head
from .passes import fisher_passes, unwrap, vjp
from .rows import KINDS, Rows
from .rules import Call, GenericRule, Rule, flat_tensors, rule_class
from .rules.network import NetworkRule
from .tap import Slot, Tap, is_inplace_on_tap
from .uses import FunctionalLinearRule, ParameterUses

__all__ = ["KINDS", "Engine", "fisher_passes", "per_example_gradients", "unwrap"]

ROW_BYTES = 256 * 1024**2  # gradients of the recorded outputs kept at once (one chunk of rows)
# per-example intermediates of a statistic. Small on purpose: glibc serves allocations over 32 MiB by fresh mmaps,
# whose first touch page-faults (a ResNet's exact diagonal spent a third of its time there with 64 MiB chunks)
CHUNK_BYTES = 8 * 1024**2
STREAM_BYTES = 32 * 1024**2  # above this many bytes of recorded gradients per chunk, statistics are taken in the
# backward pass, layer by layer (see fisherkl.nn.tap); below it, rows are batched (faster on small networks)


def _map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_map_tensors(o, fn) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    return obj


def _bdim(cur: tuple[int, ...], probe: tuple[int, ...], n: int, m: int) -> int | str | None:
    """The batch dimension of a tensor of shape ``cur`` (batch of n) given its shape ``probe`` in a batch of
    m: the one dimension that changed from n to m; None when nothing changed; ``"?"`` otherwise."""
    if cur == probe:
        return None
    if len(cur) != len(probe):
        return "?"
    diff = [i for i, (a, b) in enumerate(zip(cur, probe)) if a != b]
    if len(diff) == 1 and cur[diff[0]] == n and probe[diff[0]] == m:
        return diff[0]
    return "?"


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, Tensor) else None


class _Template:
    """What the probe learned about one call: batch dimensions of its inputs and outputs."""

    def __init__(self, arg_bdims: tuple[Any, ...], kw_bdims: dict[str, Any], out_bdims: list[Any]) -> None:
        self.arg_bdims, self.kw_bdims, self.out_bdims = arg_bdims, kw_bdims, out_bdims

    @property
    def ok(self) -> bool:
        return "?" not in (*self.arg_bdims, *self.kw_bdims.values(), *self.out_bdims)

    def fits(self, call: Call, n: int) -> bool:
        def good(t: Any, d: Any) -> bool:
            return not isinstance(t, Tensor) or d is None or d == "?" or (d < t.ndim and t.shape[d] == n)

        return (
            len(call.args) == len(self.arg_bdims)
            and set(call.kwargs) == set(self.kw_bdims)
            and len(call.outs) == len(self.out_bdims)
            and all(good(a, d) for a, d in zip(call.args, self.arg_bdims))
            and all(good(v, self.kw_bdims[k]) for k, v in call.kwargs.items())
            and all(good(o, d) for o, d in zip(call.outs, self.out_bdims))
        )


class Engine:
    """Hooks on a network's parameterised modules, and the per-batch forward / row-chunked backward."""

    def __init__(
        self, net: nn.Module, check: bool = True, adapter: Adapter | None = None, stat_dtype: torch.dtype | None = None
    ) -> None:
        net = unwrap(net)
        self.net = net
        self.adapter = get_adapter(adapter)
        named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        if not named:
            raise ParameterError("the network has no parameters that require grad")
        self.layout = ParamLayout.of(named)
        self.params = [p for _, p in named]
        self.by_name = dict(named)
        self.net_dtype = self.params[0].dtype
        # statistics are accumulated in float32 for bf16 / fp16 networks (or in stat_dtype)
        self.dtype = stat_dtype or (
            torch.float32 if self.net_dtype in (torch.bfloat16, torch.float16) else self.net_dtype
        )
        if not self.dtype.is_floating_point:
            raise ParameterError(f"stat_dtype must be a floating dtype, got {self.dtype}")
        self.device = self.params[0].device
        name_of = {id(p): n for n, p in named}
        self.name_of = name_of
        claimed: set[int] = set()
        owners: dict[str, int] = {}
        self.rules: list[Rule] = []
        for mname, m in net.named_modules():
            if id(m) in claimed:
                continue
            cls = rule_class(m)
            mods = [m]
            for attr in getattr(cls, "claims", ()):
                child = getattr(m, attr, None)
                if isinstance(child, nn.Module):
                    mods += list(child.modules())
            claimed.update(id(x) for x in mods[1:])
            own = [
                (x, k, name_of[id(p)])
                for x in mods
                for k, p in x.named_parameters(recurse=False)
                if p.requires_grad and id(p) in name_of
            ]
            if not own:
                continue
            _refuse_batch_coupling(mname, m)
            rule = (cls or GenericRule)(m, mname, own)
            self.rules.append(rule)
            for _, _, n in own:
                owners[n] = owners.get(n, 0) + 1
        self.owner_modules: dict[str, set[int]] = {}
        for r in self.rules:
            for n in r.names:
                self.owner_modules.setdefault(n, set()).add(id(r.module))
        self.active: dict[int, int] = {}  # modules whose forward is running (for ParameterUses)
        self._functional: dict[tuple[str, str | None, bool], Rule] = {}
        self.tied = {n for n, c in owners.items() if c > 1}
        self.check = check
        # an nn.Sequential of plain torch layers keeps examples apart, uses each parameter only inside its own
        # layer and keeps the batch first: the first-batch checks are skipped for it
        self.separable = _separable(net) and not self.tied
        self.network_rule: NetworkRule | None = None
        self.calls: dict[Rule, list[Call]] = {}
        self.recording = False
        self.n = 0
        self._mode = "main"  # "probe": record shapes only
        self._probe: dict[tuple[Rule, int], tuple[Any, ...]] = {}
        self._templates: dict[tuple[Rule, int], _Template] = {}
        self._expand_off = False
        self._clone: set[Rule] = set()  # rules whose recorded outputs the network edits in place: tapped by copy
        if self.separable:  # no probe: an in-place layer edits the output of the last layer with parameters before it
            by_module = {id(r.module): r for r in self.rules}
            last: Rule | None = None
            for m in net.modules():
                if id(m) in by_module:
                    last = by_module[id(m)]
                elif getattr(m, "inplace", False) and last is not None:
                    self._clone.add(last)
        self._copy_all = False  # every tap copies (a forward that found an in-place edit of a tap's view)
        self._copies: list[tuple[Rule, Tensor, int]] = []  # copy taps of this forward and their versions
        # taps made by a rule's own forward, not recorded yet: id(tap) → (slot, tap, source, copied)
        self._pending: dict[int, tuple[Slot, Tensor, Tensor, bool]] = {}
        self._z: Tensor | None = None  # the leaf every tap takes (see fisherkl.nn.tap)
        self._sink: _Sink | None = None  # where taps deliver gradients during engine.backward
        self._handles: list[Any] = []
        self._passes: Any = None
        self.checked = False

    # --- which parameters each rule accounts for --------------------------------------------------------
    @property
    def active_rules(self) -> list[Rule]:
        """The rules whose statistics count (layer rules, then the network rule if any)."""
        rules = list(self.rules)
        if self.network_rule is not None:
            rules.append(self.network_rule)
        return rules

    def functional_rule(self, weight: str, bias: str | None, transposed: bool) -> Rule:
        """The rule of a linear use of ``weight`` outside its module (created on first sight)."""
        key = (weight, bias, transposed)
        if key not in self._functional:
            owner = next(r.module for r in self.rules if weight in r.names)
            shape = self.layout.shapes[self.layout.index(weight)]
            rule = FunctionalLinearRule(owner, weight, bias, shape, transposed)
            self._functional[key] = rule
            self.rules.append(rule)
            counts: dict[str, int] = {}
            for r in self.rules:
                for n in r.names:
                    counts[n] = counts.get(n, 0) + 1
            self.tied = {n for n, c in counts.items() if c > 1}
        return self._functional[key]

    def kron_parts(self) -> list[tuple[Rule, Any]]:
        """(rule, part) for every linear map with Kronecker factors: its weight trainable, neither weight nor
        bias tied to another layer or handled by the network rule."""
        skip = set(self.tied) | set(self.network_rule.names if self.network_rule else ())
        out = []
        for r in self.rules:
            for part in r.parts:
                if part.weight is None or part.weight in skip or (part.bias is not None and part.bias in skip):
                    continue
                out.append((r, part))
        return out

    # --- hooks -----------------------------------------------------------------------------------------
    def __enter__(self) -> Engine:
        self._passes = fisher_passes()
        self._passes.__enter__()
        for r in self.rules:
            if getattr(r, "functional", False):
                continue
            if r.overrides_forward:
                original = r.module.forward
                r.module.forward = _bound_override(self, r, original)  # type: ignore[method-assign]
                self._handles.append(_Restore(r.module))
            else:
                self._handles.append(r.module.register_forward_hook(self._hook(r), with_kwargs=True))
                self._handles.append(r.module.register_forward_pre_hook(self._enter_module))
        return self

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        if self.recording:
            self.active[id(module)] = self.active.get(id(module), 0) + 1

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.calls = {}
        if self._passes is not None:
            self._passes.__exit__(*exc)
            self._passes = None

    def _hook(self, rule: Rule) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
            if not self.recording:
                return None
            if self.active.get(id(module)):
                self.active[id(module)] -= 1
            detached = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)
            kw = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in kwargs.items()}
            outs = [o for o in flat_tensors(out) if o.requires_grad]
            call = Call(detached, kw, outs, n=self.n)
            return self._classify(rule, call, out)

        return hook

    def record(self, rule: Rule, call: Call) -> None:
        """Record a call made by a rule's own forward (inputs and outputs batch first already); outputs the rule
        tapped with :meth:`tap` deliver their gradients in the backward pass."""
        call.dtype = self.dtype
        call.tapped = [False] * len(call.outs)
        for i, o in enumerate(call.outs):
            found = self._pending.pop(id(o), None)
            if found is not None and found[1] is o:
                slot, _, source, copy = found
                slot.bind(call, i)
                call.tapped[i] = True
                if copy:  # the network gets the copy; the recorded tensor is the original
                    call.outs[i] = source
        call.versions = [o._version for o in call.outs]
        self.calls.setdefault(rule, []).append(call)

    def tap(self, rule: Rule, t: Tensor) -> Tensor:
        """``t`` as the network should use it during a recording forward: through a tap (see
        :mod:`fisherkl.nn.tap`), so that its gradient reaches the statistics in the backward pass. For outputs
        a rule records itself (:meth:`record` binds the tap to its call)."""
        if self._mode == "probe" or not self.recording or not t.requires_grad:
            return t
        slot = Slot()
        copy = self._copy_all or rule in self._clone
        y = self._tap(rule, t, slot, copy)
        self._pending[id(y)] = (slot, y, t, copy)
        return y

    def _tap(self, rule: Rule, t: Tensor, slot: Slot, copy: bool) -> Tensor:
        if self._z is None:
            self._z = torch.zeros((), dtype=t.dtype, device=t.device, requires_grad=True)
        y: Tensor = Tap.apply(t, self._z, self, slot, copy)
        if copy:
            self._copies.append((rule, y, y._version))
        return y

    def _classify(self, rule: Rule, call: Call, out: Any) -> Any:
        """Set the call's batch dimensions (probe / template), broadcast batch-independent outputs, record it."""
        calls = self.calls.setdefault(rule, [])
        call.dtype = self.dtype
        key = (rule, len(calls))
        shapes = (
            tuple(map(_shape, call.args)),
            {k: _shape(v) for k, v in call.kwargs.items()},
            [_shape(o) for o in call.outs],
        )
        if self._mode == "probe":
            self._probe[key] = shapes
            call.versions = [o._version for o in call.outs]
            calls.append(call)
            return None
        tpl = self._templates.get(key)
        if tpl is None or not tpl.fits(call, self.n):
            probe = self._probe.get(key)
            if probe is None or len(probe[0]) != len(call.args) or len(probe[2]) != len(call.outs):
                self._stale = True
                tpl = _Template(tuple(0 for _ in call.args), {k: 0 for k in call.kwargs}, [0 for _ in call.outs])
            else:
                m = self._probe_n
                tpl = _Template(
                    tuple(
                        _bdim(s, p, self.n, m) if s is not None and p is not None else None
                        for s, p in zip(shapes[0], probe[0])
                    ),
                    {
                        k: (
                            _bdim(s, probe[1].get(k), self.n, m)
                            if s is not None and probe[1].get(k) is not None
                            else None
                        )
                        for k, s in shapes[1].items()
                    },
                    [_bdim(s, p, self.n, m) if p is not None else "?" for s, p in zip(shapes[2], probe[2])],
                )
                self._templates[key] = tpl
        call.arg_bdims = tuple(None if d == "?" else d for d in tpl.arg_bdims)
        call.kw_bdims = {k: (None if d == "?" else d) for k, d in tpl.kw_bdims.items()}
        call.out_bdims = [None if d == "?" else d for d in tpl.out_bdims]
        call.cache["unsupported"] = not tpl.ok
        expand = [d is None for d in tpl.out_bdims] if not self._expand_off else [False] * len(call.outs)
        ids = {id(o): i for i, o in enumerate(call.outs)}
        call.tapped = [False] * len(call.outs)
        copy = self._copy_all or rule in self._clone

        def swap(t: Tensor) -> Tensor:
            i = ids.get(id(t))
            if i is None:
                return t
            new = _broadcast(t, self.n) if expand[i] else t
            slot = Slot(call, i)
            y = self._tap(rule, new, slot, copy)
            call.outs[i] = new if copy else y  # with a copy, the network gets the copy
            call.tapped[i] = True
            return y

        replaced = _map_tensors(out, swap) if _rebuildable(out) or any(expand) else None
        if self._expand_off:
            call.cache["unsupported"] = call.cache["unsupported"] or any(d is None for d in tpl.out_bdims)
        call.versions = [o._version for o in call.outs]
        calls.append(call)
        return replaced

    # --- one batch ---------------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> Tensor:
        """Run the network on a batch (on the network's device), recording module calls; returns outputs
        ``[n, *P, C]`` (with graph)."""
        for _ in range(5):
            self.calls, self._copies, self._pending = {}, [], {}
            self.n = batch.n
            self._stale = False
            self.recording, self.active = True, {}
            try:
                with torch.enable_grad(), self._uses():
                    out = self.adapter.outputs(self.call(batch))
            except RuntimeError as exc:
                if not is_inplace_on_tap(exc) or self._copy_all:
                    raise
                self._copy_all = True  # a recorded output is edited in place: find which, with copies everywhere
                continue
            finally:
                self.recording = False
                self._pending = {}
            if not isinstance(out, Tensor):
                raise ParameterError(f"the network's outputs must be a tensor, got {type(out).__name__}")
            if self._copy_all:  # found the edited outputs; the next forward copies only those
                self._copy_all = False
                self._clone |= {r for r, y, v in self._copies if y._version != v}
                self._copies, self.calls = [], {}
                del out  # its graph goes before the next forward
                continue
            changed = self._edited()
            self._copies = []
            if not changed:
                return out
            self._clone |= changed  # an in-place op modified a recorded output itself: copy it
        raise FisherKLError(f"layer outputs were modified in place and could not be protected: {changed}")

    def _edited(self) -> set[Rule]:
        """Rules with a recorded output that was modified in place since it was recorded."""
        return {r for r, cs in self.calls.items() for c in cs if [o._version for o in c.outs] != c.versions}

    def probe(self, batch: Batch) -> Tensor:
        """Forward on 2–3 examples of ``batch`` recording only shapes (see the module doc); returns their
        outputs and the index of those examples in ``batch``."""
        n = batch.n
        idx = torch.tensor([0, 1] if n >= 3 else ([0, 1, 0] if n == 2 else [0, 0]))
        sub = batch.take(idx)
        self._probe, self._probe_n, self._mode = {}, int(idx.numel()), "probe"
        self.calls, self.n, self.recording, self.active = {}, sub.n, True, {}
        try:
            with torch.enable_grad(), self._uses():
                out = self.adapter.outputs(self.call(sub))
            # outputs the network edits in place are tapped by copy (found here, without taps, not by a failure)
            self._clone |= self._edited()
        finally:
            self.recording, self._mode, self.calls = False, "main", {}
        self._templates = {}
        self._probe_index = idx
        return out.detach()

    def _retie(self) -> None:
        """Tied parameters: those used by several rules that recorded calls on the first batch (a module that
        owns a parameter but never runs, such as a holder of weights used functionally, does not count)."""
        counts: dict[str, int] = {}
        for r in self.rules:
            if self.calls.get(r):
                for n in r.names:
                    counts[n] = counts.get(n, 0) + 1
        self.tied = {n for n, c in counts.items() if c > 1}

    def call(self, batch: Batch) -> Any:
        """The network on a batch; until the first batch has passed, a failure of the user's forward is
        reported with the batch's dtypes (the usual cause)."""
        if self.checked:
            return self.adapter.call(self.net, batch)
        try:
            return self.adapter.call(self.net, batch)
        except (RuntimeError, TypeError, ValueError, IndexError) as exc:
            if is_inplace_on_tap(exc):
                raise
            dtypes = [str(t.dtype) for t in batch.tensors()]
            raise ParameterError(
                f"data: the network's forward failed on the first batch ({type(exc).__name__}: {exc}); the batch's "
                f"input dtypes are {dtypes} (floating inputs are cast to the network's dtype, integer inputs such as "
                "token ids are not)"
            ) from exc

    def _uses(self) -> Any:
        """The mode recording linear uses of parameters outside their modules (none for a plain Sequential)."""
        return contextlib.nullcontext() if self.separable else ParameterUses(self)

    def example_bytes(self, batch: Batch) -> int:
        """Bytes of the recorded layer outputs and the network outputs per example (a forward on ``batch``,
        without gradients kept)."""
        batch = batch.to(self.params[0])
        saved, self.calls = self.calls, {}
        self.n, self.recording, self._mode = batch.n, True, "probe"
        try:
            with self, torch.enable_grad(), self._uses():
                out = self.adapter.outputs(self.call(batch))
                total = sum(o.numel() * o.element_size() for cs in self.calls.values() for c in cs for o in c.outs)
                total += out.numel() * out.element_size()
        finally:
            self.calls, self.recording, self._mode = saved, False, "main"
            self._probe = {}
        return total // max(1, batch.n)

    def backward(self, out: Tensor, rows: Tensor, keep_graph: bool = False, sink: _Sink | None = None) -> None:
        """Backpropagate cotangent rows ``[k, n, *P, C]`` to every recorded output, one pass per row through the
        activations only (this beats a vmapped backward, which falls back to a loop for convolutions and
        pooling). Tapped outputs hand their gradients to ``sink`` as the pass reaches them (streamed rules are
        turned into statistics there); every other call keeps the k gradients of its outputs, batch first. The
        graph is freed after the last row unless ``keep_graph``."""
        sink = sink if sink is not None else _Sink(self, set(), [], final=False)
        calls = [c for cs in self.calls.values() for c in cs]
        if not calls:
            return
        loose = [(c, i) for c in calls for i in range(len(c.outs)) if not c.tapped[i]]
        head = [self._z] if self._z is not None and any(any(c.tapped) for c in calls) else []
        inputs = head + [c.outs[i] for c, i in loose]
        rows = rows.to(out.dtype)
        k = rows.shape[0]
        self._sink = sink
        try:
            for r in range(k):
                sink.begin_row(last=sink.final and r == k - 1)
                got = vjp(out, inputs, rows[r], retain_graph=keep_graph or r < k - 1, allow_unused=True)
                for (c, i), g in zip(loose, got[len(head) :]):
                    sink.put(c, i, torch.zeros_like(c.outs[i]) if g is None else g)
                sink.end_row()
        finally:
            self._sink = None
        sink.store()

    def _stub_outputs(self) -> None:
        """From here on tapped outputs matter only by their shape: one-element stubs, so that the network's graph
        frees them when a training step would (a BatchNorm's output, once the next ReLU has run)."""
        for cs in self.calls.values():
            for c in cs:
                c.outs = [
                    torch.zeros((), dtype=o.dtype, device=o.device).expand(o.shape) if t else o
                    for o, t in zip(c.outs, c.tapped)
                ]

    def on_tap(self, slot: Slot, g: Tensor) -> None:
        """A tap's gradient (called by :class:`~fisherkl.nn.tap.Tap` during the backward pass)."""
        if self._sink is not None and slot.call is not None:
            self._sink.put(slot.call, slot.index, g)

    def row_bytes(self) -> int:
        """Bytes of one cotangent row's gradients of every recorded output (in the statistics' dtype)."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return size * sum(o.numel() for cs in self.calls.values() for c in cs for o in c.outs)

    def check_batch(self, batch: Batch, out: Tensor, probe_out: Tensor | None) -> None:
        """The first-batch checks of the module doc: independence, then completeness (finding parameters
        for the network rule)."""
        if probe_out is not None:
            mine = out.detach()[self._probe_index.to(out.device)]
            tol = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}.get(out.dtype, 1e-9)
            if mine.shape != probe_out.shape or not torch.allclose(
                mine, probe_out, rtol=tol, atol=tol * float(mine.abs().max().clamp_min(1))
            ):
                raise RouteError(
                    "the network's output for an example depends on the other examples in the batch (e.g. BatchNorm "
                    "in training mode, attention or pooling across the batch), so there is no per-example Fisher; "
                    "call net.eval() or fix the network"
                )
        unsupported = {
            n
            for r, cs in self.calls.items()
            for c in cs
            if c.cache.get("unsupported") or not r.supports(c)
            for n in r.names
        }
        bad = self._verify(batch, unsupported) if self.check else set()
        orphans = sorted(unsupported | bad, key=self.layout.names.index)
        if orphans:
            self.network_rule = NetworkRule(self.net, self.adapter, orphans, self.by_name)
            for r in self.rules:
                r.names = [n for n in r.names if n not in orphans]
        self.checked = True

    def _verify(self, batch: Batch, skip: set[str], m: int = 3) -> set[str]:
        """Names of parameters whose per-example gradients (from the rules) do not add up to the batch
        gradient for a random cotangent on the first ``m`` examples."""
        m = min(batch.n, m)
        sub = batch.take(torch.arange(m))
        saved, saved_n = self.calls, self.n
        try:
            out = self.forward(sub)
            calls = [c for cs in self.calls.values() for c in cs]
            targets = [o for c in calls for o in c.outs]
            gen = torch.Generator(device=out.device).manual_seed(12345)
            e = torch.randn(out.shape, dtype=out.dtype, device=out.device, generator=gen)
            k = len(self.params)
            both = vjp(out, self.params + targets, e, allow_unused=True)
            want, at = both[:k], k
            for c in calls:
                gs = [torch.zeros_like(o) if g is None else g for o, g in zip(c.outs, both[at : at + len(c.outs)])]
                gs = [g.to(self.dtype) for g in gs]
                c.set_rows([[g.movedim(d, 0) if d else g] for g, d in zip(gs, c.out_bdims)])
                at += len(c.outs)
            got: dict[str, Tensor] = {}
            for r in self.rules:
                cs = [c for c in self.calls.get(r, []) if not (c.cache.get("unsupported") or not r.supports(c))]
                if not cs or not (set(r.names) - skip):
                    continue
                try:
                    pe = r.per_example(cs, slice(0, m))
                except Exception:  # a rule that cannot handle this call: its parameters go to the network rule
                    skip |= set(r.names)
                    continue
                for name, v in pe.items():
                    s = v[0].sum(0)
                    got[name] = got[name] + s if name in got else s
        finally:
            self.calls, self.n = saved, saved_n
        bad = set()
        tol = {torch.bfloat16: 3e-2, torch.float16: 5e-3, torch.float32: 1e-4}.get(self.net_dtype, 1e-8)
        for name, w in zip(self.layout.names, want):
            if name in skip:
                continue
            w = (
                torch.zeros(self.layout.shapes[self.layout.index(name)], dtype=self.dtype, device=self.device)
                if w is None
                else w
            )
            g = got.get(name, torch.zeros_like(w))
            scale = 1 + float(w.abs().max()) if w.numel() else 1.0
            if g.shape != w.shape or bool(((g - w).abs() > tol * scale).any()):
                bad.add(name)
        return bad

    def per_example(self, rules: Iterable[Rule], sl: slice) -> dict[str, Tensor]:
        """Per-example gradients ``{name: [R, m, *shape]}`` for examples ``sl`` (tied parameters summed)."""
        out: dict[str, Tensor] = {}
        for r in rules:
            calls = self.calls.get(r)
            if not calls:
                continue
            for k, v in r.per_example(calls, sl).items():
                if k not in r.names:
                    continue
                out[k] = out[k] + v if k in out else v
        return out

    def chunk(self, r: int, width: int) -> int:
        """Examples per chunk so that ``[r, m, width]`` stays under the chunk memory."""
        size = torch.empty((), dtype=self.dtype).element_size()
        return max(1, CHUNK_BYTES // max(1, r * width * size))

    def rows_per_chunk(self) -> int:
        """Cotangent rows backpropagated at once, so that their recorded gradients fit in ``ROW_BYTES``."""
        return max(1, ROW_BYTES // max(1, self.row_bytes()))

    def run(
        self,
        batches: Iterable[Any],
        head: Head,
        kind: str,
        mc_samples: int,
        gen_for: Any,
        stats: list[Any],
        positions: str = "sum",
    ) -> int:
        """Stream the data: for every batch, forward, cotangent rows, chunked backward with each stat's
        ``add_rows(engine, rules)``, then ``add_inputs(engine, rules)`` and ``end_batch(engine, count)``.
        Returns the total count (examples, or unmasked positions with ``positions="mean"``).

        When a chunk's recorded gradients would exceed ``STREAM_BYTES``, every rule that all stats can take
        one at a time (``stat.streams(engine, rule)``) is *streamed*: its statistics are taken inside the
        backward pass as soon as its outputs' gradients arrive, which are then dropped, and after the last
        row its inputs too (see :mod:`fisherkl.nn.tap`)."""
        total = 0
        with self:
            for index, raw in enumerate(batches):
                batch, out = self.prepare(self.adapter.batch(raw))
                head.check(out)
                labels, mask = self.adapter.targets(batch, out)
                rows = Rows(head, out.detach().to(self.dtype), labels, mask, kind, mc_samples, gen_for(index))
                for s in stats:
                    if not getattr(s, "ready", True):
                        s.setup(self)
                k = self.rows_per_chunk()
                streamed: set[Rule] = set()
                if self.row_bytes() * min(k, max(rows.count, 1)) > STREAM_BYTES:
                    streamed = {
                        r
                        for r, cs in self.calls.items()
                        if all(all(c.tapped) for c in cs) and all(_streams(s, self, r) for s in stats)
                    }
                rest = [r for r in self.calls if r not in streamed]
                chunks = list(range(0, rows.count, k))
                released: set[Rule] = set()
                for i, chunk in enumerate(rows.chunks(k)):
                    sink = _Sink(self, streamed, stats, final=i == len(chunks) - 1)
                    self.backward(out, chunk, keep_graph=i < len(chunks) - 1, sink=sink)
                    released |= sink.released
                    for s in stats:
                        s.add_rows(self, rest)
                if rows.count == 0:
                    del out
                left = [r for r in self.calls if r not in released]
                for s in stats:
                    if hasattr(s, "add_inputs"):
                        s.add_inputs(self, left)
                if positions == "sum":
                    count = batch.n
                else:
                    count = int(mask.sum()) if mask is not None else math.prod(out.shape[:-1])
                for s in stats:
                    s.end_batch(self, count)
                total += count
                self.calls = {}
        return total

    def prepare(self, batch: Batch) -> tuple[Batch, Tensor]:
        """The batch on the network's device and its forward, with the first-batch checks (or a new probe when
        the calls changed shape)."""
        batch = batch.to(self.params[0])
        first = not self.checked
        probe_out = self.probe(batch) if first and not self.separable else None
        out = self.forward(batch)
        if not first and self._stale and not self.separable:
            self.probe(batch)
            out = self.forward(batch)
        if first:
            self._retie()
        if first and self.separable:
            self.checked = True
        elif first:
            try:
                self.check_batch(batch, out, probe_out)
            except RouteError:
                if self._expand_off or all(all(d is not None for d in t.out_bdims) for t in self._templates.values()):
                    raise
                # broadcasting batch-independent outputs may have changed the network: retry without it
                self._expand_off = True
                self.probe(batch)
                out = self.forward(batch)
                self.check_batch(batch, out, probe_out)
        self._stub_outputs()
        if self.network_rule is not None:
            call = Call(batch.args, batch.kwargs, [out], n=batch.n)
            call.arg_bdims = tuple(_batch_dim(a, batch.n) for a in call.args)
            call.kw_bdims = {k: _batch_dim(v, batch.n) for k, v in call.kwargs.items()}
            self.calls[self.network_rule] = [call]
        return batch, out


def _streams(stat: Any, engine: Engine, rule: Rule) -> bool:
    fn = getattr(stat, "streams", None)
    return bool(fn is not None and fn(engine, rule))


class _Sink:
    """Gradients delivered during :meth:`Engine.backward` of one chunk of rows. A streamed rule's statistics are
    taken as soon as every output of its calls has the current row's gradient (each stat's ``add_rows(engine,
    [rule])``), and the gradients dropped; on the batch's last row also ``add_inputs(engine, [rule])``, and the
    calls' inputs are dropped. Other calls keep their rows (:meth:`store` hands them over after the chunk)."""

    def __init__(self, engine: Engine, streamed: set[Rule], stats: list[Any], final: bool) -> None:
        self.engine, self.streamed, self.stats, self.final = engine, streamed, stats, final
        self.owner = {id(c): r for r, cs in engine.calls.items() for c in cs}
        self.kept = {id(c): [[] for _ in c.outs] for r, cs in engine.calls.items() if r not in streamed for c in cs}
        self.now: dict[int, list[Tensor | None]] = {}
        self.left: dict[Rule, int] = {}
        self.done: set[Rule] = set()
        self.released: set[Rule] = set()
        self.row, self.last = -1, False

    def begin_row(self, last: bool) -> None:
        self.row, self.last, self.done = self.row + 1, last, set()
        calls = self.engine.calls
        self.now = {id(c): [None] * len(c.outs) for r in self.streamed for c in calls.get(r, [])}
        self.left = {r: sum(len(c.outs) for c in calls.get(r, [])) for r in self.streamed}

    def put(self, call: Call, i: int, g: Tensor) -> None:
        rule = self.owner.get(id(call))
        if rule is None:  # a tap of another forward's graph
            return
        eng = self.engine
        if g.dtype != eng.dtype:
            g = g.to(eng.dtype)
        d = call.out_bdims[i]
        if d:
            g = g.movedim(d, 0)
        if rule not in self.streamed:
            self.kept[id(call)][i].append(g)
            return
        row = self.now[id(call)]
        if row[i] is None:
            self.left[rule] -= 1
        row[i] = g
        if self.left[rule] == 0:
            self.flush(rule)

    def _zeros(self, call: Call, i: int) -> Tensor:
        z = torch.zeros_like(call.outs[i], dtype=self.engine.dtype)
        d = call.out_bdims[i]
        return z.movedim(d, 0) if d else z

    def flush(self, rule: Rule) -> None:
        eng = self.engine
        calls = eng.calls.get(rule, [])
        for c in calls:
            c.set_rows([[g if g is not None else self._zeros(c, i)] for i, g in enumerate(self.now[id(c)])])
        for s in self.stats:
            s.add_rows(eng, [rule])
        for c in calls:
            c.set_rows([])
            self.now[id(c)] = [None] * len(c.outs)
        self.done.add(rule)
        if self.last:
            for s in self.stats:
                if hasattr(s, "add_inputs"):
                    s.add_inputs(eng, [rule])
            for c in calls:  # the inputs go now, as the training step's saved activations would
                c.args, c.kwargs, c.outs, c.cache = (), {}, [], {}
            self.released.add(rule)

    def end_row(self) -> None:
        """Outputs that the row does not reach get zeros."""
        for rule in self.streamed:
            if rule not in self.done and rule not in self.released and self.engine.calls.get(rule):
                self.flush(rule)
        for cs in self.engine.calls.values():
            for c in cs:
                lists = self.kept.get(id(c))
                if lists is None:
                    continue
                for i, lst in enumerate(lists):
                    if len(lst) <= self.row:
                        lst.append(self._zeros(c, i))

    def store(self) -> None:
        for cs in self.engine.calls.values():
            for c in cs:
                if id(c) in self.kept:
                    c.set_rows(self.kept[id(c)])


def _rebuildable(obj: Any) -> bool:
    """Whether :func:`_map_tensors` rebuilds ``obj`` faithfully (tensors, plain tuples, lists and dicts, and
    namedtuples of them): other containers keep their outputs untapped."""
    if isinstance(obj, Tensor):
        return True
    if type(obj) in (tuple, list) or (isinstance(obj, tuple) and hasattr(obj, "_fields")):
        return all(_rebuildable(o) for o in obj)
    if type(obj) is dict:
        return all(_rebuildable(o) for o in obj.values())
    return not isinstance(obj, (tuple, list, dict))


def _batch_dim(t: Any, n: int) -> int | None:
    return 0 if isinstance(t, Tensor) and t.ndim > 0 and t.shape[0] == n else None


def _broadcast(t: Tensor, n: int) -> Tensor:
    """A batch-independent output broadcast over n examples (so that each gets its own gradient)."""
    if t.ndim and t.shape[0] == 1:
        return t.expand(n, *t.shape[1:])
    return t.unsqueeze(0).expand(n, *t.shape)


class _Restore:
    """Undo a forward override."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def _bound_override(engine: Engine, rule: Rule, original: Callable[..., Any]) -> Callable[..., Any]:
    """The module's forward during the engine's passes: the rule's own (it records its calls, batch first)."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        key = id(rule.module)
        engine.active[key] = engine.active.get(key, 0) + 1
        try:
            return rule.forward(engine, original, *args, **kwargs)
        finally:
            engine.active[key] -= 1

    return forward


def per_example_gradients(
    net: nn.Module,
    x: Any,
    y: Tensor | None = None,
    head: str | Head | Any = "categorical",
    adapter: Adapter | None = None,
) -> dict[str, Tensor]:
    """Per-example gradients of the log-likelihood, ∇_w log p(yₙ | xₙ, w), as ``{name: [n, *shape]}``.

    ``x`` is a batch as :class:`~fisherkl.nn.batch.Adapter` reads it (a tensor, a tuple of tensors, a dict);
    ``y`` the labels (or inside the batch). One forward and one backward through the activations; the layer
    rules do the rest. With positions, the gradient of an example sums over its (unmasked) positions.
    """
    from .heads import get_head

    h = get_head(head)
    engine = Engine(net, check=True, adapter=adapter)
    raw = x if y is None else (x, y)
    with engine:
        batch, out = engine.prepare(engine.adapter.batch(raw))
        h.check(out)
        labels, mask = engine.adapter.targets(batch, out)
        rows = Rows(h, out.detach().to(engine.dtype), labels, mask, "empirical")
        engine.backward(out, next(rows.chunks(1)))
        pe = engine.per_example(engine.active_rules, slice(None))
    return {k: v[0] for k, v in pe.items()}


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
