"""The exact mean KL between two networks' predictive distributions."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParameterError
from .batch import Adapter, get_adapter
from .data import iter_raw, n_batches, progress_bar
from .heads import Head, get_head
from .passes import fisher_passes, unwrap


def kl(
    net_p: nn.Module,
    net_q: nn.Module,
    data: Any,
    head: str | Head | Any = "categorical",
    *,
    batch_size: int = 256,
    progress: bool | None = None,
    adapter: Adapter | None = None,
    positions: str = "sum",
) -> Tensor:
    """mean over x of KL[p(y | x, net_p) ‖ p(y | x, net_q)], exact per example (the head's KL).

    With outputs ``[n, *P, C]`` the KL of an example is the sum over its unmasked positions (the head is
    independent per position), and the result the mean over examples — or, with ``positions="mean"``, the
    mean over unmasked positions; the same conventions as :func:`fisherkl.nn.fisher`, so that with net_q =
    net_p shifted by δ this is what ½ δᵀ F δ predicts. ``adapter`` reads batches as there. Returns a 0-d tensor.
    """
    if positions not in ("sum", "mean"):
        raise ParameterError(f"positions must be 'sum' or 'mean', got {positions!r}")
    for name, net in (("net_p", net_p), ("net_q", net_q)):
        if not isinstance(net, nn.Module):
            raise ParameterError(f"kl: {name} must be a torch.nn.Module, got {type(net).__name__}")
    h = get_head(head)
    ad = get_adapter(adapter)
    net_p, net_q = unwrap(net_p), unwrap(net_q)
    like = next(iter(net_p.parameters()), None)
    if like is None:
        raise ParameterError("kl: net_p has no parameters (its dtype and device are unknown)")
    total: Tensor | None = None
    count = 0
    with torch.no_grad(), fisher_passes():
        for raw in progress_bar(iter_raw(data, batch_size), n_batches(data, batch_size), progress, "KL"):
            batch = ad.batch(raw).to(like)
            fp = h.check(ad.outputs(ad.call(net_p, batch)))
            fq = h.check(ad.outputs(ad.call(net_q, batch)))
            if fp.shape != fq.shape:
                raise ParameterError(
                    f"kl: the networks' outputs differ in shape: {tuple(fp.shape)} vs {tuple(fq.shape)}"
                )
            if fp.dtype in (torch.bfloat16, torch.float16):  # the KL of low-precision outputs, in float32
                fp, fq = fp.float(), fq.float()
            k = h.kl(fp, fq)
            _, mask = ad.targets(batch, fp)
            if mask is not None:
                k = torch.where(mask, k, torch.zeros_like(k))
            s = k.sum()
            total = s if total is None else total + s
            if positions == "sum":
                count += batch.n
            else:
                count += int(mask.sum()) if mask is not None else math.prod(fp.shape[:-1])
    if total is None:
        raise ParameterError("data: no examples")
    return total / max(count, 1)
