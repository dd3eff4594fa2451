"""The exact mean KL between two networks' predictive distributions."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParameterError
from .data import as_input, batches
from .heads import Head, get_head


def kl(
    net_p: nn.Module,
    net_q: nn.Module,
    data: Any,
    head: str | Head | Any = "categorical",
    *,
    batch_size: int = 256,
    progress: bool | None = None,
) -> Tensor:
    """mean over x of KL[p(y | x, net_p) ‖ p(y | x, net_q)], exact per example (the head's KL).

    With net_q = net_p shifted by δ this is what ½ δᵀ F δ predicts (F from :func:`fisherkl.nn.fisher`).
    Returns a 0-d tensor.
    """
    h = get_head(head)
    total, count = None, 0
    like = next(iter(net_p.parameters()))
    with torch.no_grad():
        for x, _ in batches(data, batch_size, progress, "KL"):
            xi = as_input(x, like)
            fp, fq = h.check(net_p(xi)), h.check(net_q(xi))
            if fp.shape != fq.shape:
                raise ParameterError(
                    f"kl: the networks' outputs differ in shape: {tuple(fp.shape)} vs {tuple(fq.shape)}"
                )
            s = h.kl(fp, fq).sum()
            total = s if total is None else total + s
            count += int(x.shape[0])
    if total is None:
        raise ParameterError("data: no examples")
    return total / count
