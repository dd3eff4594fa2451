"""Fisher matrix representations sharing one protocol (:class:`FisherMatrix`).

``Dense``, ``Diagonal``, ``BlockDiagonal`` (per layer / parameter group), ``KFAC`` and ``EKFAC``
(Kronecker factors per Linear/Conv2d layer), ``LowRank`` (top-k eigenpairs) and ``Implicit``
(matrix-free products). Each offers ``mv``, ``quad``, ``diag``, ``trace``, ``solve``, ``to_dense``,
``eig`` / ``topk``, ``+`` and scalar ``*``, ``state_dict`` / ``load_state_dict`` and
``as_linear_operator``.
"""

from __future__ import annotations

from .base import (
    DenseTooLargeError,
    FisherMatrix,
    ScaledMatrix,
    SumMatrix,
    from_state_dict,
    max_dense_bytes,
    set_max_dense_bytes,
)
from .block import BlockDiagonal
from .dense import Dense, Diagonal
from .implicit import Implicit
from .kfac import EKFAC, KFAC, KronBlock
from .layout import ParamLayout, Vector
from .lowrank import LowRank, lowrank_of

__all__ = [
    "EKFAC",
    "KFAC",
    "BlockDiagonal",
    "Dense",
    "DenseTooLargeError",
    "Diagonal",
    "FisherMatrix",
    "Implicit",
    "KronBlock",
    "LowRank",
    "ParamLayout",
    "ScaledMatrix",
    "SumMatrix",
    "Vector",
    "from_state_dict",
    "lowrank_of",
    "max_dense_bytes",
    "set_max_dense_bytes",
]
