"""The model abstraction: a map from parameters θ ∈ ℝ^d to a probability distribution.

A :class:`Model` wraps any function ``θ ↦ torch.distributions.Distribution``. θ has shape
``[..., d]``; the distribution it returns has ``batch_shape == θ.shape[:-1]``. Every public entry
point validates θ first and raises :class:`~fisherkl.errors.ParameterError` naming the parameter,
its constraint and the offending value, so that no route ever returns a silent NaN.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.distributions.kl import kl_divergence

from .constraints import Constraint, real
from .errors import FisherKLError, ParameterError

DistributionFn = Callable[[Tensor], Distribution]
KLFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Param:
    """A named parameter block of ``size`` coordinates, each satisfying ``constraint``."""

    name: str
    constraint: Constraint = real
    size: int = 1

    def coordinate_names(self) -> list[str]:
        if self.size == 1:
            return [self.name]
        return [f"{self.name}[{i}]" for i in range(self.size)]


@contextlib.contextmanager
def no_argument_validation() -> Iterator[None]:
    """Switch off torch.distributions' own argument checks (θ is validated by the model)."""
    old = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(old)


def require_model(model: Any, where: str) -> Model:
    """``model`` if it is a fisherkl Model, else a TypeError saying what to pass."""
    if not isinstance(model, Model):
        hint = f" (use fisherkl.family({model!r}))" if isinstance(model, str) else ""
        raise TypeError(f"{where}: model must be a fisherkl.Model or family, got {type(model).__name__}{hint}")
    return model


def validate_pair(
    model: Any, first: Any, second: Any, names: tuple[str, str] = ("theta_p", "theta_q")
) -> tuple[Tensor, Tensor]:
    """Two valid parameter tensors of ``model`` in a common dtype, broadcast against each other."""
    a = require_model(model, "pair of parameters").validate(first, names[0])
    b = model.validate(as_parameter_tensor(second, names[1], like=a), names[1])
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype=dtype, device=a.device)
    try:
        return torch.broadcast_tensors(a, b)  # type: ignore[return-value]
    except RuntimeError:
        raise ParameterError(
            f"{model.name}: {names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} do not broadcast"
        ) from None


def check_not_nan(model: Model, value: Tensor, what: str) -> Tensor:
    """Refuse to return a NaN: say which model and quantity produced it."""
    total = value.detach().sum()  # one pass; NaN if any entry is (or if +inf meets −inf: then look closer)
    if not bool(torch.isfinite(total)) and bool(torch.isnan(value).any()):
        raise FisherKLError(
            f"{model.name}: {what} came out NaN; the model's log-density is not finite or not "
            "differentiable there — check its parameter constraints (Model(..., constraints=...))"
        )
    return value


