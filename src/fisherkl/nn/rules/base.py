"""Layer rules: per-example gradients, squared sums and Kronecker factors from a layer's inputs and
output gradients.

During a batch the engine records every call of a module that owns parameters (a :class:`Call`: its
inputs, its output tensors, and, after the backward passes, the gradients of those outputs for R
cotangent rows). A :class:`Rule` turns calls into

* per-example gradients ``{name: [R, m, *param.shape]}`` for a slice of m examples (dense, block);
* sums over rows and examples of squared per-example gradients (the diagonal);
* for the linear maps it contains (:class:`~fisherkl.nn.rules.linear.LinearPart`: Linear, the
  projections of attention, convolutions by unfolding, embeddings), Kronecker factors.

Rules are chosen by module type from a registry (:func:`register`), so a new layer is one small file
that registers its rule; the engine, statistics and matrices do not change. A rule may **claim** the
parameters of child modules whose forward its module bypasses (``nn.MultiheadAttention`` uses
``out_proj.weight`` without calling ``out_proj``), and may replace its module's forward during
fisherkl's passes (:meth:`Rule.forward`) to expose intermediate tensors.

Batch dimensions: the engine learns, for every call, where the batch dimension of each input and
output is (``Call.arg_bdims``, ``Call.out_bdims``: an index, or None when the tensor does not depend on
the batch, as for a position embedding of ``arange(T)``). Output gradients are stored batch-first
(``[R, n, ...]``); :meth:`Call.arg` gives inputs batch-first too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn


class Call:
    """One forward call of a module: inputs, output tensors, their batch dimensions and gradients.

    ``rows[i]`` holds the R gradients (one per cotangent row, each shaped like output i, batch first) as
    the backward passes produced them; ``grads[i]`` stacks them to ``[R, n, ...]`` on first use (rules
    that can work row by row read ``rows`` and skip that copy).
    """

    def __init__(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        outs: list[Tensor],
        grads: list[Tensor] | None = None,
        cache: dict[str, Any] | None = None,
        n: int = 0,
    ) -> None:
        self.args, self.kwargs, self.outs = args, kwargs, outs
        self.cache: dict[str, Any] = {} if cache is None else cache
        self.n = n
        self.dtype: torch.dtype | None = None  # the statistics' dtype (floating inputs are read in it)
        self.arg_bdims: tuple[int | None, ...] = tuple(0 for _ in args)
        self.kw_bdims: dict[str, int | None] = {k: 0 for k in kwargs}
        self.out_bdims: list[int | None] = [0 for _ in outs]
        self.versions: list[int] = []
        self.tapped: list[bool] = [False] * len(outs)  # outputs whose gradients a tap delivers (fisherkl.nn.tap)
        self.rows: list[list[Tensor]] = []
        self._stacked: list[Tensor] | None = None
        if grads is not None:
            self.grads = grads

    @property
    def grads(self) -> list[Tensor]:
        if self._stacked is None:
            self._stacked = [r[0].unsqueeze(0) if len(r) == 1 else torch.stack(r) for r in self.rows]
            self.rows = [list(t.unbind(0)) for t in self._stacked]  # views: the separate rows are freed
        return self._stacked

    @grads.setter
    def grads(self, value: list[Tensor]) -> None:
        self._stacked = list(value)
        self.rows = [list(v.unbind(0)) for v in self._stacked]

    def set_rows(self, rows: list[list[Tensor]]) -> None:
        self.rows, self._stacked = rows, None

    @property
    def n_rows(self) -> int:
        return len(self.rows[0]) if self.rows else 0

    def arg(self, i: int) -> Tensor:
        """Input i batch-first ``[n, ...]`` (a batch-independent input is expanded over the n examples)."""
        key = f"arg{i}"
        if key not in self.cache:
            t = batch_first(self.args[i], self.arg_bdims[i], self.n)
            if self.dtype is not None and t.is_floating_point() and t.dtype != self.dtype:
                t = t.to(self.dtype)
            self.cache[key] = t
        return self.cache[key]

    def with_rows(self, rows: list[list[Tensor]]) -> Call:
        """A view of this call with other gradient rows (same inputs, cache and batch dimensions)."""
        out = Call(self.args, self.kwargs, self.outs, cache=self.cache, n=self.n)
        out.arg_bdims, out.kw_bdims, out.out_bdims = self.arg_bdims, self.kw_bdims, self.out_bdims
        out.dtype = self.dtype
        out.set_rows(rows)
        return out


def batch_first(t: Tensor, bdim: int | None, n: int) -> Tensor:
    """``t`` with its batch dimension first; a tensor without one is broadcast over the n examples (a
    leading dimension of size 1 is expanded, otherwise one is added)."""
    if bdim is None:
        if t.ndim and t.shape[0] == 1:
            return t.expand(n, *t.shape[1:])
        return t.unsqueeze(0).expand(n, *t.shape)
    return t if bdim == 0 else t.movedim(bdim, 0)


class Rule:
    """The rule of one module: ``names`` are the layout names of the parameters it owns.

    ``params`` lists ``(module, attribute)`` for each of them (its module's own parameters, and those of
    claimed children). Subclasses implement :meth:`per_example`; :meth:`sq_sum` has a generic default.
    ``parts`` are the linear maps with Kronecker factors (empty for rules without any).
    """

    #: child attributes whose parameters this rule owns (their modules get no rule of their own)
    claims: tuple[str, ...] = ()

    def __init__(self, module: nn.Module, module_name: str, params: list[tuple[nn.Module, str, str]]) -> None:
        self.module, self.module_name = module, module_name
        self.params = params  # (owning module, attribute, layout name)
        self.names = [n for _, _, n in params]
        self.parts: list[Any] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.module_name or '<root>'}: {type(self.module).__name__})"

    def name_of(self, module: nn.Module, attr: str) -> str | None:
        """The layout name of parameter ``module.attr`` if this rule owns it (and it requires grad)."""
        for m, a, n in self.params:
            if m is module and a == attr:
                return n
        return None

    # --- recording -----------------------------------------------------------------------------------
    #: a rule that replaces its module's forward during fisherkl's passes sets this to True
    overrides_forward = False

    def forward(self, engine: Any, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The module's forward during fisherkl's passes (only when ``overrides_forward``): compute the
        same result and record calls with ``engine.record(self, call)``."""
        return original(*args, **kwargs)

    def supports(self, call: Call) -> bool:
        """Whether this rule can separate the examples of ``call`` (inputs are read batch first through
        :meth:`Call.arg` and gradients are stored batch first, so by default it can)."""
        return True

    # --- statistics ----------------------------------------------------------------------------------
    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        """Per-example gradients ``{name: [R, m, *shape]}`` for examples ``sl``."""
        raise NotImplementedError

    def sq_sum(self, calls: list[Call], chunk: int) -> dict[str, Tensor]:
        """Σ over rows r and examples n of squared per-example gradients ``{name: shape}``."""
        n = calls[0].n
        out: dict[str, Tensor] = {}
        for i in range(0, n, chunk):
            for k, v in self.per_example(calls, slice(i, i + chunk)).items():
                s = (v * v).sum((0, 1))
                out[k] = out[k] + s if k in out else s
        return out


