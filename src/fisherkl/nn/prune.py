"""Pruning by predicted KL: magnitude, Optimal Brain Damage and Optimal Brain Surgeon, with the exact KL beside.

Removing the weights Q changes the network by δ (δ_Q = −w_Q), at a predicted cost ½δᵀFδ nats of mean KL.

* ``magnitude``: remove the smallest |w_q|; no update.
* ``obd`` (LeCun et al. 1990): saliency ½ F_qq w_q² (F's diagonal); no update.
* ``obs`` (Hassibi & Stork 1993; WoodFisher, Singh & Alistarh 2020): saliency w_q² / (2 [(F + λI)⁻¹]_qq) and
  the compensating update of the remaining weights that minimises ½δᵀ(F + λI)δ for the whole set removed
  (:func:`fisherkl.nn.obs.obs_step`: block by block, exact per block). In ``rounds`` steps of growing
  sparsity the saliencies are re-read from the updated weights, and every step solves again for the union
  of the weights removed so far, from the original weights.

``scope="global"`` ranks all candidate weights together (the saliencies are in nats, comparable across
layers); ``scope="layer"`` gives every candidate parameter the same sparsity.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParameterError
from ..matrix import FisherMatrix
from .batch import Adapter
from .blocks import block_structure, inverse_diagonal
from .change import select_params
from .heads import Head
from .kl import kl as nn_kl
from .obs import obs_saliency, obs_step
from .params import align, layout_of, parameters_vector, perturbed

METHODS = ("obs", "obd", "magnitude")


@dataclass
class PruneResult:
    """A pruned copy of the network and what it cost.

    ``masks[name]`` is True where a weight is kept; ``delta`` the flat change ``[p]`` (removed weights and,
    for OBS, the compensating update); ``predicted`` = ½δᵀFδ under the Fisher used (None without one);
    ``exact`` the mean KL[p_w ‖ p_pruned] on the data given (None without data).
    """

    net: nn.Module
    masks: dict[str, Tensor]
    delta: Tensor
    predicted: float | None
    exact: float | None
    sparsity: float
    layer_sparsity: dict[str, float]
    method: str
    scope: str
    damping: float

    def records(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "scope": self.scope,
            "sparsity": self.sparsity,
            "layer_sparsity": dict(self.layer_sparsity),
            "predicted": self.predicted,
            "exact": self.exact,
            "damping": self.damping,
        }


def default_damping(f: FisherMatrix, rel: float = 1e-3) -> float:
    """``rel`` × the mean of F's diagonal (tr F / p)."""
    return rel * float(f.trace()) / f.p


