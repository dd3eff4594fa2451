"""Layer rules, one file per family of layers, chosen by module type (see :mod:`.base`).

Importing this package registers the built-in rules: ``nn.Linear``; ``nn.Conv1d/2d/3d`` (any stride,
dilation, padding mode and groups); ``nn.Embedding``; ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``,
BatchNorm in eval mode; ``nn.MultiheadAttention``; ``nn.GRU`` and ``nn.LSTM``; HuggingFace's ``Conv1D``.
Any other module with parameters gets :class:`~.generic.GenericRule` (torch.func on that module alone).
"""

from __future__ import annotations

from . import attention, conv, embedding, huggingface, linear, norm, recurrent  # noqa: F401  (registration)
from .base import Call, Rule, batch_first, flat_tensors, register, rule_class
from .generic import GenericRule
from .linear import LinearPart, LinearRule, PartsRule

__all__ = [
    "Call",
    "GenericRule",
    "LinearPart",
    "LinearRule",
    "PartsRule",
    "Rule",
    "batch_first",
    "flat_tensors",
    "register",
    "rule_class",
]
