"""The Fisher information of neural networks: F(w) = mean over x of Jₓᵀ I_head(net(x)) Jₓ.

``fisher(net, data, head, kind, representation)`` streams the data and returns a
:class:`fisherkl.matrix.FisherMatrix`; ``kl(net_p, net_q, data, head)`` is the exact mean KL that
½ δᵀ F δ approximates; ``heads`` holds the output distributions (applied per position of outputs
``[n, *P, C]``); :class:`Adapter` says how a batch becomes inputs, outputs, labels and a mask
(:func:`causal_lm` for language models); ``rules`` holds the layer rules.
What a change costs: :func:`predict_kl` (any δ, network or edit), :func:`prune` (magnitude / OBD / OBS),
:func:`quantization_sensitivity` and :func:`allocate_bits`, :func:`merge` (Fisher merging).
"""

from __future__ import annotations

from . import heads
from .approx import ApproximationReport, approximation_report
from .batch import Adapter, Batch, causal_lm
from .bits import allocate_bits
from .change import ChangeCost, predict_kl
from .checkpoint import CheckpointMismatchError
from .engine import per_example_gradients
from .ewc import EWC, merge_fishers
from .fisher import REPRESENTATIONS, fisher
from .heads import Bernoulli, CallableHead, Categorical, Gaussian, GaussianVar, Head, Poisson, get_head
from .kl import kl
from .merge import MergeResult, merge
from .optim import NaturalGradient, average_fishers
from .params import layout_of, parameters_vector, perturbed
from .plan import Plan, plan
from .prune import PruneResult, prune, pruning_curve
from .quantize import Sensitivity, quantization_sensitivity, quantize, round_to_nearest

__all__ = [
    "EWC",
    "REPRESENTATIONS",
    "Adapter",
    "ApproximationReport",
    "Batch",
    "Bernoulli",
    "CallableHead",
    "Categorical",
    "ChangeCost",
    "CheckpointMismatchError",
    "Gaussian",
    "GaussianVar",
    "Head",
    "MergeResult",
    "NaturalGradient",
    "Plan",
    "Poisson",
    "PruneResult",
    "Sensitivity",
    "allocate_bits",
    "approximation_report",
    "average_fishers",
    "causal_lm",
    "fisher",
    "get_head",
    "heads",
    "kl",
    "layout_of",
    "merge",
    "merge_fishers",
    "parameters_vector",
    "per_example_gradients",
    "perturbed",
    "plan",
    "predict_kl",
    "prune",
    "pruning_curve",
    "quantization_sensitivity",
    "quantize",
    "round_to_nearest",
]
