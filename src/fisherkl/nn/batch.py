"""How a batch becomes network inputs, outputs, labels and a mask: :class:`Adapter`.

A batch may be a tensor ``x``; a pair ``(inputs, y)`` whose inputs are a tensor, a tuple of tensors
(positional arguments, ``net(x1, x2)``) or a dict (keyword arguments); or a dict such as a
HuggingFace batch ``{"input_ids", "attention_mask", "labels"}`` (labels are taken out, the rest are
keyword arguments). The network's return value may be a tensor, a tuple (its first element), or a
model-output object / dict with ``logits``.

Outputs are ``[n, *P, C]`` (P: positions, possibly none); labels ``[n, *P]`` (class indices) or
``[n, *P, C]``; the mask ``[n, *P]`` (True where a position counts) combines labels equal to
``ignore_index`` (−100, as in ``torch.nn.functional.cross_entropy``) and an explicit mask. A causal
language model predicts token t+1 at position t: :func:`causal_lm` shifts outputs and labels by one.
Subclass :class:`Adapter` (``call``, ``outputs``, ``targets``) for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ParameterError


@dataclass
class Batch:
    """One batch as the network sees it: positional and keyword inputs, labels (if any), size n."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    labels: Tensor | None = None
    n: int = 0
    raw: Any = None

    def tensors(self) -> list[Tensor]:
        """Every input tensor (positional, then keyword)."""
        return [t for t in (*self.args, *self.kwargs.values()) if isinstance(t, Tensor)]

    def take(self, index: Tensor) -> Batch:
        """The examples ``index`` (tensors whose first dimension is n are indexed, others kept)."""

        def pick(t: Any) -> Any:
            return t[index.to(t.device)] if isinstance(t, Tensor) and t.ndim > 0 and t.shape[0] == self.n else t

        return replace(
            self,
            args=tuple(pick(a) for a in self.args),
            kwargs={k: pick(v) for k, v in self.kwargs.items()},
            labels=pick(self.labels),
            n=int(index.numel()),
        )

    def to(self, like: Tensor) -> Batch:
        """Floating inputs in the network's dtype and device; other tensors (tokens, masks) moved only."""

        def move(t: Any) -> Any:
            if not isinstance(t, Tensor):
                return t
            if t.is_floating_point():
                return t.to(dtype=like.dtype, device=like.device)
            return t.to(device=like.device)

        labels = None if self.labels is None else self.labels.to(like.device)
        return replace(
            self,
            args=tuple(move(a) for a in self.args),
            kwargs={k: move(v) for k, v in self.kwargs.items()},
            labels=labels,
        )


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for o in obj:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