def as_parameter_tensor(value: Any, what: str = "theta", like: Tensor | None = None) -> Tensor:
    """Convert ``value`` to a floating tensor (keeping a floating input's dtype and device)."""
    if isinstance(value, Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ParameterError(f"{what} must be numeric, got {value!r}") from exc
    if t.device.type == "meta":
        raise ParameterError(f"{what} is a meta tensor (a shape without values); give it values on a real device")
    if t.dtype in (torch.float16, torch.bfloat16):
        raise ParameterError(
            f"{what} is {t.dtype}: fisherkl's routes (quadrature, autodiff Hessians, linear algebra) need "
            f"float32 or float64; convert it (e.g. {what}.double())"
        )
    if not (t.is_floating_point()):
        if t.is_complex():
            raise ParameterError(f"{what} must be real, got a complex tensor")
        if t.dtype == torch.bool:
            raise ParameterError(f"{what} must be numeric, got a boolean tensor")
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        t = t.to(dtype)
    if like is not None and (t.dtype != like.dtype or t.device != like.device):
        t = t.to(dtype=torch.promote_types(t.dtype, like.dtype), device=like.device)
    return t


class Model:
    """A parametric model θ ↦ p(x | θ).

    Parameters
    ----------
    fn:
        Maps θ of shape ``[..., dim]`` to a ``torch.distributions.Distribution`` whose
        ``batch_shape`` is ``θ.shape[:-1]``. It must be differentiable in θ (use torch ops).
    dim:
        d, the number of parameters.
    names:
        One name per coordinate (default ``theta[0]``, ``theta[1]``, …), used in error messages.
    constraints:
        One :class:`~fisherkl.constraints.Constraint` per coordinate (default: any finite real).
    kl:
        Optional closed-form ``kl(theta_p, theta_q) -> [...]``. Without it, torch's KL registry
        is used where it knows the pair of distribution types, else exact sums/quadrature/MC.
    name:
        A label for messages and tables.

    Example
    -------
    >>> import torch, fisherkl
    >>> m = fisherkl.Model(lambda t: torch.distributions.Normal(t[..., 0], t[..., 1].exp()), 2,
    ...                    names=["mu", "log_sigma"])
    >>> fisherkl.fisher(m, torch.tensor([0.0, 0.0], dtype=torch.float64))  # diag(1, 2)
    tensor([[1., 0.],
            [0., 2.]], dtype=torch.float64)
    """

    regular: bool = True
    twice_differentiable: bool = True

    def __init__(
        self,
        fn: DistributionFn,
        dim: int,
        names: Sequence[str] | None = None,
        constraints: Sequence[Constraint] | None = None,
        *,
        kl: KLFn | None = None,
        name: str = "model",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Model: fn must be callable θ -> Distribution, got {type(fn).__name__}")
        if not isinstance(dim, int) or dim < 1:
            raise ParameterError(f"Model: dim must be a positive integer, got {dim!r}")
        names = [f"theta[{i}]" for i in range(dim)] if names is None else list(names)
        if len(names) != dim:
            raise ParameterError(f"Model: names has {len(names)} entries but dim is {dim}")
        cons = [real] * dim if constraints is None else list(constraints)
        if len(cons) != dim:
            raise ParameterError(f"Model: constraints has {len(cons)} entries but dim is {dim}")
        self._fn = fn
        self.dim = dim
        self.names: tuple[str, ...] = tuple(names)
        self.constraints: tuple[Constraint, ...] = tuple(cons)
        self._kl = kl
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, names={list(self.names)})"

    # --- validation ---------------------------------------------------------------------------
    def validate(self, theta: Any, what: str = "theta") -> Tensor:
        """Return θ as a floating tensor ``[..., dim]`` or raise :class:`ParameterError`."""
        t = as_parameter_tensor(theta, what)
        if t.ndim == 0 and self.dim == 1:
            t = t.reshape(1)
        if t.ndim == 0 or t.shape[-1] != self.dim:
            raise ParameterError(
                f"{self.name}: {what} must have last dimension {self.dim} "
                f"({', '.join(self.names)}), got shape {tuple(t.shape)}"
            )
        if not self._all_coordinates_ok(t):
            for i, (pname, cons) in enumerate(zip(self.names, self.constraints)):
                ok = cons.check(t[..., i])
                if not bool(ok.all()):
                    self._raise_at(t[..., i], ok, f"parameter '{pname}' must be {cons}", what)
        self._check_joint(t, what)
        self._check_by_torch(t, what)
        return t

    def _check_by_torch(self, theta: Tensor, what: str) -> None:
        """Let torch.distributions validate the arguments fn builds (families validate themselves)."""
        old = Distribution._validate_args
        Distribution.set_default_validate_args(True)
        try:
            self.distribution(theta.detach())
        except ParameterError as exc:
            shown = f" ({what} = {theta.detach().tolist()})" if theta.numel() <= 20 else ""
            raise ParameterError(f"{exc}{shown}") from exc.__cause__
        finally:
            Distribution.set_default_validate_args(old)

    def _all_coordinates_ok(self, t: Tensor) -> bool:
        """All coordinate constraints at once (one pass per side); the loop above names the culprit."""
        key = (t.dtype, t.device)
        bounds = self._bounds_cache.get(key) if hasattr(self, "_bounds_cache") else None
        if bounds is None:
            if any(c.integer or not c.low_open or not c.high_open for c in self.constraints):
                return False  # rare kinds: checked coordinate by coordinate
            low = torch.tensor([c.low for c in self.constraints], dtype=t.dtype, device=t.device)
            high = torch.tensor([c.high for c in self.constraints], dtype=t.dtype, device=t.device)
            self._bounds_cache = getattr(self, "_bounds_cache", {})
            bounds = self._bounds_cache[key] = (low, high)
        low, high = bounds
        return bool(((t > low) & (t < high)).all())

    def _check_joint(self, theta: Tensor, what: str) -> None:
        """Constraints that couple coordinates (e.g. probabilities summing to < 1)."""

    def _raise_at(self, values: Tensor, ok: Tensor, message: str, what: str) -> None:
        bad = (~ok).nonzero()[0].tolist() if ok.ndim else []
        value = values[tuple(bad)] if bad else values
        where = f" at {what} index {tuple(bad)}" if bad else ("" if what == "theta" else f" in {what}")
        raise ParameterError(f"{self.name}: {message}, got {float(value.detach()):g}{where}")

    # --- the map θ ↦ distribution --------------------------------------------------------------
    def __call__(self, theta: Any) -> Distribution:
        """The distribution p(· | θ) for validated θ."""
        return self.distribution(self.validate(theta))

    def distribution(self, theta: Tensor) -> Distribution:
        """The distribution at θ, without validating θ (internal; θ must be valid)."""
        try:
            dist = self._fn(theta)
        except ParameterError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise ParameterError(f"{self.name}: the model rejected theta: {exc}") from exc
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"{self.name}: the model function must return a torch.distributions.Distribution, "
                f"got {type(dist).__name__}"
            )
        return dist

    def log_prob(self, theta: Any, x: Tensor) -> Tensor:
        """log p(x | θ), broadcasting x against θ's batch shape."""
        return self(theta).log_prob(x)

    # --- closed forms (none for a plain model) -------------------------------------------------
    def closed_fisher(self, theta: Tensor) -> Tensor | None:
        """The Fisher information in closed form, ``[..., d, d]``, or None if there is none."""
        return None

    def closed_kl(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        """KL[p_θp ‖ p_θq] in closed form, or None when no closed form is known."""
        if self._kl is not None:
            return self._kl(theta_p, theta_q)
        p, q = self.distribution(theta_p), self.distribution(theta_q)
        try:
            return kl_divergence(p, q)
        except NotImplementedError:
            return None

    def unconstrained(self) -> Model:
        """This model over ℝ^d (each coordinate through ``torch.distributions.biject_to``).

        The result has ``inverse(theta)`` mapping θ to its unconstrained coordinates.
        """
        from .reparam import unconstrained  # reparam builds on Model

        return unconstrained(self)

    def standard_point(self, theta: Tensor) -> tuple[Tensor, Tensor] | None:
        """A point θ₀ and J ``[..., d, d]`` such that, for every δ, p_{θ+δ} is p_{θ₀+Jδ} carried by one
        bijection of the sample space (a location–scale or scale symmetry), or None (the default).

        Then I(θ) = Jᵀ I(θ₀) J and KL(θ, θ + δ) = KL(θ₀, θ₀ + Jδ) exactly, so the numerical routes
        (quadrature, series, Monte Carlo, autodiff of a KL) are taken at θ₀, where the distribution is of
        moderate size: a location of 1e135 or a scale of 1e150 costs no precision (hook for families)."""
        return None

    def diagnose(self, theta: Tensor, info: Tensor) -> None:
        """Warn about known singular points of the Fisher information (a hook for families)."""

    def has_closed_kl(self, theta: Tensor) -> bool:
        """Whether :meth:`closed_kl` gives an answer near θ.

        Probed between θ and a nearby θ′ ≠ θ: torch's TransformedDistribution rule answers for
        identical transforms only, so a probe at (θ, θ) would wrongly say yes.
        """
        if self._kl is not None:
            return True
        one = theta.detach().reshape(-1, theta.shape[-1])[:1]
        other = self._nearby(one)
        with no_argument_validation():
            try:
                return self.closed_kl(one, other) is not None
            except NotImplementedError:
                return False

    def _nearby(self, theta: Tensor) -> Tensor:
        for candidate in (theta * (1 + 1e-3) + 1e-4, theta * (1 - 1e-3) - 1e-4, theta * (1 - 1e-3)):
            try:
                return self.validate(candidate, "probe")
            except FisherKLError:
                continue
        return theta
