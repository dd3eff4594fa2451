"""What will this change cost? The predicted KL ½δᵀFδ of any change δ of a network, beside the exact KL.

    KL[p_w ‖ p_{w+δ}] = ½ δᵀ F δ + c₃ + …      (mean over the data's inputs; F the network Fisher)

A change is a δ (flat ``[p]``, a list or a dict of parameter-shaped tensors), another network of the same
architecture (δ = its parameters − ``net``'s), or a callable that edits a copy of ``net`` in place (or
returns the edited network): pruning, quantisation, merging, a fine-tuning or LoRA delta.
:func:`predict_kl` gives ½δᵀF̃δ for each representation F̃, per layer (½δ_lᵀF̃_llδ_l with δ_l the part of δ
in layer l; they add up to the total only when F̃ has no cross-layer terms), the exact mean KL
(:func:`fisherkl.nn.kl`), their ratio, and whether the step is still in the quadratic regime: the exact
Fisher's own quadratic term c₂ = ½δᵀFδ and the cubic term c₃ from directional derivatives of the exact KL
(:mod:`fisherkl.nn.path`), and a validity radius t* along δ (the quadratic form holds to ``rtol`` for tδ,
t ≤ t*).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParameterError
from ..matrix import EKFAC, KFAC, BlockDiagonal, Dense, Diagonal, FisherMatrix, Implicit, LowRank
from ..matrix.layout import ParamLayout
from .batch import Adapter
from .fisher import REPRESENTATIONS
from .fisher import fisher as nn_fisher
from .heads import Head, get_head
from .kl import kl as nn_kl
from .params import align, layout_of, parameters_vector, perturbed
from .path import PathTerms, exact_radius, path_terms

FisherSpec = FisherMatrix | Mapping[str, FisherMatrix] | str | Sequence[str] | None

_NAMES = {Dense: "dense", Diagonal: "diag", BlockDiagonal: "block", KFAC: "kfac", EKFAC: "ekfac"}
_NAMES.update({Implicit: "implicit", LowRank: "lowrank"})


def representation_name(f: FisherMatrix) -> str:
    """'dense', 'diag', 'block', 'kfac', 'ekfac', 'implicit', 'lowrank', or the class name."""
    return _NAMES.get(type(f), type(f).__name__)


def layer_groups(layout: ParamLayout) -> dict[str, list[str]]:
    """Parameters grouped by the module that owns them (the name up to its last dot), in layout order."""
    out: dict[str, list[str]] = {}
    for n in layout.names:
        out.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(n)
    return out


def select_params(net: nn.Module, params: Any = None, what: str = "params") -> list[str]:
    """Names of the parameters (that require grad) a change may touch: ``None`` → every weight with two or
    more dimensions (Linear/Conv/Embedding/attention weights, not biases or norms); a sequence of names; or a
    callable ``(name, parameter) → bool``."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if params is None:
        names = [n for n, p in named if p.ndim >= 2]
    elif callable(params):
        names = [n for n, p in named if params(n, p)]
    else:
        if isinstance(params, str):
            params = [params]
        known = {n for n, _ in named}
        unknown = [n for n in params if n not in known]
        if unknown:
            raise ParameterError(f"{what}: unknown parameter names {unknown}; parameters: {sorted(known)}")
        wanted = set(params)
        names = [n for n, _ in named if n in wanted]
    if not names:
        raise ParameterError(f"{what}: no parameters selected")
    return names


def resolve_change(net: nn.Module, change: Any) -> nn.Module:
    """The changed network: ``change`` another network with the same parameters (names and shapes), a
    callable editing a deep copy of ``net`` (it may return the edited network), or a δ (flat, list, dict)."""
    layout = layout_of(net)
    if isinstance(change, nn.Module):
        other = change
    elif callable(change):
        other = copy.deepcopy(net)
        ret = change(other)
        if isinstance(ret, nn.Module):
            other = ret
    else:
        return perturbed(net, change)
    mine = layout_of(other)
    if mine.shapes != layout.shapes:
        raise ParameterError(
            "change: the changed network's parameters (that require grad) differ from the network's: "
            f"{list(zip(mine.names, mine.shapes))[:4]}… vs {list(zip(layout.names, layout.shapes))[:4]}…"
        )
    return other


def resolve_fishers(
    net: nn.Module,
    fisher: FisherSpec,
    data: Any,
    head: Head,
    kind: str,
    fisher_kwargs: Mapping[str, Any],
) -> dict[str, FisherMatrix]:
    """Named Fisher matrices over ``net``: given ones (aligned to ``net`` by identity or name), or computed on
    ``data`` for representation names."""
    if fisher is None:
        return {}
    if isinstance(fisher, FisherMatrix):
        return {representation_name(fisher): align(fisher, net)}
    if isinstance(fisher, Mapping):
        out = {}
        for k, v in fisher.items():
            if not isinstance(v, FisherMatrix):
                raise ParameterError(f"fisher[{k!r}] must be a FisherMatrix, got {type(v).__name__}")
            out[str(k)] = align(v, net, f"fisher[{k!r}]")
        return out
    names = [fisher] if isinstance(fisher, str) else list(fisher)
    for r in names:
        if r not in REPRESENTATIONS:
            raise ParameterError(f"fisher: unknown representation {r!r}; choose from {', '.join(REPRESENTATIONS)}")
    if names and data is None:
        raise ParameterError("fisher: representation names need data to compute the Fisher on")
    return {r: nn_fisher(net, data, head, kind, r, **fisher_kwargs) for r in names}


