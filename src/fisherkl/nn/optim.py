"""Natural-gradient descent with any Fisher representation, and a KL trust region that holds.

:class:`NaturalGradient` is a ``torch.optim.Optimizer``. Each step preconditions the gradient with
the network's Fisher, x = (F + λI)⁻¹ g, and proposes δ = −lr·x (per parameter group's lr, with
optional momentum on x). With ``max_kl`` set, the step is a **KL trust region measured exactly**:
whatever representation chose the direction, the step's length is set by the exact Fisher of the
current batch (½ δᵀ F_exact δ by one forward pass carrying a tangent) and confirmed by the exact mean
KL of the batch (forward passes only), backtracking as TRPO does until KL ≤ ``max_kl``
(:mod:`fisherkl.nn.trust_region`).

How the optimiser sees data
---------------------------
The Fisher of a network needs inputs (not the loss). Give them in one of three ways:

* ``opt.step(fisher_data=xb)`` — the current minibatch (x, or (x, y)); used when a refresh is due
  (every ``update_every`` steps, and at the first step) and, with ``max_kl`` or ``fisher="implicit"``,
  at every step to measure the step (the trust region) or to run conjugate gradients;
* ``NaturalGradient(..., fisher_data=loader_or_tensors)`` — a fixed data set used when a step gives none;
* ``opt.update_fisher(data)`` — refresh now, whenever you like.

A refresh computes ``fisherkl.nn.fisher(net, data, head, kind, representation)`` and folds it into
a running average with weight ``ema`` (KFAC: the Kronecker factors A and G are averaged — the
statistics; EKFAC: the old matrix's diagonal in the new eigenbasis is averaged with the new scales;
dense / diag / block: the matrices). ``ema=0`` keeps only the newest Fisher. ``fisher="implicit"``
keeps no matrix: each step solves (F + λI)x = g on its batch by conjugate gradients with the exact
Fisher-vector product (TRPO's recipe).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import FisherKLError, ParameterError
from ..matrix import BlockDiagonal, Dense, FisherMatrix, from_state_dict
from ..matrix.layout import ParamLayout
from .averaging import average_fishers
from .fisher import REPRESENTATIONS
from .fisher import fisher as nn_fisher
from .heads import Head
from .trust_region import TARGET, BatchGeometry, LineSearchResult, conjugate_gradient, kl_line_search

FisherSource = str | FisherMatrix | Callable[[Any], FisherMatrix]
LINE_SEARCHES = ("kl", "kl+loss", None)


class NaturalGradient(torch.optim.Optimizer):
    """Natural-gradient descent δ = −lr·(F + λI)⁻¹g with an optional KL trust region: exact KL ≤ max_kl.

    Parameters
    ----------
    params:
        The parameters to optimise (``net.parameters()`` or parameter groups with their own ``lr``,
        ``momentum``, ``weight_decay``). Frozen parameters (``requires_grad=False``) among them are
        skipped, as torch.optim does. They may be a subset of the network's trainable parameters: the
        others are then held fixed, and the Fisher is over the optimised ones only (one Fisher couples
        them all).
    fisher:
        A representation name (``"kfac"`` default, ``"ekfac"``, ``"diag"``, ``"block"``, ``"dense"``,
        ``"lowrank"``) computed by :func:`fisherkl.nn.fisher` on ``net``; ``"implicit"``: no matrix —
        each step runs conjugate gradients on its batch with the exact Fisher-vector product
        (``cg_iters``, ``cg_tol``; TRPO / NPG without any approximation); or a callable
        ``data ↦ FisherMatrix`` (called at each refresh with the data given, or None); or a fixed
        :class:`~fisherkl.matrix.FisherMatrix` computed elsewhere (never refreshed; over the optimised
        parameters in ``net``'s order).
    lr:
        Step length along the natural gradient (LR schedulers change it as usual). With ``max_kl``, a
        large ``lr`` makes every step go to the trust-region boundary, as TRPO's steps do.
    damping:
        λ in (F + λI)⁻¹g (Tikhonov damping; the exact damped inverse for every structured
        representation, TRPO's ``cg_damping`` for ``"implicit"``).
    update_every:
        Refresh the Fisher every this many steps (and at the first step).
    ema:
        Weight of the running average across refreshes (0: use only the newest Fisher).
    max_kl:
        The trust region: the accepted step's **exact** mean KL on the step's batch,
        mean KL[p(y|x, w) ‖ p(y|x, w + δ)], is at most ``max_kl``. The step is first scaled by
        min(1, √(max_kl / ½δᵀF_exactδ)) with the exact Fisher of the batch, then ``line_search``
        confirms it (a shortened step is tried first where the exact quadratic predicts 0.95·max_kl).
        Needs ``net`` and a batch. With several parameter groups the smallest ``max_kl`` among them
        applies to the whole step.
    line_search:
        ``"kl"`` (default): backtrack on the exact KL of the batch (forward passes only) until
        KL ≤ max_kl, aiming at 0.95·max_kl and accepting from 0.8·max_kl when the step had to be
        shortened (else the largest feasible scale tried); ``"kl+loss"``: also require
        the loss to decrease (the loss comes from ``step(loss=fn)``, a forward-only callable, or else from
        the closure); ``None``: only the exact quadratic scaling (the KL is measured and reported, not
        enforced). A step for which no scale is acceptable within ``max_backtracks`` further tries is
        rejected (the parameters stay), as in TRPO; ``opt.last_step["accepted"]`` says so.
    momentum, weight_decay:
        Heavy-ball momentum on the preconditioned direction; L2 weight decay added to g before
        preconditioning.
    net, head, kind, mc_samples:
        The network and head whose Fisher is taken; ``kind="exact"`` (default: C − 1 backward rows per
        batch for a categorical head), ``"mc"`` (``mc_samples`` sampled labels; cheaper for many classes)
        or ``"empirical"`` for the preconditioner. The trust region always uses the exact Fisher and KL.
    fisher_data:
        Data used at every refresh, and to measure steps, when ``step`` is not given any.
    seed:
        Seeds the Monte Carlo labels of refresh i as ``seed + i``, so a resumed run is identical.
    fisher_kwargs:
        Passed to :func:`fisherkl.nn.fisher` (e.g. ``batch_size``, ``kfac_mode``). With
        ``distributed=True`` (and ``group``) the trust region and the conjugate gradients are also taken
        over every rank's batch (all-reduced), so all ranks take the same step.

    After each step, ``opt.last_step`` holds ``predicted_kl`` (½δᵀF_exactδ of the accepted step),
    ``unclipped_kl`` (the same for the proposed step), ``exact_kl`` (its measured mean KL on the
    batch), ``representation_kl`` (½δᵀFδ under the preconditioning representation), ``scale``,
    ``backtracks``, ``accepted``, ``refreshed``, and for ``"implicit"`` ``cg_iterations`` and
    ``cg_residual``; without ``max_kl`` the exact quantities are None.
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
        line_search: str | None = "kl",
        max_backtracks: int = 10,
        cg_iters: int = 10,
        cg_tol: float = 1e-10,
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
        if line_search not in LINE_SEARCHES:
            raise ParameterError(f"line_search must be 'kl', 'kl+loss' or None, got {line_search!r}")
        if int(max_backtracks) < 0:
            raise ParameterError(f"max_backtracks must be >= 0, got {max_backtracks}")
        if int(cg_iters) < 1:
            raise ParameterError(f"cg_iters must be >= 1, got {cg_iters}")
        if not cg_tol >= 0:
            raise ParameterError(f"cg_tol must be >= 0, got {cg_tol}")
        if isinstance(fisher, str) and fisher not in REPRESENTATIONS:
            raise ParameterError(f"fisher: unknown representation {fisher!r}; choose from {', '.join(REPRESENTATIONS)}")
        if isinstance(fisher, str) and net is None:
            raise ParameterError(
                f"NaturalGradient(fisher={fisher!r}) needs the network: pass net=... (the Fisher is taken on its "
                "outputs), or pass fisher as a callable data ↦ FisherMatrix"
            )
        if net is not None and not isinstance(net, nn.Module):
            raise ParameterError(f"net must be a torch.nn.Module, got {type(net).__name__}")
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
        self.line_search = line_search
        self.max_backtracks = int(max_backtracks)
        self.cg_iters = int(cg_iters)
        self.cg_tol = float(cg_tol)
        self.steps = 0
        self.refreshes = 0
        self.last_step: dict[str, Any] = {}
        self._fisher: FisherMatrix | None = fisher if isinstance(fisher, FisherMatrix) else None
        self._batch_cg = fisher == "implicit"
        self._params, self._layout = self._ordered_params()
        if self._fisher is not None:
            self._check_matches(self._fisher, "fisher")
        if net is None and any(g["max_kl"] is not None for g in self.param_groups):
            raise ParameterError(
                "NaturalGradient(max_kl=...) needs net=...: the trust region measures each step with the exact "
                "Fisher and the exact KL of the network on the batch"
            )

    # --- parameters in the Fisher's flat order ------------------------------------------------------
    def _ordered_params(self) -> tuple[list[Tensor], ParamLayout | None]:
        mine = [p for g in self.param_groups for p in g["params"]]
        if self.net is None:
            return [p for p in mine if p.requires_grad], None  # a callable / fixed Fisher: the given order
        named = list(self.net.named_parameters())
        known = {id(p) for _, p in named}
        foreign = [i for i, p in enumerate(mine) if id(p) not in known]
        if foreign:
            raise ParameterError(
                f"NaturalGradient: parameters {foreign} (in the order given) are not parameters of net; pass "
                "net.parameters() or a subset of them"
            )
        wanted = {id(p) for p in mine if p.requires_grad}
        if not wanted:
            raise ParameterError("NaturalGradient: every parameter given is frozen (requires_grad=False)")
        chosen = [(n, p) for n, p in named if id(p) in wanted]
        return [p for _, p in chosen], ParamLayout.of(chosen)

    def _check_matches(self, fm: FisherMatrix, what: str) -> None:
        n = sum(p.numel() for p in self._params)
        if fm.p != n:
            raise ParameterError(f"{what}: the Fisher has p = {fm.p} parameters but the optimiser manages {n}")
        if self._layout is not None and fm.layout.shapes != self._layout.shapes:
            raise ParameterError(
                f"{what}: the Fisher's parameter shapes {list(fm.layout.shapes)} differ from the optimised "
                f"parameters' {list(self._layout.shapes)} (in net's order)"
            )

    @contextlib.contextmanager
    def _only_optimised_trainable(self) -> Iterator[None]:
        """Hold net's other trainable parameters fixed while its Fisher is computed (restored after)."""
        if self.net is None:
            yield
            return
        mine = {id(p) for p in self._params}
        held = [p for p in self.net.parameters() if p.requires_grad and id(p) not in mine]
        for p in held:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in held:
                p.requires_grad_(True)

    @property
    def fisher(self) -> FisherMatrix | None:
        """The current (averaged) Fisher matrix, or None before the first refresh (always None for
        ``fisher="implicit"``, which keeps no matrix)."""
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
        with self._only_optimised_trainable():
            return nn_fisher(
                self.net, data, self.head, self.kind, self.source, seed=self.seed + self.refreshes, **kwargs
            )

    def update_fisher(self, data: Any = None) -> FisherMatrix:
        """Compute the Fisher on ``data`` now and fold it into the running average; returns it.

        For ``fisher="implicit"`` the matrix-free Fisher of ``data`` is returned but not kept: each step
        runs conjugate gradients on its own batch.
        """
        if isinstance(self.source, FisherMatrix):
            return self.source
        new = self._compute(self.fisher_data if data is None else data)
        self._check_matches(new, "update_fisher")
        if self._batch_cg:
            return new
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
    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Any] | None = None,
        *,
        fisher_data: Any = None,
        loss: Callable[[], Any] | None = None,
    ) -> Any:
        """One natural-gradient step (refreshing the Fisher when due). Returns the closure's loss.

        ``fisher_data``: the current batch (x or (x, y)) — for the refresh when due, and to measure the
        step (``max_kl``) or run conjugate gradients (``"implicit"``). ``loss``: a forward-only callable
        returning the loss at the current parameters, for ``line_search="kl+loss"``.
        """
        value = None
        if closure is not None:
            with torch.enable_grad():
                value = closure()
        refreshed = False
        if not self._batch_cg:
            due = self._fisher is None or (self.steps % self.update_every == 0)
            if due and not isinstance(self.source, FisherMatrix):
                self.update_fisher(fisher_data)
                refreshed = True
        batch = self.fisher_data if fisher_data is None else fisher_data
        with torch.no_grad():
            self._apply(refreshed, batch, closure, loss, value)
        self.steps += 1
        return value

    def _geometry(self, batch: Any) -> BatchGeometry:
        if batch is None:
            why = "fisher='implicit' solves on" if self._batch_cg else "the trust region (max_kl) measures each step on"
            raise ParameterError(
                f"NaturalGradient: {why} the current batch, but none was given; call opt.step(fisher_data=x_batch) "
                "or pass fisher_data= to the constructor"
            )
        assert self.net is not None
        distributed = bool(self.fisher_kwargs.get("distributed", False))
        group = self.fisher_kwargs.get("group")
        return BatchGeometry(
            self.net,
            self._params,
            batch,
            self.head,
            adapter=self.fisher_kwargs.get("adapter"),
            positions=self.fisher_kwargs.get("positions", "sum"),
            distributed=distributed,
            group=group,
        )

    def _gradient(self, dtype: torch.dtype) -> Tensor:
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        grads = []
        for p in self._params:
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            wd = group_of[id(p)]["weight_decay"]
            grads.append((g + wd * p if wd else g).reshape(-1))
        flat = torch.cat(grads).to(dtype)
        if not bool(torch.isfinite(flat).all()):
            raise FisherKLError("NaturalGradient: the gradient contains NaN/inf (has training diverged?)")
        return flat

    def _proposal(self, x: Tensor) -> Tensor:
        """δ = −lr·x per parameter, with heavy-ball momentum on x; flat ``[p]``."""
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
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
        return torch.cat(steps)

    def _apply(self, refreshed: bool, batch: Any, closure: Any, loss_fn: Any, value: Any) -> None:
        # one damping for the whole Fisher: the first group's (damping couples all parameters)
        damping = float(self.param_groups[0]["damping"])
        caps = [g["max_kl"] for g in self.param_groups if g["max_kl"] is not None]
        info: dict[str, Any] = {"refreshed": refreshed, "step": self.steps}
        geom = None
        fm = self._fisher
        if self._batch_cg:
            geom = self._geometry(batch)
            flat = self._gradient(self._params[0].dtype)
            x, taken, residual = conjugate_gradient(geom.mv, flat, damping, self.cg_iters, self.cg_tol)
            info.update(cg_iterations=taken, cg_residual=residual)
        else:
            assert fm is not None
            flat = self._gradient(fm.dtype)
            x = self._solver(fm, damping)(flat)
        delta = self._proposal(x)
        rep = None if fm is None or self._batch_cg else 0.5 * float(fm.quad(delta.to(fm.dtype)))
        if not caps:
            at = 0
            for p in self._params:
                n = p.numel()
                p.add_(delta[at : at + n].reshape(p.shape).to(p.dtype))
                at += n
            self.last_step = {
                "predicted_kl": None,
                "unclipped_kl": None,
                "exact_kl": None,
                "representation_kl": rep,
                "scale": 1.0,
                "backtracks": 0,
                "accepted": True,
                **info,
            }
            return
        cap = float(min(caps))
        geom = geom if geom is not None else self._geometry(batch)
        parts = geom.split(delta)
        quad = 0.5 * geom.quad(delta)
        clip = min(1.0, math.sqrt(cap / quad)) if quad > 0 else 1.0
        if self.line_search is None:
            result = LineSearchResult(clip, geom.kl(parts, clip), None, 1, True)
        else:
            # a step the exact quadratic puts over the boundary is first tried a little inside it, where the
            # cubic term (a few % at 1e-4 nats) rarely pushes it out: usually no backtrack is needed
            first = clip if clip >= 1.0 else math.sqrt(TARGET * cap / quad)
            loss_at, loss0 = self._loss_probe(geom, parts, closure, loss_fn, value)
            result = kl_line_search(
                lambda s: geom.kl(parts, s),
                cap,
                first,
                curvature=quad,
                loss_at=loss_at,
                loss0=loss0,
                max_backtracks=self.max_backtracks,
            )
            if loss0 is not None:
                info.update(loss_before=loss0, loss_after=result.loss if result.accepted else loss0)
        geom.place(parts, result.scale)
        s2 = result.scale * result.scale
        self.last_step = {
            "predicted_kl": quad * s2,
            "unclipped_kl": quad,
            "exact_kl": result.kl,
            "representation_kl": None if rep is None else rep * s2,
            "scale": result.scale,
            "backtracks": result.evaluations - 1,
            "accepted": result.accepted,
            **info,
        }

    def _loss_probe(
        self, geom: BatchGeometry, parts: list[Tensor], closure: Any, loss_fn: Any, value: Any
    ) -> tuple[Callable[[float], float] | None, float | None]:
        """For ``"kl+loss"``: the loss at w + sδ, and at w."""
        if self.line_search != "kl+loss":
            return None, None
        fn = loss_fn if loss_fn is not None else closure
        if fn is None:
            raise ParameterError(
                "NaturalGradient(line_search='kl+loss') needs the loss: call opt.step(loss=fn) with a forward-only "
                "fn() returning the batch loss, or opt.step(closure)"
            )

        def evaluate() -> float:
            if loss_fn is not None:
                out = loss_fn()
            else:
                with torch.enable_grad():  # a closure usually calls backward(), as LBFGS's does
                    out = closure()
            geom.restore_buffers()
            return float(out)

        if loss_fn is None and value is not None:
            loss0 = float(value)
        else:
            geom.restore()
            loss0 = evaluate()

        def loss_at(s: float) -> float:
            geom.place(parts, s)
            return evaluate()

        return loss_at, loss0

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
            if self._layout is not None and fm.layout != self._layout:
                raise ParameterError(
                    "load_state_dict: the saved Fisher is over different parameters (names or shapes differ from "
                    "the optimised parameters of net)"
                )
            self._fisher = fm
        elif not isinstance(self.source, FisherMatrix):
            self._fisher = None

    def __repr__(self) -> str:
        src = self.source if isinstance(self.source, str) else type(self.source).__name__
        g = self.param_groups[0]
        return (
            f"NaturalGradient(fisher={src}, lr={g['lr']}, damping={g['damping']}, update_every={self.update_every}, "
            f"ema={self.ema}, max_kl={g['max_kl']}, line_search={self.line_search!r})"
        )


__all__ = ["LINE_SEARCHES", "NaturalGradient", "average_fishers"]
