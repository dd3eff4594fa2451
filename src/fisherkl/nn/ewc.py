"""Elastic weight consolidation: keep a network near what an earlier task needed, in Fisher metric.

    penalty(w) = ½ λ (w − w*)ᵀ F (w − w*),      ∇penalty = λ F (w − w*),

with F the Fisher of the earlier task at its solution w* (Kirkpatrick et al. 2017). ½(w − w*)ᵀF(w − w*)
is the predicted KL between the old and the current predictive distributions on the old task's
inputs, so λ trades the new task's loss against nats of forgetting. Any Fisher representation
works: diagonal (the original), KFAC (Ritter et al. 2018), block, dense, low-rank, a sum of them.

Several tasks: add one :class:`EWC` per task (each with its own anchor), or merge the Fishers with
:func:`merge_fishers` and keep one anchor (online EWC, Schwarz et al. 2018).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParameterError
from ..matrix import KFAC, FisherMatrix, from_state_dict
from .fisher import fisher as nn_fisher
from .heads import Head
from .params import align, layout_of, parameters_vector


class _Quadratic(torch.autograd.Function):
    """½λ dᵀFd with gradient λFd (F symmetric), one Fisher-vector product per call."""

    @staticmethod
    def forward(ctx: Any, d: Tensor, fm: FisherMatrix, strength: float) -> Tensor:  # type: ignore[override]
        fd = fm.mv(d.detach().to(fm.dtype))
        assert isinstance(fd, Tensor)
        fd = fd.to(d.dtype)
        ctx.save_for_backward(fd)
        ctx.strength = strength
        return 0.5 * strength * (d.detach() * fd).sum()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (fd,) = ctx.saved_tensors
        return grad_out * ctx.strength * fd, None, None


def _flat_anchor(net: nn.Module, anchor: Any) -> Tensor:
    layout = layout_of(net)
    current = parameters_vector(net)
    if anchor is None:
        return current.clone()
    if isinstance(anchor, nn.Module):
        return parameters_vector(anchor).to(current).clone()
    if isinstance(anchor, Mapping):
        # a state_dict (may carry buffers and frozen parameters): keep the Fisher's parameters
        missing = [n for n in layout.names if n not in anchor]
        if missing:
            raise ParameterError(f"anchor_params: missing parameters {missing}")
        anchor = {n: anchor[n] for n in layout.names}
    if isinstance(anchor, (list, tuple)) and anchor and isinstance(anchor[0], Tensor):
        anchor = [t.detach() for t in anchor]
    flat, _ = layout.flatten(anchor, "anchor_params")
    return flat.detach().to(current).clone()


class EWC(nn.Module):
    """The penalty ½·λ·(w − w*)ᵀF(w − w*) on ``net``'s parameters, as a module: ``loss + ewc()``.

    Parameters
    ----------
    net:
        The network being trained (not registered as a submodule: ``ewc.parameters()`` is empty
        and ``ewc.state_dict()`` holds only the anchor, the Fisher and λ).
    fisher:
        A :class:`~fisherkl.matrix.FisherMatrix` over ``net``'s parameters (any representation), e.g.
        ``fisherkl.nn.fisher(net, task1_data, representation="kfac")`` or :func:`merge_fishers`.
    anchor_params:
        w*: None (``net``'s current parameters), another module, a ``state_dict``, a flat tensor, a
        list of parameter-shaped tensors or a dict by name.
    strength:
        λ ≥ 0.

    ``ewc()`` returns a differentiable 0-d tensor whose gradient is λF(w − w*) (one Fisher-vector
    product; second derivatives are not provided). ``ewc.predicted_kl()`` is ½(w − w*)ᵀF(w − w*).
    """

    def __init__(self, net: nn.Module, fisher: FisherMatrix, anchor_params: Any = None, strength: float = 1.0) -> None:
        super().__init__()
        if not isinstance(fisher, FisherMatrix):
            raise ParameterError(
                f"fisher must be a fisherkl FisherMatrix (e.g. fisherkl.nn.fisher(...)), got {type(fisher).__name__}"
            )
        if not (strength >= 0 and float(strength) < float("inf")):
            raise ParameterError(f"strength must be a finite number >= 0, got {strength}")
        fisher = align(fisher, net)
        self._net = [net]  # a list, so that the network is not a submodule
        self.fisher = fisher
        self.strength = float(strength)
        self.register_buffer("anchor", _flat_anchor(net, anchor_params))

    @classmethod
    def from_data(
        cls,
        net: nn.Module,
        data: Any,
        head: str | Head | Any = "categorical",
        representation: str = "diag",
        strength: float = 1.0,
        kind: str = "exact",
        **fisher_kwargs: Any,
    ) -> EWC:
        """EWC anchored at ``net``'s current parameters with the Fisher of ``net`` on ``data``."""
        fm = nn_fisher(net, data, head, kind, representation, **fisher_kwargs)
        return cls(net, fm, None, strength)

    @property
    def net(self) -> nn.Module:
        return self._net[0]

    def displacement(self) -> Tensor:
        """w − w* ``[p]``, differentiable in the network's parameters."""
        params = [p for p in self.net.parameters() if p.requires_grad]
        return torch.cat([p.reshape(-1) for p in params]) - self.anchor

    def forward(self) -> Tensor:
        """½·λ·(w − w*)ᵀF(w − w*)."""
        return _Quadratic.apply(self.displacement(), self.fisher, self.strength)

    def predicted_kl(self) -> Tensor:
        """½(w − w*)ᵀF(w − w*): the predicted mean KL from the anchored model to the current one."""
        with torch.no_grad():
            return 0.5 * self.fisher.quad(self.displacement())

    # the Fisher is not an nn.Module: save it as extra state
    def get_extra_state(self) -> dict[str, Any]:
        return {"fisher": self.fisher.state_dict(), "strength": self.strength}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        fm = from_state_dict(state["fisher"])
        if fm.layout != self.fisher.layout:
            raise ParameterError("EWC.load_state_dict: the saved Fisher is over a different parameter layout")
        self.fisher = fm
        self.strength = float(state["strength"])

    def extra_repr(self) -> str:
        return f"fisher={type(self.fisher).__name__}(p={self.fisher.p}), strength={self.strength:g}"


def merge_fishers(
    fishers: Sequence[FisherMatrix], weights: Sequence[float] | None = None, *, kronecker: str = "exact"
) -> FisherMatrix:
    """Σᵢ wᵢ Fᵢ over the same parameters (default weights 1: the Fisher of all tasks' data together,
    when each Fᵢ is a mean over its task and wᵢ is its share of examples, weights summing to 1).

    Dense, diagonal and block-diagonal Fishers merge into one of their kind. KFAC Fishers:
    ``kronecker="exact"`` (default) keeps the exact sum (a :class:`~fisherkl.matrix.SumMatrix` of
    Kronecker terms — products and quadratic forms are exact, as EWC needs); ``kronecker="factors"``
    approximates Σwᵢ Gᵢ⊗Aᵢ by (Σwᵢ Gᵢ) ⊗ (Σwᵢ Aᵢ / Σwᵢ), one KFAC again (cheap solves; exact only when
    the tasks' A factors agree).
    """
    fishers = list(fishers)
    if not fishers:
        raise ParameterError("merge_fishers: give at least one Fisher matrix")
    w = [1.0] * len(fishers) if weights is None else [float(x) for x in weights]
    if len(w) != len(fishers):
        raise ParameterError(f"merge_fishers: {len(fishers)} Fishers but {len(w)} weights")
    if any(not (x >= 0) for x in w):
        raise ParameterError(f"merge_fishers: weights must be >= 0, got {w}")
    if kronecker not in ("exact", "factors"):
        raise ParameterError(f"kronecker must be 'exact' or 'factors', got {kronecker!r}")
    layout = fishers[0].layout
    if any(f.layout != layout for f in fishers):
        raise ParameterError("merge_fishers: the Fishers are over different parameter layouts")
    if kronecker == "factors" and all(isinstance(f, KFAC) for f in fishers):
        total = sum(w)
        if total <= 0:
            raise ParameterError("merge_fishers: the weights sum to 0")
        ks: list[KFAC] = fishers  # type: ignore[assignment]
        blocks = []
        for parts in zip(*(k.blocks for k in ks)):
            b0 = parts[0]
            a = sum(wi * b.tensors["A"] for wi, b in zip(w, parts)) / total
            g = sum(wi * b.tensors["G"] for wi, b in zip(w, parts))
            blocks.append(replace(b0, tensors={"A": a, "G": g}))
        rest = sum(wi * k.rest_diag for wi, k in zip(w, ks))
        return KFAC(blocks, ks[0].rest, rest, layout)  # type: ignore[arg-type]
    terms = [f * wi for f, wi in zip(fishers, w)]
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


__all__ = ["EWC", "merge_fishers"]
