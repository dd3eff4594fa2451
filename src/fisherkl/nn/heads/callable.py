"""A head from any function outputs ↦ torch Distribution; its statistics by fisherkl's routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from torch.distributions import Distribution

from ...errors import ParameterError
from .base import Head


class CallableHead(Head):
    """Any ``fn: outputs [..., C] ↦ Distribution`` with batch shape ``outputs.shape[:-1]`` (one distribution
    per example and position; independent coordinates of one position belong in its event, e.g. through
    ``torch.distributions.Independent``).

    Its Fisher in output coordinates is taken by :func:`fisherkl.fisher` on the model ``Model(fn, C)`` with
    ``method`` (default ``"auto"``: closed form → Hessian of a closed-form KL → exact or Monte Carlo
    E[s sᵀ]), batched over every example and position; its square root by an eigendecomposition (rows whose
    eigenvalue is zero everywhere are dropped); its KL by torch's registry, else by :func:`fisherkl.kl`.
    """

    name = "callable"

    def __init__(self, fn: Callable[[Tensor], Distribution], method: str = "auto", **fisher_kwargs: Any) -> None:
        if not callable(fn):
            raise ParameterError(f"head must be a name or a callable outputs -> Distribution, got {fn!r}")
        self.fn, self.method, self.fisher_kwargs = fn, method, fisher_kwargs
        self.name = getattr(fn, "__name__", "callable")
        self._models: dict[int, Any] = {}

    def model(self, c: int) -> Any:
        from ...model import Model

        if c not in self._models:
            self._models[c] = Model(self.fn, c, name=f"head {self.name!r}")
        return self._models[c]

    def distribution(self, outputs: Tensor) -> Distribution:
        d = self.fn(outputs)
        if not isinstance(d, Distribution):
            raise ParameterError(f"head {self.name!r} must return a torch Distribution, got {type(d).__name__}")
        if tuple(d.batch_shape) != tuple(outputs.shape[:-1]):
            raise ParameterError(
                f"head {self.name!r}: the distribution's batch shape {tuple(d.batch_shape)} must be the outputs' "
                f"leading shape {tuple(outputs.shape[:-1])} (one distribution per example and position); wrap "
                "independent coordinates in torch.distributions.Independent"
            )
        return d

    def check_labels(self, outputs: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        d = self.distribution(outputs.detach())
        want = (*d.batch_shape, *d.event_shape)
        if tuple(y.shape) != want:
            raise ParameterError(f"head {self.name!r}: labels must have shape {want}, got {tuple(y.shape)}")
        return y

    def fisher(self, outputs: Tensor) -> Tensor:
        from ...fisher import fisher

        out = self.check(outputs).detach()
        self.distribution(out[:1])
        value = fisher(self.model(out.shape[-1]), out, self.method, **self.fisher_kwargs)
        assert isinstance(value, Tensor)
        return value

    def kl(self, outputs_p: Tensor, outputs_q: Tensor) -> Tensor:
        try:
            return super().kl(outputs_p, outputs_q)
        except NotImplementedError:
            from ...divergence import kl

            value = kl(self.model(outputs_p.shape[-1]), outputs_p, outputs_q)
            assert isinstance(value, Tensor)
            return value

    def __repr__(self) -> str:
        return f"CallableHead({self.name})"
