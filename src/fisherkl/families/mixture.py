"""A one-dimensional Gaussian mixture: Fisher information by exact quadrature.

θ = (weights w₁..w_{k−1} (w_k = 1 − Σ), loc[k], scale[k]). The mixture is not identifiable where
two components coincide (then swapping or merging them leaves the density unchanged), and its
Fisher information is singular there: fisherkl warns with SingularFisherWarning naming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, MixtureSameFamily, Normal
from torch.distributions.transforms import StickBreakingTransform

from ..constraints import integer_in, positive, real, unit_interval
from ..errors import SingularFisherWarning
from ..model import Param
from .base import Family, Fixed, register
from .distributions import AccurateCategorical
from .multivariate import CategoricalFamily

components = integer_in(2, 2**16)


@register
class NormalMixtureFamily(Family):
    name = "mixture_normal"
    torch_name = "MixtureSameFamily(Normal)"
    description = "mixture of k normals; θ = weights[k−1], loc[k], scale[k]"
    fixed = {"k": Fixed(components, 2, "number of components")}

    @property
    def k(self) -> int:
        return int(self.fixed_values["k"])

    @property
    def typical_theta(self) -> tuple[float, ...]:  # type: ignore[override]
        k = self.k
        weights = [1.0 / (k + 1)] * (k - 1)
        return tuple(weights + [-1.0 + 2.0 * i / max(k - 1, 1) for i in range(k)] + [0.7 + 0.2 * i for i in range(k)])

    def param_spec(self) -> list[Param]:
        k = self.k
        return [Param("weights", unit_interval, k - 1), Param("loc", real, k), Param("scale", positive, k)]

    def _check_joint(self, theta: Tensor, what: str) -> None:
        total = theta[..., : self.k - 1].sum(-1)
        ok = total < 1
        if not bool(ok.all()):
            self._raise_at(total, ok, "the 'weights' must sum to less than 1 (the last is 1 − sum)", what)

    def split(self, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        k = self.k
        return CategoricalFamily.full_probs(theta[..., : k - 1]), theta[..., k - 1 : 2 * k - 1], theta[..., 2 * k - 1 :]

    def make(self, theta: Tensor) -> Distribution:
        w, loc, scale = self.split(theta)
        mix = AccurateCategorical(probs=w, validate_args=False)
        return MixtureSameFamily(mix, Normal(loc, scale, validate_args=False), validate_args=False)

    def unconstraining_transform(self) -> Callable[[Tensor], Tensor]:
        """Weights by stick-breaking, locations as they are, scales through exp."""
        stick, k = StickBreakingTransform(), self.k
        return lambda u: torch.cat(
            [stick(u[..., : k - 1])[..., :-1], u[..., k - 1 : 2 * k - 1], u[..., 2 * k - 1 :].exp()], -1
        )

    def unconstraining_inverse(self) -> Callable[[Tensor], Tensor]:
        stick = StickBreakingTransform()

        def inverse(t: Tensor) -> Tensor:
            w, loc, scale = self.split(t)
            return torch.cat([stick.inv(w), loc, scale.log()], -1)

        return inverse

    def ratio_moment_finite(self, theta_p: Tensor, theta_q: Tensor, m: int) -> Tensor:
        # the tails are those of the widest component: ∫ q^m p^{1−m} < ∞ iff m/σq² > (m − 1)/σp²
        # for the widest components (at equality the linear terms of the exponent decide: refused)
        sp = self.split(theta_p)[2].amax(-1)
        sq = self.split(theta_q)[2].amax(-1)
        return m * sp.square() > (m - 1) * sq.square()

    def diagnose(self, theta: Tensor, info: Tensor) -> None:
        _, loc, scale = self.split(theta.detach())
        k = self.k
        for i in range(k):
            for j in range(i + 1, k):
                same = torch.isclose(loc[..., i], loc[..., j], rtol=1e-9, atol=1e-12) & torch.isclose(
                    scale[..., i], scale[..., j], rtol=1e-9, atol=1e-12
                )
                if bool(same.any()):
                    warnings.warn(
                        f"mixture_normal: components {i} and {j} coincide (same loc and scale) at some θ: "
                        "the model is not identifiable there and its Fisher information is singular "
                        "(the weights of the coinciding components cannot be told apart); "
                        "Cramér–Rao bounds and natural-gradient steps do not exist at such points",
                        SingularFisherWarning,
                        stacklevel=3,
                    )
                    return
