"""The Fisher information of neural networks: F(w) = mean over x of Jₓᵀ I_head(net(x)) Jₓ.

``fisher(net, data, head, kind, representation)`` streams the data and returns a
:class:`fisherkl.matrix.FisherMatrix`; ``kl(net_p, net_q, data, head)`` is the exact mean KL that
½ δᵀ F δ approximates; ``heads`` holds the output distributions (applied per position of outputs
``[n, *P, C]``); :class:`Adapter` says how a batch becomes inputs, outputs, labels and a mask
(:func:`causal_lm` for language models); ``rules`` holds the layer rules.
"""

from __future__ import annotations

from . import heads
from .approx import ApproximationReport, approximation_report
from .batch import Adapter, Batch, causal_lm
from .checkpoint import CheckpointMismatchError
from .engine import per_example_gradients
from .ewc import EWC, merge_fishers
from .fisher import REPRESENTATIONS, fisher
from .heads import Bernoulli, CallableHead, Categorical, Gaussian, GaussianVar, Head, Poisson, get_head
from .kl import kl
from .optim import NaturalGradient, average_fishers
from .params import layout_of, parameters_vector, perturbed
from .plan import Plan, plan

__all__ = [
    "EWC",
    "REPRESENTATIONS",
    "Adapter",
    "ApproximationReport",
    "Batch",
    "Bernoulli",
    "CallableHead",
    "Categorical",
    "CheckpointMismatchError",
    "Gaussian",
    "GaussianVar",
    "Head",
    "NaturalGradient",
    "Plan",
    "Poisson",
    "approximation_report",
    "average_fishers",
    "causal_lm",
    "fisher",
    "get_head",
    "heads",
    "kl",
    "layout_of",
    "merge_fishers",
    "parameters_vector",
    "per_example_gradients",
    "perturbed",
    "plan",
]
