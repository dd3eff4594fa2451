"""Family: a :class:`~fisherkl.model.Model` with a name, named parameters and closed forms.

A family's parameters follow the order and names of the matching ``torch.distributions``
constructor. Fixed (non-estimated) arguments, such as a binomial's ``total_count``, are given
when the family is made: ``family("binomial", total_count=20)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution

from ..constraints import Constraint
from ..errors import ParameterError, RouteError
from ..expfamily import ExponentialFamily
from ..model import Model, Param

_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator adding a family to the catalogue under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"family {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


class Fixed:
    """A fixed argument: its constraint, default and meaning."""

    def __init__(self, constraint: Constraint, default: float, doc: str, cast: Callable[[Any], Any] = int):
        self.constraint, self.default, self.doc, self.cast = constraint, default, doc, cast


class Family(Model):
    """A named parametric family with closed forms where they exist.

    Subclasses set ``name``, ``torch_name``, ``fixed`` (fixed arguments), implement
    :meth:`param_spec`, :meth:`make` (θ ↦ distribution) and, where known, :meth:`fisher_formula`.
    KL defaults to torch's registry; subclasses may override :meth:`kl_formula`.
    """

    name: str = ""
    torch_name: ClassVar[str] = ""
    fixed: ClassVar[dict[str, Fixed]] = {}
    typical_theta: ClassVar[tuple[float, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, **fixed: Any) -> None:
        unknown = set(fixed) - set(self.fixed)
        if unknown:
            allowed = ", ".join(self.fixed) or "none"
            raise ParameterError(
                f"{self.name}: unknown fixed argument(s) {', '.join(sorted(unknown))} (allowed: {allowed})"
            )
        self.fixed_values: dict[str, Any] = {}
        for key, spec in self.fixed.items():
            value = fixed.get(key, spec.default)
            try:  # in float64: a float32 check would turn 1e300 into inf and 1e-300 into 0
                ok = not isinstance(value, bool) and bool(
                    spec.constraint.check(torch.as_tensor(float(value), dtype=torch.float64))
                )
            except (TypeError, ValueError, OverflowError):
                ok = False
            if not ok:
                raise ParameterError(f"{self.name}: fixed argument '{key}' must be {spec.constraint}, got {value!r}")
            self.fixed_values[key] = spec.cast(value)
        self.params: tuple[Param, ...] = tuple(self.param_spec())
        names = [n for p in self.params for n in p.coordinate_names()]
        cons = [p.constraint for p in self.params for _ in range(p.size)]
        super().__init__(self.make, len(names), names, cons, name=self.name)

    def __repr__(self) -> str:
        fixed = "".join(f", {k}={v!r}" for k, v in self.fixed_values.items())
        return f"family({self.name!r}{fixed})"

    # --- to be provided by subclasses -----------------------------------------------------------
    def param_spec(self) -> list[Param]:
        raise NotImplementedError

    def make(self, theta: Tensor) -> Distribution:
        """θ ``[..., d]`` ↦ the torch distribution (θ already validated)."""
        raise NotImplementedError

    def fisher_formula(self, theta: Tensor) -> Tensor | None:
        """Closed-form Fisher information ``[..., d, d]`` for one observation, or None."""
        return None

    def kl_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        """Closed-form KL; default: torch's registry on the two distributions."""
        return Model.closed_kl(self, theta_p, theta_q)

    # --- exponential-family structure (where the family has one) --------------------------------
    def natural(self, theta: Tensor) -> Tensor | None:
        """Natural parameters η(θ) ``[..., m]`` with p(x) = h(x)·exp(⟨η, T(x)⟩ − A(η)), or None."""
        return None

    def log_partition(self, eta: Tensor) -> Tensor:
        """A(η) ``[...]``; only meaningful when :meth:`natural` is defined."""
        raise NotImplementedError

    def from_natural(self, eta: Tensor) -> Tensor:
        """θ(η), the inverse of :meth:`natural`."""
        raise NotImplementedError

    def exponential_family(self) -> ExponentialFamily:
        """This family in natural coordinates η (Fisher ∇²A(η), KL the Bregman divergence of A).

        Pulled back through η(θ) (``fisherkl.reparametrize(ef, family.natural)``), its Fisher is
        the family's closed form.
        """
        eta0 = self.natural(self.typical())
        if eta0 is None:
            raise RouteError(f"{self.name}: fisherkl has no exponential-family form for this family")
        return ExponentialFamily(
            self.log_partition,
            eta0.shape[-1],
            base=lambda eta: self.make(self.from_natural(eta)),
            domain=self.in_natural_domain,
            names=[f"eta[{i}]" for i in range(eta0.shape[-1])],
            name=f"{self.name} (natural parameters)",
        )

    def in_natural_domain(self, eta: Tensor) -> Tensor:
        """Whether A(η) < ∞, elementwise over the batch ``[...]``."""
        return torch.ones(eta.shape[:-1], dtype=torch.bool, device=eta.device)

    def bregman_kl(self, theta_p: Tensor, theta_q: Tensor) -> Tensor:
        """KL as the Bregman divergence of A: A(η_q) − A(η_p) − ⟨η_q − η_p, ∇A(η_p)⟩."""
        eta_p, eta_q = self.natural(theta_p), self.natural(theta_q)
        assert eta_p is not None and eta_q is not None
        with torch.enable_grad():
            leaf = eta_p if eta_p.requires_grad else eta_p.detach().requires_grad_(True)
            a_p = self.log_partition(leaf)
            (mean_p,) = torch.autograd.grad(a_p.sum(), leaf, create_graph=True)
        kl = self.log_partition(eta_q) - a_p - ((eta_q - leaf) * mean_p).sum(-1)
        return kl if (theta_p.requires_grad or theta_q.requires_grad) else kl.detach()

    def chi2_formula(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        """Pearson χ² for exponential families: ∫q²/p = exp(A(2η_q − η_p) − 2A(η_q) + A(η_p)).

        Infinite when 2η_q − η_p leaves the natural domain (q much wider than p).
        """
        eta_p, eta_q = self.natural(theta_p), self.natural(theta_q)
        if eta_p is None or eta_q is None:
            return None
        star = 2 * eta_q - eta_p
        ok = self.in_natural_domain(star)
        safe = torch.where(ok.unsqueeze(-1), star, eta_q)
        log_ratio = self.log_partition(safe) - 2 * self.log_partition(eta_q) + self.log_partition(eta_p)
        return torch.where(ok, torch.expm1(log_ratio), torch.full_like(log_ratio, float("inf")))

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor | None:
        """Whether E_p[(q/p)^m] = ∫ q^m p^{1−m} is finite (m ≥ 2), elementwise; None if unknown.

        m = 2: whether χ² is finite; m = 4: whether a Monte Carlo χ² has a finite variance. For an
        exponential family: iff m·η_q − (m − 1)·η_p lies in the natural parameter space.
        """
        eta_p, eta_q = self.natural(theta_p), self.natural(theta_q)
        if eta_p is None or eta_q is None:
            return None
        return self.in_natural_domain(m * eta_q - (m - 1) * eta_p)

    # --- Model interface ------------------------------------------------------------------------
    def _check_by_torch(self, theta: Tensor, what: str) -> None:
        """Families check their own constraints; no second check through torch."""

    def closed_fisher(self, theta: Tensor) -> Tensor | None:
        return self.fisher_formula(theta)

    def closed_kl(self, theta_p: Tensor, theta_q: Tensor) -> Tensor | None:
        return self.kl_formula(theta_p, theta_q)

    def typical(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """A typical parameter value, for demos, tables and the CLI."""
        return torch.tensor(self.typical_theta, dtype=dtype)

    def param_table(self) -> list[tuple[str, str]]:
        """(name, constraint) pairs in θ order, for listings."""
        return [(p.name + (f"[{p.size}]" if p.size > 1 else ""), str(p.constraint)) for p in self.params]


def scale_symmetry(theta: Tensor, index: int, standard: float = 1.0) -> tuple[Tensor, Tensor]:
    """(θ₀, J) for a family in which coordinate ``index`` is a scale (or rate) of x: θ₀ has it set to
    ``standard``, J is the identity with 1/θ_index at (index, index) (see Model.standard_point)."""
    value = theta[..., index]
    theta0 = theta.detach().clone()
    theta0[..., index] = standard
    d = theta.shape[-1]
    eye = torch.eye(d, dtype=theta.dtype, device=theta.device).expand((*theta.shape[:-1], d, d))
    mask = torch.zeros(d, d, dtype=torch.bool, device=theta.device)
    mask[index, index] = True
    jac = torch.where(mask, (standard / value)[..., None, None], eye)
    return theta0, jac


def one_minus_sum(theta: Tensor) -> Tensor:
    """1 − Σᵢ θᵢ over the last dimension, ``[...]``, by compensated (TwoSum) summation for up to 64 terms.

    The last probability of a categorical, p_k = 1 − Σθ, is tiny where Σθ is close to 1; a plain sum
    rounds Σθ to a multiple of ulp(1) = 2.2e-16 first, so p_k = 3e-17 would come out 0 or 1e-16. The
    compensation recovers the rounding error of every addition (its derivatives are exactly −1)."""
    if theta.shape[-1] > 64:
        return 1 - theta.sum(-1)
    s = torch.ones_like(theta[..., 0])
    c = torch.zeros_like(s)
    for i in range(theta.shape[-1]):
        x = -theta[..., i]
        t = s + x
        c = c + torch.where(s.abs() >= x.abs(), (s - t) + x, (x - t) + s)
        s = t
    return s + c


def split(theta: Tensor) -> tuple[Tensor, ...]:
    """θ ``[..., d]`` → d tensors ``[...]``."""
    return tuple(theta.unbind(-1))


def diag_matrix(*entries: Tensor) -> Tensor:
    """Diagonal ``[..., d, d]`` from d broadcastable tensors."""
    return torch.diag_embed(torch.stack(torch.broadcast_tensors(*entries), -1))


def sym2(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``[[a, b], [b, c]]`` as ``[..., 2, 2]``."""
    a, b, c = torch.broadcast_tensors(a, b, c)
    out = a.new_empty((*a.shape, 2, 2))
    out[..., 0, 0] = a
    out[..., 0, 1] = b
    out[..., 1, 0] = b
    out[..., 1, 1] = c
    return out
