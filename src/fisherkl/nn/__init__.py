"""The Fisher information of neural networks: F(w) = mean over x of Jₓᵀ I_head(net(x)) Jₓ.

``fisher(net, data, head, kind, representation)`` streams the data and returns a
:class:`fisherkl.matrix.FisherMatrix`; ``kl(net_p, net_q, data, head)`` is the exact mean KL that
½ δᵀ F δ approximates; ``heads`` holds the output distributions.
"""

from __future__ import annotations

from . import heads
from .fisher import REPRESENTATIONS, fisher
from .heads import Bernoulli, CallableHead, Categorical, Gaussian, GaussianVar, Head, Poisson, get_head
from .kl import kl
from .params import layout_of, parameters_vector, perturbed

__all__ = [
    "REPRESENTATIONS",
    "Bernoulli",
    "CallableHead",
    "Categorical",
    "Gaussian",
    "GaussianVar",
    "Head",
    "Poisson",
    "fisher",
    "get_head",
    "heads",
    "kl",
    "layout_of",
    "parameters_vector",
    "perturbed",
]