# --- registry ------------------------------------------------------------------------------------------
RuleFactory = Callable[[nn.Module, str, list[tuple[nn.Module, str, str]]], Rule]
_REGISTRY: list[tuple[type[nn.Module], Callable[[nn.Module], bool] | None, type[Rule]]] = []
_LAZY: list[tuple[str, str, Callable[[nn.Module], bool] | None, type[Rule]]] = []


def register(
    module_type: type[nn.Module] | tuple[str, str], when: Callable[[nn.Module], bool] | None = None
) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: use this rule for modules of ``module_type`` (subclasses included) for which
    ``when(module)`` holds. ``module_type`` may be ``("package.module", "ClassName")`` for an optional
    dependency: the rule applies once that module has been imported (by the user), never importing it."""

    def deco(cls: type[Rule]) -> type[Rule]:
        if isinstance(module_type, tuple):
            _LAZY.append((module_type[0], module_type[1], when, cls))
        else:
            _REGISTRY.append((module_type, when, cls))
        return cls

    return deco


def _candidates() -> Iterable[tuple[type[nn.Module], Callable[[nn.Module], bool] | None, type[Rule]]]:
    yield from _REGISTRY
    for mod, attr, when, cls in _LAZY:
        found = getattr(sys.modules.get(mod), attr, None)
        if isinstance(found, type):
            yield found, when, cls


def rule_class(module: nn.Module) -> type[Rule] | None:
    """The registered rule for ``module``: the most specific registered type (exact type first, then the
    nearest base class), among entries whose condition holds; None when no rule is registered."""
    best: tuple[int, type[Rule]] | None = None
    mro = type(module).__mro__
    for typ, when, cls in _candidates():
        if typ in mro and (when is None or when(module)):
            depth = mro.index(typ)
            if best is None or depth < best[0]:
                best = (depth, cls)
    return None if best is None else best[1]


def flat_tensors(out: Any) -> list[Tensor]:
    """The tensors in a module's output (a tensor, or nested tuples/lists/dicts of them)."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flat_tensors(o)]
    return []
