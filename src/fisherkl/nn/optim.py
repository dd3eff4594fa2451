"""Natural-gradient descent with any Fisher representation, and a KL trust region.

:class:`NaturalGradient` is a ``torch.optim.Optimizer``. Each step preconditions the gradient with
the network's Fisher, x = (F + λI)⁻¹ g, and moves δ = −lr·x (per parameter group's lr, with
optional momentum on x). With ``max_kl`` set the step is shrunk so that its predicted KL
½ δᵀ F δ (the seeds' relation) is at most ``max_kl`` — a KL trust region.

How the optimiser sees data
---------------------------
The Fisher of a network needs inputs (not the loss). Give them in one of three ways:

* ``opt.step(fisher_data=xb)`` — the current minibatch (x, or (x, y)); used when a refresh is due
  (every ``update_every`` steps, and at the first step);
* ``NaturalGradient(..., fisher_data=loader_or_tensors)`` — a fixed data set used at every refresh;
* ``opt.update_fisher(data)`` — refresh now, whenever you like.

A refresh computes ``fisherkl.nn.fisher(net, data, head, kind, representation)`` and folds it into
a running average with weight ``ema`` (KFAC: the Kronecker factors A and G are averaged — the
statistics; EKFAC: the old matrix's diagonal in the new eigenbasis is averaged with the new scales;
dense / diag / block: the matrices). ``ema=0`` keeps only the newest Fisher.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError, ParameterError
from ..matrix import EKFAC, KFAC, BlockDiagonal, Dense, Diagonal, FisherMatrix, from_state_dict
from .fisher import REPRESENTATIONS
from .fisher import fisher as nn_fisher
from .heads import Head
from .params import layout_of

FisherSource = str | FisherMatrix | Callable[[Any], FisherMatrix]


def average_fishers(old: FisherMatrix, new: FisherMatrix, ema: float) -> FisherMatrix:
    """ema·old + (1 − ema)·new, keeping the representation's structure.

    KFAC averages its factors (A, G) and EKFAC projects the old matrix onto the new eigenbasis, as
    KFAC optimisers do; dense, diagonal and block-diagonal matrices average exactly. For any other
    pair (different types or layouts, low-rank, implicit) the new matrix is returned.
    """
    if ema == 0 or type(old) is not type(new) or old.layout != new.layout:
        return new
    a, b = float(ema), 1.0 - float(ema)
    if isinstance(old, (Dense, Diagonal)):
        return old * a + new * b
    if isinstance(old, BlockDiagonal):
        assert isinstance(new, BlockDiagonal)
        if old.groups != new.groups:
            return new
        return BlockDiagonal(new.groups, [a * x + b * y for x, y in zip(old.blocks, new.blocks)], new.layout)
    if isinstance(old, KFAC):
        assert isinstance(new, KFAC)
        blocks = [
            replace(nb, tensors={k: a * ob.tensors[k] + b * nb.tensors[k] for k in ("A", "G")})
            for ob, nb in zip(old.blocks, new.blocks)
        ]
        return KFAC(blocks, new.rest, a * old.rest_diag + b * new.rest_diag, new.layout)
    if isinstance(old, EKFAC):
        assert isinstance(new, EKFAC)
        blocks = []
        for ob, nb in zip(old.blocks, new.blocks):
            mg = nb.tensors["QG"].T @ ob.tensors["QG"]
            projected = (mg * mg) @ ob.tensors["S"]  # diag of the old block in the new basis
            if "QA" in nb.tensors:
                ma = nb.tensors["QA"].T @ ob.tensors["QA"]
                projected = projected @ (ma * ma).T
            blocks.append(replace(nb, tensors={**nb.tensors, "S": a * projected + b * nb.tensors["S"]}))
        return EKFAC(blocks, new.rest, a * old.rest_diag + b * new.rest_diag, new.layout)
    return new


class NaturalGradient(torch.optim.Optimizer):
    """Natural-gradient descent δ = −lr·(F + λI)⁻¹g with an optional KL trust region ½δᵀFδ ≤ max_kl.

    Parameters
    ----------
    params:
        The network's parameters (``net.parameters()`` or parameter groups with their own ``lr``,
        ``momentum``, ``weight_decay``). Together they must be exactly the parameters of ``net`` that
        require grad, since one Fisher couples them all.
    fisher:
        A representation name (``"kfac"`` default, ``"ekfac"``, ``"diag"``, ``"block"``, ``"dense"``,
        ``"lowrank"``, ``"implicit"``) computed by :func:`fisherkl.nn.fisher` on ``net``; or a callable
        ``data ↦ FisherMatrix`` (called at each refresh with the data given, or None); or a fixed
        :class:`~fisherkl.matrix.FisherMatrix` (never refreshed).
    lr:
        Step length along the natural gradient (LR schedulers change it as usual).
    damping:
        λ in (F + λI)⁻¹g (Tikhonov damping; the exact damped inverse for every structured
        representation). The trust region uses the undamped F.
    update_every:
        Refresh the Fisher every this many steps (and at the first step).
    ema:
        Weight of the running average across refreshes (0: use only the newest Fisher).
    max_kl:
        If set, each step is scaled by min(1, √(max_kl / ½δᵀFδ)), so its predicted KL is ≤ max_kl.
        With several parameter groups the smallest ``max_kl`` among them applies to the whole step.
    momentum, weight_decay:
        Heavy-ball momentum on the preconditioned direction; L2 weight decay added to g before
        preconditioning.
    net, head, kind, mc_samples:
        The network and head whose Fisher is taken when ``fisher`` is a name; ``kind="exact"``
        (default: C − 1 backward rows per batch for a categorical head), ``"mc"`` (``mc_samples``
        sampled labels; cheaper for many classes) or ``"empirical"``.
    fisher_data:
        Data used at every refresh when ``step`` is not given any.
    seed:
        Seeds the Monte Carlo labels of refresh i as ``seed + i``, so a resumed run is identical.
    fisher_kwargs:
        Passed to :func:`fisherkl.nn.fisher` (e.g. ``batch_size``, ``kfac_mode``).

    After each step, ``opt.last_step`` holds the predicted KL, the trust-region scale, and whether
    the Fisher was refreshed.
    """

    def __init__(
        self,
        params: Iterable[Any],
        fisher: FisherSource = "kfac",
        lr: float = 0.1,
        damping: float = 1e-3,
        update_every: int = 10,
        ema: float = 0.95,
        max_kl: float | None = None,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        net: nn.Module | None = None,
        head: str | Head | Any = "categorical",
        kind: str = "exact",
        mc_samples: int = 1,
        fisher_data: Any = None,
        seed: int = 0,
        fisher_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not lr >= 0:
            raise ParameterError(f"lr must be >= 0, got {lr}")
        if not (damping >= 0 and math.isfinite(damping)):
            raise ParameterError(f"damping must be finite and >= 0, got {damping}")
        if int(update_every) < 1:
            raise ParameterError(f"update_every must be >= 1, got {update_every}")
        if not 0 <= ema < 1:
            raise ParameterError(f"ema must be in [0, 1), got {ema}")
        if max_kl is not None and not (max_kl > 0 and math.isfinite(max_kl)):
            raise ParameterError(f"max_kl must be a positive finite number or None, got {max_kl}")
        if not 0 <= momentum < 1:
            raise ParameterError(f"momentum must be in [0, 1), got {momentum}")
        if isinstance(fisher, str) and fisher not in REPRESENTATIONS:
            raise ParameterError(f"fisher: unknown representation {fisher!r}; choose from {', '.join(REPRESENTATIONS)}")
        if isinstance(fisher, str) and net is None:
            raise ParameterError(
                f"NaturalGradient(fisher={fisher!r}) needs the network: pass net=... (the Fisher is taken on its "
                "outputs), or pass fisher as a callable data ↦ FisherMatrix"
            )
        defaults = dict(lr=lr, damping=damping, max_kl=max_kl, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.source = fisher
        self.net = net
        self.head = head
        self.kind = kind
        self.mc_samples = int(mc_samples)
        self.fisher_data = fisher_data
        self.update_every = int(update_every)
        self.ema = float(ema)
        self.seed = int(seed)
        self.fisher_kwargs = dict(fisher_kwargs or {})
        self.steps = 0
        self.refreshes = 0
        self.last_step: dict[str, Any] = {}
        self._fisher: FisherMatrix | None = fisher if isinstance(fisher, FisherMatrix) else None
        self._params = self._ordered_params()

    # --- parameters in the Fisher's flat order ------------------------------------------------------
    def _ordered_params(self) -> list[Tensor]:
        mine = [p for g in self.param_groups for p in g["params"]]
        if self.net is None:
            if self._fisher is not None and self._fisher.p != sum(p.numel() for p in mine):
                raise ParameterError(
                    f"the Fisher has p = {self._fisher.p} parameters but the optimiser was given "
                    f"{sum(p.numel() for p in mine)}"
                )
            return mine  # a callable / fixed Fisher: the given order (groups in order) is the flat order
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        ids = {id(p) for p in mine}
        if ids != {id(p) for _, p in named} or len(ids) != len(mine):
            raise ParameterError(
                "NaturalGradient: the optimiser's parameters must be exactly the network's parameters that require "
                "grad (one Fisher couples them all); freeze the others with requires_grad_(False)"
            )
        return [p for _, p in named]

    @property
    def fisher(self) -> FisherMatrix | None:
        """The current (averaged) Fisher matrix, or None before the first refresh."""
        return self._fisher

    def _compute(self, data: Any) -> FisherMatrix:
        if callable(self.source) and not isinstance(self.source, (str, FisherMatrix)):
            out = self.source(data)
            if not isinstance(out, FisherMatrix):
                raise ParameterError(f"fisher callable must return a FisherMatrix, got {type(out).__name__}")
            return out
        if data is None:
            raise ParameterError(
                "NaturalGradient: the Fisher is due for a refresh but no data was given; call "
                "opt.step(fisher_data=x_batch), opt.update_fisher(data), or pass fisher_data= to the constructor"
            )
        assert self.net is not None and isinstance(self.source, str)
        kwargs = {"mc_samples": self.mc_samples, **self.fisher_kwargs}
        return nn_fisher(self.net, data, self.head, self.kind, self.source, seed=self.seed + self.refreshes, **kwargs)

    def update_fisher(self, data: Any = None) -> FisherMatrix:
        """Compute the Fisher on ``data`` now and fold it into the running average; returns it."""
        if isinstance(self.source, FisherMatrix):
            return self.source
        new = self._compute(self.fisher_data if data is None else data)
        n = sum(p.numel() for p in self._params)
        if new.p != n:
            raise ParameterError(f"the Fisher has p = {new.p} parameters but the optimiser manages {n}")
        self.refreshes += 1
        if not bool(torch.isfinite(new.diag()).all()):
            # e.g. saturated softmax outputs in float32: keep the previous Fisher rather than poison the average
            if self._fisher is None:
                raise FisherKLError(
                    "NaturalGradient: the Fisher contains NaN/inf (saturated outputs or diverged parameters); "
                    "lower lr, set max_kl, or train in float64"
                )
            warnings.warn(
                "NaturalGradient: the refreshed Fisher contains NaN/inf (saturated outputs or diverged parameters); "
                "keeping the previous one. Lower lr or set max_kl.",
                stacklevel=3,
            )
            return self._fisher
        self._fisher = new if self._fisher is None else average_fishers(self._fisher, new, self.ema)
        return self._fisher

    # --- the step ---------------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None, *, fisher_data: Any = None) -> Any:  # type: ignore[override]
        """One natural-gradient step (refreshing the Fisher when due). Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        refreshed = False
        due = self._fisher is None or (self.steps % self.update_every == 0)
        if due and not isinstance(self.source, FisherMatrix):
            self.update_fisher(fisher_data)
            refreshed = True
        fm = self._fisher
        assert fm is not None
        with torch.no_grad():
            self._apply(fm, refreshed)
        self.steps += 1
        return loss

    def _apply(self, fm: FisherMatrix, refreshed: bool) -> None:
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        grads = []
        for p in self._params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            wd = group_of[id(p)]["weight_decay"]
            grads.append((g + wd * p if wd else g).reshape(-1))
        flat = torch.cat(grads).to(fm.dtype)
        if not bool(torch.isfinite(flat).all()):
            raise FisherKLError("NaturalGradient: the gradient contains NaN/inf (has training diverged?)")
        # one damping for the whole Fisher: the first group's (damping couples all parameters)
        damping = float(self.param_groups[0]["damping"])
        x = self._solver(fm, damping)(flat)
        steps, at = [], 0
        for p in self._params:
            n = p.numel()
            group = group_of[id(p)]
            d = x[at : at + n].reshape(p.shape).to(p.dtype)
            mu = group["momentum"]
            if mu:
                state = self.state[p]
                buf = state.get("momentum_buffer")
                buf = d.clone() if buf is None else buf.mul_(mu).add_(d)
                state["momentum_buffer"] = buf
                d = buf
            steps.append((-group["lr"] * d).reshape(-1))
            at += n
        delta = torch.cat(steps)
        predicted = 0.5 * float(fm.quad(delta.to(fm.dtype)))
        caps = [g["max_kl"] for g in self.param_groups if g["max_kl"] is not None]
        scale = 1.0
        if caps and predicted > min(caps):
            scale = math.sqrt(min(caps) / predicted)
        at = 0
        for p in self._params:
            n = p.numel()
            p.add_(delta[at : at + n].reshape(p.shape), alpha=scale)
            at += n
        self.last_step = {
            "predicted_kl": predicted * scale * scale,
            "unclipped_kl": predicted,
            "scale": scale,
            "refreshed": refreshed,
            "step": self.steps,
        }

    def _solver(self, fm: FisherMatrix, damping: float) -> Callable[[Tensor], Tensor]:
        """(F + λI)⁻¹·, with the Cholesky factors of dense / block matrices kept until the next refresh."""
        cached = getattr(self, "_solver_cache", None)
        if cached is not None and cached[0] is fm and cached[1] == damping:
            return cached[2]
        fn: Callable[[Tensor], Tensor]
        if isinstance(fm, (Dense, BlockDiagonal)):
            mats = [fm.matrix] if isinstance(fm, Dense) else fm.blocks
            index = [None] if isinstance(fm, Dense) else [fm.layout.indices(g, fm.device) for g in fm.groups]
            chols = []
            for m in mats:
                eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
                chol, info = torch.linalg.cholesky_ex(m + damping * eye)
                if int(info) != 0:
                    raise FisherKLError(f"NaturalGradient: F + {damping:g}·I is not positive definite; raise damping")
                chols.append(chol)

            def fn(b: Tensor) -> Tensor:
                out = torch.empty_like(b)
                for idx, chol in zip(index, chols):
                    if idx is None:
                        return torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
                    out[idx] = torch.cholesky_solve(b[idx].unsqueeze(-1), chol).squeeze(-1)
                return out

        else:

            def fn(b: Tensor) -> Tensor:
                x = fm.solve(b, damping)
                assert isinstance(x, Tensor)
                return x

        self._solver_cache = (fm, damping, fn)
        return fn

    # --- persistence ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        fstate = None
        if self._fisher is not None and not isinstance(self.source, FisherMatrix):
            try:
                fstate = self._fisher.state_dict()
            except FisherKLError:
                warnings.warn(
                    f"NaturalGradient.state_dict: a {type(self._fisher).__name__} Fisher cannot be saved; it will be "
                    "recomputed at the next step after loading (training will not resume bit-for-bit)",
                    stacklevel=2,
                )
        sd["natural_gradient"] = {
            "steps": self.steps,
            "refreshes": self.refreshes,
            "seed": self.seed,
            "fisher": fstate,
            "last_step": dict(self.last_step),
        }
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("natural_gradient", None)
        super().load_state_dict(sd)
        if extra is None:
            return
        self.steps = int(extra["steps"])
        self.refreshes = int(extra["refreshes"])
        self.seed = int(extra["seed"])
        self.last_step = dict(extra.get("last_step", {}))
        if extra.get("fisher") is not None:
            fm = from_state_dict(extra["fisher"])
            if self.net is not None and fm.layout != layout_of(self.net):
                raise ParameterError("load_state_dict: the saved Fisher is over a different network (layout differs)")
            self._fisher = fm
        elif not isinstance(self.source, FisherMatrix):
            self._fisher = None

    def __repr__(self) -> str:
        src = self.source if isinstance(self.source, str) else type(self.source).__name__
        g = self.param_groups[0]
        return (
            f"NaturalGradient(fisher={src}, lr={g['lr']}, damping={g['damping']}, update_every={self.update_every}, "
            f"ema={self.ema}, max_kl={g['max_kl']})"
        )


__all__ = ["NaturalGradient", "average_fishers"]