def group_quads(f: FisherMatrix, delta: Tensor, groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """½ δ_gᵀ F δ_g for each group g of parameter names (δ_g: δ with every other entry zero), one batched product."""
    cols = torch.zeros(f.p, len(groups), dtype=f.dtype, device=f.device)
    d = delta.to(dtype=f.dtype, device=f.device)
    for j, names in enumerate(groups.values()):
        idx = f.layout.indices(list(names), f.device)
        cols[idx, j] = d[idx]
    q = f.quad(cols)
    return {g: 0.5 * float(v) for g, v in zip(groups, q)}


@dataclass
class ChangeCost:
    """The cost of one change δ in nats of mean KL (see :func:`predict_kl`).

    ``predicted[r]`` = ½δᵀF_rδ and ``per_layer[r][g]`` = ½δ_gᵀF_rδ_g; ``exact`` = mean KL[p_w ‖ p_{w+δ}] on the
    data; ``terms`` the exact Fisher's quadratic term c2 = ½δᵀFδ and the cubic term c3 along δ; ``radius``
    the validity radius t* in units of δ (the quadratic form holds to ``rtol`` up to t*·δ).
    """

    norm: float
    predicted: dict[str, float]
    per_layer: dict[str, dict[str, float]]
    groups: dict[str, list[str]]
    exact: float | None = None
    exact_per_layer: dict[str, float] | None = None
    terms: PathTerms | None = None
    radius: float | None = None
    radius_method: str | None = None
    rtol: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> dict[str, float]:
        """predicted / exact per representation (nan without an exact KL, or when it is 0)."""
        if self.exact is None or self.exact <= 0:
            return {r: math.nan for r in self.predicted}
        return {r: v / self.exact for r, v in self.predicted.items()}

    @property
    def quadratic_regime(self) -> bool | None:
        """Is δ inside the quadratic regime? With the exact KL: |c2 − KL| ≤ rtol·KL (the exact Fisher's
        prediction holds); without it: the cubic term's relative size |c3|/c2 ≤ rtol; None if neither is known."""
        if self.terms is not None and self.exact is not None and self.exact > 0:
            return abs(self.terms.c2 - self.exact) <= self.rtol * self.exact
        if self.terms is not None:
            return self.terms.cubic_error <= self.rtol
        return None

    def records(self) -> dict[str, Any]:
        """Plain numbers for JSON."""
        return {
            "norm": self.norm,
            "predicted": dict(self.predicted),
            "per_layer": {r: dict(v) for r, v in self.per_layer.items()},
            "exact": self.exact,
            "exact_per_layer": None if self.exact_per_layer is None else dict(self.exact_per_layer),
            "ratio": self.ratio,
            "c2": None if self.terms is None else self.terms.c2,
            "c3": None if self.terms is None else self.terms.c3,
            "radius": self.radius,
            "radius_method": self.radius_method,
            "quadratic_regime": self.quadratic_regime,
            "rtol": self.rtol,
        }

    def to_text(self) -> str:
        reps = list(self.predicted)
        lines = [f"Change |δ| = {self.norm:.4g}: predicted KL ½δᵀFδ per representation (nats)"]
        head = f"{'layer':<28}" + "".join(f"{r:>12}" for r in reps)
        if self.exact_per_layer is not None:
            head += f"{'exact alone':>13}"
        lines.append(head)
        for g in self.groups:
            row = f"{g[:28]:<28}" + "".join(f"{self.per_layer[r][g]:>12.4g}" for r in reps)
            if self.exact_per_layer is not None:
                row += f"{self.exact_per_layer[g]:>13.4g}"
            lines.append(row)
        lines.append(f"{'total':<28}" + "".join(f"{self.predicted[r]:>12.4g}" for r in reps))
        if self.exact is not None:
            lines.append(f"{'exact KL':<28}{self.exact:>12.4g}")
            lines.append(f"{'predicted / exact':<28}" + "".join(f"{v:>12.4g}" for v in self.ratio.values()))
        if self.terms is not None:
            lines.append(
                f"exact Fisher along δ: c2 = ½δᵀFδ = {self.terms.c2:.4g}, cubic term c3 = {self.terms.c3:.4g} "
                f"(|c3|/c2 = {self.terms.cubic_error:.3g})"
            )
        if self.radius is not None:
            lines.append(f"validity radius ({self.radius_method}, rtol {self.rtol:g}): t* = {self.radius:.4g} × δ")
        regime = self.quadratic_regime
        if regime is not None:
            lines.append(
                "inside the quadratic regime" if regime else "OUTSIDE the quadratic regime: ½δᵀFδ is not the KL"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def predict_kl(
    net: nn.Module,
    change: Any,
    fisher: FisherSpec = "kfac",
    data: Any = None,
    head: str | Head | Any = "categorical",
    *,
    kind: str = "exact",
    exact: bool = True,
    per_layer_exact: bool = False,
    cubic: bool = True,
    radius: str | None = "cubic",
    rtol: float = 0.1,
    groups: Mapping[str, Sequence[str]] | None = None,
    dtype: torch.dtype | None = torch.float64,
    batch_size: int = 256,
    adapter: Adapter | None = None,
    positions: str = "sum",
    fisher_kwargs: Mapping[str, Any] | None = None,
) -> ChangeCost:
    """Predicted KL ½δᵀFδ of a change of ``net``, per representation and per layer, with the exact KL.

    Parameters
    ----------
    change:
        δ (flat ``[p]``, a list or a dict by name, over the parameters that require grad), another network
        with the same parameters, or a callable editing a copy of ``net`` (e.g. ``lambda m: prune_(m)``).
    fisher:
        A :class:`~fisherkl.matrix.FisherMatrix` over ``net``'s parameters, a dict name → matrix, or one or
        several representation names computed on ``data`` (``kind``, ``fisher_kwargs``).
    data, head, adapter, positions, batch_size:
        As for :func:`fisherkl.nn.kl`; ``data`` is needed for the exact KL, the cubic term and the radius.
    exact, per_layer_exact:
        Compute the exact mean KL of the whole change (one pass), and of each layer's part alone (one pass
        per layer).
    cubic:
        c₂ = ½δᵀFδ under the exact Fisher and the cubic term c₃ by autodiff of the exact KL along δ.
    radius:
        ``"cubic"``: t* = rtol·c₂/|c₃| (no extra pass); ``"exact"``: the largest t with
        |KL(tδ) − c₂t²| ≤ rtol·KL(tδ), by bisection on the exact KL (10–35 passes); None: none.
    groups:
        Parameter groups for the per-layer split (default: one per module).
    dtype:
        Work on copies in this dtype (float64 by default: the exact KL of a small change is not resolvable
        in float32). The change itself (a callable) runs on a copy in the network's own dtype.

    Returns a :class:`ChangeCost` (``print`` it; ``.ratio``; ``.quadratic_regime``; ``.records()``).
    """
    if not isinstance(net, nn.Module):
        raise ParameterError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if radius not in (None, "cubic", "exact"):
        raise ParameterError(f"radius must be 'cubic', 'exact' or None, got {radius!r}")
    if not 0 < rtol < 1:
        raise ParameterError(f"rtol must be in (0, 1), got {rtol}")
    needs_data = exact or per_layer_exact or cubic or radius is not None
    if needs_data and data is None:
        raise ParameterError(
            "data is needed for the exact KL, the cubic term and the radius (or pass exact=False, cubic=False, "
            "radius=None for the predicted KL only)"
        )
    h = get_head(head)
    changed = resolve_change(net, change)
    base, moved = net, changed
    if dtype is not None:
        base, moved = copy.deepcopy(net).to(dtype), copy.deepcopy(changed).to(dtype)
    layout = layout_of(base)
    delta = parameters_vector(moved) - parameters_vector(base)
    fkw = {"adapter": adapter, "positions": positions, "batch_size": batch_size, **dict(fisher_kwargs or {})}
    mats = resolve_fishers(base, fisher, data, h, kind, fkw)
    grp = {str(k): list(v) for k, v in (groups or layer_groups(layout)).items()}
    for names in grp.values():
        for n in names:
            layout.index(n)  # a clear error for an unknown name
    if groups is not None and sorted(n for v in grp.values() for n in v) != sorted(layout.names):
        raise ParameterError("groups must cover every parameter (that requires grad) exactly once")
    predicted = {r: 0.5 * float(m.quad(delta)) for r, m in mats.items()}
    per_layer = {r: group_quads(m, delta, grp) for r, m in mats.items()}
    kw = {"batch_size": batch_size, "adapter": adapter, "positions": positions}
    exact_kl = float(nn_kl(base, moved, data, h, **kw)) if exact else None
    exact_layers = None
    if per_layer_exact:
        exact_layers = {}
        for g, names in grp.items():
            part = torch.zeros_like(delta)
            idx = layout.indices(names, delta.device)
            part[idx] = delta[idx]
            exact_layers[g] = float(nn_kl(base, perturbed(base, part), data, h, **kw))
    terms = path_terms(base, delta, data, h, **kw) if (cubic or radius is not None) else None
    rad = None
    if radius == "cubic":
        assert terms is not None
        rad = terms.radius(rtol)
    elif radius == "exact":
        assert terms is not None
        rad = exact_radius(base, delta, data, h, terms.c2, rtol, kl_kwargs=kw)
    return ChangeCost(
        float(delta.norm()),
        predicted,
        per_layer,
        grp,
        exact_kl,
        exact_layers,
        terms if cubic or radius is not None else None,
        rad,
        radius,
        rtol,
    )


__all__ = [
    "ChangeCost",
    "layer_groups",
    "predict_kl",
    "representation_name",
    "resolve_change",
    "resolve_fishers",
    "select_params",
]