def prune(
    net: nn.Module,
    fisher: FisherMatrix | None,
    sparsity: float,
    method: str = "obs",
    scope: str = "global",
    *,
    params: Any = None,
    damping: float | None = None,
    rounds: int = 4,
    data: Any = None,
    head: str | Head | Any = "categorical",
    batch_size: int = 256,
    adapter: Adapter | None = None,
    positions: str = "sum",
    direct_max: int = 4096,
) -> PruneResult:
    """Zero a fraction ``sparsity`` of ``net``'s candidate weights, chosen by ``method`` (see the module doc).

    Parameters
    ----------
    fisher:
        A Fisher matrix over ``net``'s parameters (from :func:`fisherkl.nn.fisher`); ``obs`` needs a
        block-structured one (``dense``, ``diag``, ``block``, ``kfac``, ``ekfac``; others become dense when
        p × p fits). ``None`` only for ``magnitude`` (then nothing is predicted).
    sparsity:
        In [0, 1]: the fraction of the candidate weights removed (per parameter with ``scope="layer"``).
    params:
        The candidates: None → every weight with ≥ 2 dimensions; names; or ``(name, p) → bool``.
    damping:
        λ of OBS (default 1e-3 · tr F / p); also the λ of its saliencies.
    rounds:
        OBS steps of growing sparsity (sparsity·r/rounds, r = 1..rounds).
    data, head, adapter, positions, batch_size:
        With ``data``, the exact mean KL of the pruned network (:func:`fisherkl.nn.kl`).
    direct_max:
        OBS blocks up to this many weights are solved by Cholesky, larger ones by preconditioned CG.
    """
    if method not in METHODS:
        raise ParameterError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if scope not in ("global", "layer"):
        raise ParameterError(f"scope must be 'global' or 'layer', got {scope!r}")
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity <= 1):
        raise ParameterError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    if int(rounds) < 1:
        raise ParameterError(f"rounds must be >= 1, got {rounds}")
    if fisher is None and method != "magnitude":
        raise ParameterError(f"method {method!r} needs a Fisher matrix (fisher=None only for 'magnitude')")
    if fisher is not None and not isinstance(fisher, FisherMatrix):
        raise ParameterError(f"fisher must be a FisherMatrix or None, got {type(fisher).__name__}")
    layout = layout_of(net)
    f = None if fisher is None else align(fisher, net)
    lam = 0.0
    if f is not None:
        lam = default_damping(f) if damping is None else float(damping)
        if lam < 0 or not math.isfinite(lam):
            raise ParameterError(f"damping must be finite and >= 0, got {damping}")
    names = select_params(net, params)
    work_dtype = f.dtype if f is not None else parameters_vector(net).dtype
    w0 = parameters_vector(net).to(work_dtype)
    dev = w0.device
    groups = [layout.indices([n], dev) for n in names] if scope == "layer" else [layout.indices(names, dev)]
    targets = [round(sparsity * len(g)) for g in groups]
    removed = torch.zeros_like(w0, dtype=torch.bool)

    st = block_structure(f) if (f is not None and method == "obs") else None
    if method == "obs":
        assert f is not None
        inv_d = inverse_diagonal(f, lam)
    elif method == "obd":
        assert f is not None
        fd = f.diag()
        assert isinstance(fd, Tensor)
    w = w0.clone()
    steps = int(rounds) if method == "obs" else 1
    for r in range(1, steps + 1):
        if method == "obs":
            score = obs_saliency(w, inv_d)
        elif method == "obd":
            score = 0.5 * fd * w * w
        else:
            score = w.abs()
        for g, total in zip(groups, targets):
            want = (total * r) // steps if steps > 1 else total
            have = int(removed[g].sum())
            if want <= have:
                continue
            s = score[g].clone()
            s[removed[g]] = math.inf
            pick = torch.topk(s, want - have, largest=False).indices
            removed[g[pick]] = True
        if method == "obs":
            assert st is not None
            w = w0 + obs_step(st, w0, removed, lam, direct_max=direct_max)
        else:
            w = torch.where(removed, torch.zeros_like(w0), w0)
    delta = w - w0
    delta[removed] = -w0[removed]  # exact zeros
    pruned = perturbed(net, delta)
    with torch.no_grad():  # w + (−w) is exactly 0 in the network's dtype too
        for n, p in pruned.named_parameters():
            if n in names:
                p.masked_fill_(removed[layout.slice(n)].reshape(p.shape), 0.0)
    masks = {n: ~removed[layout.slice(n)].reshape(layout.shapes[layout.index(n)]) for n in names}
    predicted = None if f is None else 0.5 * float(f.quad(delta))
    exact = None
    if data is not None:
        exact = float(nn_kl(net, pruned, data, head, batch_size=batch_size, adapter=adapter, positions=positions))
    n_cand = sum(m.numel() for m in masks.values())
    n_removed = sum(int((~m).sum()) for m in masks.values())
    layer_sp = {n: float((~m).sum()) / m.numel() for n, m in masks.items()}
    return PruneResult(pruned, masks, delta, predicted, exact, n_removed / max(n_cand, 1), layer_sp, method, scope, lam)


def pruning_curve(
    net: nn.Module,
    fisher: FisherMatrix | None,
    sparsities: Sequence[float],
    method: str = "obs",
    scope: str = "global",
    **kwargs: Any,
) -> list[PruneResult]:
    """:func:`prune` at each sparsity (same arguments); e.g. the predicted and exact KL against sparsity."""
    return [prune(net, fisher, s, method, scope, **kwargs) for s in sparsities]


def masked_copy(net: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """A copy of ``net`` with the weights where ``masks[name]`` is False set to zero (no update)."""
    out = copy.deepcopy(net)
    named = dict(out.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            if n not in named or tuple(named[n].shape) != tuple(m.shape):
                raise ParameterError(f"masks[{n!r}]: no parameter of that name and shape {tuple(m.shape)}")
            named[n].mul_(m.to(named[n].dtype))
    return out


__all__ = ["METHODS", "PruneResult", "masked_copy", "prune", "pruning_curve"]
