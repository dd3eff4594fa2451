"""A network's parameters as one vector: layout, flattening, perturbed copies."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParameterError
from ..matrix import FisherMatrix
from ..matrix.layout import ParamLayout


def layout_of(net: nn.Module) -> ParamLayout:
    """The layout (names and shapes, in ``named_parameters`` order) of the parameters that require grad."""
    return ParamLayout.of((n, p) for n, p in net.named_parameters() if p.requires_grad)


def parameters_vector(net: nn.Module) -> Tensor:
    """The parameters that require grad, flattened ``[p]`` (detached)."""
    return torch.cat([p.detach().reshape(-1) for p in net.parameters() if p.requires_grad])


def perturbed(net: nn.Module, delta: Any) -> nn.Module:
    """A deep copy of ``net`` with parameters w + δ (δ flat ``[p]``, a list, or a dict by name)."""
    layout = layout_of(net)
    flat, _ = layout.flatten(delta, "delta")
    parts = layout.unflatten(flat, "dict")
    assert isinstance(parts, dict)
    other = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if name in parts:
                p.add_(parts[name].to(dtype=p.dtype, device=p.device))
    return other


def align(fisher: FisherMatrix, net: nn.Module, what: str = "fisher") -> FisherMatrix:
    """``fisher`` over the parameters of ``net`` that require grad, matched by **identity**, not by the module
    path they were reached through: a Fisher computed on ``Wrapper(net)`` (names ``m.tok.weight``) serves
    ``net`` (``tok.weight``). Parameters are matched by the references :func:`fisherkl.nn.fisher` keeps,
    else by a unique name suffix with the same shape; they must be the same parameters in the same order."""
    layout = layout_of(net)
    if fisher.layout == layout:
        return fisher
    mine = [p for p in net.parameters() if p.requires_grad]
    refs = getattr(fisher, "param_refs", None)
    if refs is not None and len(refs) == len(mine) and all(r() is p for r, p in zip(refs, mine)):
        return fisher.relabel(layout)
    theirs = list(fisher.layout.names)
    if len(theirs) == len(layout.names) and fisher.layout.shapes == layout.shapes:
        if all(t == n or t.endswith("." + n) or n.endswith("." + t) for t, n in zip(theirs, layout.names)):
            return fisher.relabel(layout)
    raise ParameterError(
        f"{what}: its parameter layout is not the network's (the parameters that require grad, by name and shape, in "
        f"order): {theirs[:4]}… vs {list(layout.names)[:4]}…"
    )


@contextlib.contextmanager
def preserved_parameters(net: nn.Module) -> Iterator[None]:
    """Restore every module's own parameters on exit.

    ``torch.func.functional_call`` leaves a detached tensor behind in a module that is registered
    twice in the same network (``nn.Sequential(lin, act, lin)``); this guard undoes that.
    """
    saved = [(m, dict(m._parameters)) for _, m in net.named_modules(remove_duplicate=False)]
    try:
        yield
    finally:
        for m, params in saved:
            for k, p in params.items():
                m._parameters[k] = p
