"""Running averages of Fisher matrices across refreshes, keeping each representation's structure."""

from __future__ import annotations

from dataclasses import replace

from ..matrix import EKFAC, KFAC, BlockDiagonal, Dense, Diagonal, FisherMatrix


def average_fishers(old: FisherMatrix, new: FisherMatrix, ema: float) -> FisherMatrix:
    """ema·old + (1 − ema)·new, keeping the representation's structure.

    KFAC averages its factors (A, G) and EKFAC projects the old matrix onto the new eigenbasis, as
    KFAC optimisers do; dense, diagonal and block-diagonal matrices average exactly. For any other
    pair (different types or layouts, low-rank, implicit) the new matrix is returned.
    """
    if ema == 0 or type(old) is not type(new) or old.layout != new.layout:
        return new
    a, b = float(ema), 1.0 - float(ema)
    if isinstance(old, (Dense, Diagonal)):
        return old * a + new * b
    if isinstance(old, BlockDiagonal):
        assert isinstance(new, BlockDiagonal)
        if old.groups != new.groups:
            return new
        return BlockDiagonal(new.groups, [a * x + b * y for x, y in zip(old.blocks, new.blocks)], new.layout)
    if isinstance(old, KFAC):
        assert isinstance(new, KFAC)
        blocks = [
            replace(nb, tensors={k: a * ob.tensors[k] + b * nb.tensors[k] for k in ("A", "G")})
            for ob, nb in zip(old.blocks, new.blocks)
        ]
        return KFAC(blocks, new.rest, a * old.rest_diag + b * new.rest_diag, new.layout)
    if isinstance(old, EKFAC):
        assert isinstance(new, EKFAC)
        blocks = []
        for ob, nb in zip(old.blocks, new.blocks):
            mg = nb.tensors["QG"].T @ ob.tensors["QG"]
            projected = (mg * mg) @ ob.tensors["S"]  # diag of the old block in the new basis
            if "QA" in nb.tensors:
                ma = nb.tensors["QA"].T @ ob.tensors["QA"]
                projected = projected @ (ma * ma).T
            blocks.append(replace(nb, tensors={**nb.tensors, "S": a * projected + b * nb.tensors["S"]}))
        return EKFAC(blocks, new.rest, a * old.rest_diag + b * new.rest_diag, new.layout)
    return new


__all__ = ["average_fishers"]