class Adapter:
    """Batch → inputs, network return value → outputs ``[n, *P, C]``, batch → labels and mask.

    Parameters
    ----------
    labels:
        Key of the labels in a dict batch (default ``"labels"``; absent → no labels).
    mask:
        Key of an explicit position mask in a dict batch (e.g. ``"attention_mask"``: 1 where a token
        counts), or a callable ``Batch ↦ [n, *P]`` tensor; None (default): only ``ignore_index`` masks.
    output:
        Attribute / key holding the outputs in a model-output object or dict (default ``"logits"``);
        a tuple return value gives its first element.
    shift:
        Outputs at position t predict the label at t + ``shift`` along the first position dimension
        (1 for causal language models); the last ``shift`` positions have no label and drop out.
    ignore_index:
        Integer labels equal to it are masked (−100 default; None: no masking by label).
    """

    def __init__(
        self,
        labels: str | None = "labels",
        mask: str | Callable[[Batch], Tensor] | None = None,
        output: str = "logits",
        shift: int = 0,
        ignore_index: int | None = -100,
    ) -> None:
        if int(shift) < 0:
            raise ParameterError(f"Adapter: shift must be >= 0, got {shift}")
        self.labels_key, self.mask_key, self.output_key = labels, mask, output
        self.shift, self.ignore_index = int(shift), ignore_index

    # --- batches ---------------------------------------------------------------------------------------
    def batch(self, raw: Any) -> Batch:
        """Parse one batch as given by the data (see the module doc)."""
        labels: Any = None
        kwargs: dict[str, Any] = {}
        if isinstance(raw, Tensor):
            args: tuple[Any, ...] = (raw,)
        elif isinstance(raw, Mapping):
            kwargs = {k: v for k, v in raw.items() if k != self.labels_key}
            labels = raw.get(self.labels_key) if self.labels_key is not None else None
            args = ()
        elif isinstance(raw, (tuple, list)) and raw:
            inputs = raw[0]
            labels = raw[1] if len(raw) > 1 else None
            if isinstance(inputs, Tensor):
                args = (inputs,)
            elif isinstance(inputs, Mapping):
                args, kwargs = (), dict(inputs)
            elif isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, Tensor) for t in inputs):
                args = tuple(inputs)
            else:
                raise ParameterError(
                    "data: the inputs of a batch (inputs, y) must be a tensor, a tuple of tensors or a dict of "
                    f"tensors, got {type(inputs).__name__}"
                )
        else:
            raise ParameterError(
                "data: each batch must be a tensor x, a pair (inputs, y) or a dict of tensors, got "
                f"{type(raw).__name__}"
            )
        if labels is not None and not isinstance(labels, Tensor):
            raise ParameterError(f"data: labels must be a tensor, got {type(labels).__name__}")
        first = _first_tensor((args, kwargs))
        if first is None or first.ndim == 0:
            raise ParameterError("data: a batch needs at least one input tensor with a batch dimension")
        n = int(first.shape[0])
        if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
            raise ParameterError(f"data: the inputs have {n} examples but the labels have shape {tuple(labels.shape)}")
        return Batch(args, kwargs, labels, n, raw)

    def call(self, net: nn.Module, batch: Batch) -> Any:
        """The network's return value for a batch."""
        return net(*batch.args, **batch.kwargs)

    # --- outputs and targets ---------------------------------------------------------------------------
    def raw_outputs(self, ret: Any) -> Tensor:
        """The output tensor inside the network's return value (before the shift)."""
        if isinstance(ret, Tensor):
            return ret
        if isinstance(ret, Mapping) and self.output_key in ret:
            return ret[self.output_key]
        found = getattr(ret, self.output_key, None)
        if isinstance(found, Tensor):
            return found
        if isinstance(ret, (tuple, list)) and ret and isinstance(ret[0], Tensor):
            return ret[0]
        raise ParameterError(
            f"the network returned a {type(ret).__name__}; expected a tensor [n, *positions, C], a tuple (its "
            f"first element is used) or an object with .{self.output_key}; pass Adapter(output=...) to choose"
        )

    def outputs(self, ret: Any) -> Tensor:
        """Outputs ``[n, *P, C]`` from the network's return value (shifted for causal models)."""
        out = self.raw_outputs(ret)
        if self.shift:
            if out.ndim < 3 or out.shape[1] <= self.shift:
                raise ParameterError(
                    f"Adapter(shift={self.shift}): outputs must be [n, T, C] with T > {self.shift}, got "
                    f"{tuple(out.shape)}"
                )
            out = out[:, : -self.shift]
        return out

    def targets(self, batch: Batch, outputs: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """(labels, mask) aligned with outputs ``[n, *P, C]``: labels ``[n, *P]`` or ``[n, *P, C]`` (None if the
        batch has none), mask ``[n, *P]`` bool (None: every position counts). Integer labels of shape
        ``[n, *P]`` (class indices) equal to ``ignore_index`` are masked."""
        labels = batch.labels
        mask = self._explicit_mask(batch)
        if self.shift:
            if labels is not None:
                labels = labels[:, self.shift :]
            if mask is not None:
                mask = mask[:, self.shift :]
        pos = tuple(outputs.shape[:-1])
        if mask is not None:
            if tuple(mask.shape) != pos:
                raise ParameterError(
                    f"mask: must have the outputs' leading shape {pos} ([n, *positions]), got {tuple(mask.shape)}"
                )
            mask = mask.to(device=outputs.device, dtype=torch.bool)
        if (
            labels is not None
            and self.ignore_index is not None
            and not labels.is_floating_point()
            and tuple(labels.shape) == pos
        ):
            keep = labels != self.ignore_index
            mask = keep if mask is None else mask & keep
        return labels, mask

    def _explicit_mask(self, batch: Batch) -> Tensor | None:
        if self.mask_key is None:
            return None
        if callable(self.mask_key):
            m = self.mask_key(batch)
        else:
            src = batch.raw if isinstance(batch.raw, Mapping) else batch.kwargs
            if self.mask_key not in src:
                raise ParameterError(f"mask: the batch has no entry {self.mask_key!r}; keys: {sorted(src)}")
            m = src[self.mask_key]
        if not isinstance(m, Tensor):
            raise ParameterError(f"mask: must be a tensor [n, *positions], got {type(m).__name__}")
        return m.bool()

    def __repr__(self) -> str:
        return (
            f"Adapter(labels={self.labels_key!r}, mask={self.mask_key!r}, output={self.output_key!r}, "
            f"shift={self.shift}, ignore_index={self.ignore_index})"
        )


def causal_lm(mask: str | Callable[[Batch], Tensor] | None = None, ignore_index: int | None = -100) -> Adapter:
    """The adapter for causal language models: logits ``[n, T, V]`` at position t predict token t + 1, so
    outputs and labels are shifted by one (the last position has no label). Labels default to the batch's
    ``labels`` (HuggingFace convention: the input ids, −100 where a token does not count)."""
    return Adapter(mask=mask, shift=1, ignore_index=ignore_index)


def get_adapter(adapter: Adapter | None) -> Adapter:
    if adapter is None:
        return DEFAULT
    if not isinstance(adapter, Adapter):
        raise ParameterError(f"adapter must be a fisherkl.nn.Adapter, got {type(adapter).__name__}")
    return adapter


DEFAULT = Adapter()

__all__ = ["DEFAULT", "Adapter", "Batch", "causal_lm", "get_adapter"]
