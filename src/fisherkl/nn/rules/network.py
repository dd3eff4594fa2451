"""The fallback for parameters no layer rule accounts for: torch.func on the whole network.

A parameter used outside the forward of the module that owns it — a tied output head written as
``F.linear(h, self.tok.weight)`` or ``h @ self.tok.weight.T``, a parameter of a container used in its own
forward, a weight reparametrised before use — has per-example gradients that no layer's hook sees. The
engine finds such parameters on the first batch (per-example gradients that do not add up to the batch
gradient) and hands them to this rule: for each example, the gradient of ⟨outputs(xₙ), eₙᵣ⟩ with respect
to them through the **whole** network, vmapped over examples and rows. Exact whenever examples do not
interact; about the cost of one more forward and backward pass per row.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

from ..params import preserved_parameters
from ..passes import fisher_passes
from .base import Call, Rule
from .generic import example_grads


class NetworkRule(Rule):
    """Per-example gradients of ``params`` through the whole network ``net`` (see the module doc).

    Its one call holds the batch (``args``/``kwargs`` with their batch dimensions) and, as its only
    "output", the network outputs themselves: their gradients are the cotangent rows.
    """

    def __init__(self, net: nn.Module, adapter: Any, names: list[str], by_name: dict[str, nn.Parameter]) -> None:
        super().__init__(net, "<network>", [(net, n, n) for n in names])
        self.adapter = adapter
        self.by_name = by_name

    def __repr__(self) -> str:
        return f"NetworkRule({', '.join(self.names)})"

    def per_example(self, calls: list[Call], sl: slice) -> dict[str, Tensor]:
        net, adapter = self.module, self.adapter
        params = {n: self.by_name[n].detach() for n in self.names}

        def outputs(pr: dict[str, Tensor], a1: tuple[Any, ...], k1: dict[str, Any]) -> list[Tensor]:
            return [adapter.outputs(functional_call(net, pr, a1, k1))]

        total: dict[str, Tensor] = {}
        with preserved_parameters(net), fisher_passes(math_attention=True):
            for c in calls:
                for k, v in example_grads(outputs, params, c, sl, c.grads, [0]).items():
                    total[k] = total[k] + v if k in total else v
        return total


__all__ = ["NetworkRule"]
