"""Settings for fisherkl's own passes through a network, and the module behind wrappers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn


def unwrap(net: nn.Module) -> nn.Module:
    """The module that does the work: ``torch.compile`` and ``DistributedDataParallel`` wrappers removed
    (fisherkl's passes run the original module eagerly; parameters are the same objects)."""
    while True:
        dyn = sys.modules.get("torch._dynamo.eval_frame")
        if dyn is not None and isinstance(net, getattr(dyn, "OptimizedModule", ())):
            net = net._orig_mod  # type: ignore[assignment]
            continue
        if isinstance(net, nn.parallel.DistributedDataParallel):
            net = net.module
            continue
        return net


@contextlib.contextmanager
def fisher_passes(math_attention: bool = False) -> Iterator[None]:
    """Settings for fisherkl's own passes: torch's fused inference paths of ``nn.MultiheadAttention`` and
    ``nn.TransformerEncoderLayer`` off (they bypass the layers), and with ``math_attention`` the
    scaled-dot-product attention kernel that supports forward-mode AD."""
    old = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        if math_attention:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.MATH]):
                yield
        else:
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(old)


def vjp(
    outputs: Tensor | Sequence[Tensor], inputs: Sequence[Tensor], cotangents: Tensor | Sequence[Tensor], **kw: Any
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, cotangents)`` as the gradient of the scalar Σ ⟨outputᵢ, cotangentᵢ⟩:
    the same numbers, without the shape check for explicit ``grad_outputs`` that makes the first call of a
    fresh process import sympy (about a second)."""
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    cots = [cotangents] if isinstance(cotangents, Tensor) else list(cotangents)
    total = sum(((o * c).sum() for o, c in zip(outs[1:], cots[1:])), (outs[0] * cots[0]).sum())
    return torch.autograd.grad(total, inputs, **kw)


__all__ = ["fisher_passes", "unwrap", "vjp"]
