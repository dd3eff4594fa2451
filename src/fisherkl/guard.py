"""Checks on results whose mathematics fixes their finiteness and sign.

A Fisher information is finite, symmetric and positive semi-definite (its diagonal ≥ 0); a mean
score E[∇log p] is 0. A result that violates this beyond the rounding of its own computation (and
beyond its stated error) is not returned: :class:`~fisherkl.errors.NumericalError` says which
quantity, at which θ, and what to do instead (float64, another route).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import NumericalError

_SAFE_EIG_DTYPES = (torch.float32, torch.float64)


def shown_theta(theta: Tensor, index: tuple[int, ...] = ()) -> str:
    """θ (at batch ``index``) for a message."""
    t = theta.detach()
    if t.ndim > 1 and index:
        t = t[index]
    elif t.ndim > 1:
        t = t.reshape(-1, t.shape[-1])[0]
    values = ", ".join(f"{float(v):.6g}" for v in t.reshape(-1)[:8])
    more = ", …" if t.numel() > 8 else ""
    where = f" (batch index {index})" if index else ""
    return f"[{values}{more}]{where}"


def advice(theta: Tensor, route: str) -> str:
    parts = []
    if theta.dtype != torch.float64:
        parts.append("compute in float64")
    parts.append(
        f"use another route than {route!r} (fisherkl.available_routes(model, theta) lists them; 'closed' where the "
        "family has it)"
    )
    return "; ".join(parts)


def _first(mask: Tensor) -> tuple[int, ...]:
    """The batch index of the first True entry of ``mask`` ``[*batch]`` (empty tuple for no batch)."""
    if mask.ndim == 0:
        return ()
    return tuple(int(i) for i in mask.nonzero()[0].tolist())


def check_information(
    name: str, theta: Tensor, value: Tensor, error: Tensor | None, route: str, *, what: str = "Fisher information"
) -> None:
    """Raise :class:`NumericalError` unless ``value`` ``[*b, d, d]`` is finite, has a diagonal ≥ 0 and
    (for routes other than 'closed') is positive semi-definite, each up to rounding and the stated error."""
    v = value.detach()
    if v.numel() == 0:
        return
    batch = v.shape[:-2]
    if not bool(torch.isfinite(v.sum())):  # one pass; +inf meeting −inf or NaN: look closer
        bad = ~torch.isfinite(v).flatten(-2).all(-1)
        if bool(bad.any()):
            idx = _first(bad)
            entry = v[idx] if idx else v.reshape(-1, *v.shape[-2:])[0]
            kind = "NaN" if bool(torch.isnan(entry).any()) else "infinite"
            finfo = torch.finfo(v.dtype)
            overflow = (
                f"; if the true value exceeds the largest {v.dtype} ({finfo.max:.3g}) it cannot be represented: "
                "rescale the parameters (fisherkl.reparametrize, e.g. to log-coordinates)"
                if kind == "infinite"
                else ""
            )
            raise NumericalError(
                f"{name}: the {what} by route {route!r} came out {kind} at theta = {shown_theta(theta, idx)} "
                f"(entries {entry.tolist() if entry.numel() <= 16 else '…'}); {advice(theta, route)}{overflow}"
            )
    d = v.shape[-1]
    closed = route.split("/")[0] == "closed"
    if (closed or d < 2) and bool(v.diagonal(dim1=-2, dim2=-1).min() >= 0):
        return  # the fast path of closed forms: finite with a diagonal ≥ 0 is all there is to check
    eps = torch.finfo(v.dtype).eps
    size = v.abs().flatten(-2).amax(-1)
    rounding = 64 * d * eps * size
    err = None if error is None else error.detach().to(v.dtype)
    diag = v.diagonal(dim1=-2, dim2=-1)
    slack = rounding.unsqueeze(-1) + (0 if err is None else err.diagonal(dim1=-2, dim2=-1))
    negative = (diag < -slack).any(-1)
    if bool(negative.any()):
        idx = _first(negative)
        entry = diag[idx] if idx else diag.reshape(-1, d)[0]
        raise NumericalError(
            f"{name}: the {what} by route {route!r} has a negative diagonal entry ({float(entry.min()):.6g}) at "
            f"theta = {shown_theta(theta, idx)}, beyond rounding and its stated error: a Fisher information is "
            f"positive semi-definite, so the computation lost its accuracy here; {advice(theta, route)}"
        )
    if closed or d < 2:
        return
    work = v if v.dtype in _SAFE_EIG_DTYPES else v.float()
    eig = torch.linalg.eigvalsh(0.5 * (work + work.transpose(-1, -2)))
    slack_eig = rounding.to(work.dtype)
    if err is not None:
        slack_eig = slack_eig + torch.linalg.matrix_norm(err.to(work.dtype))
    indefinite = eig[..., 0] < -slack_eig
    if bool(indefinite.any()):
        idx = _first(indefinite) if len(batch) else ()
        smallest = eig[idx][..., 0] if idx else eig.reshape(-1, d)[0, 0]
        raise NumericalError(
            f"{name}: the {what} by route {route!r} is not positive semi-definite at theta = "
            f"{shown_theta(theta, idx)} (smallest eigenvalue {float(smallest):.6g}, beyond rounding and its stated "
            f"error); {advice(theta, route)}"
        )


def check_mean_score(
    name: str, theta: Tensor, mean: Tensor, error: Tensor, info: Tensor, route: str, monte_carlo: bool
) -> None:
    """E[score] = 0 (Bartlett's first identity): a mean score ``[*b, d]`` far from 0 means the nodes or
    samples missed part of the probability mass, so the Fisher from them is wrong; refuse it."""
    m = mean.detach().abs()
    if m.numel() == 0:
        return
    err = error.detach().to(m.dtype)
    root = info.detach().diagonal(dim1=-2, dim2=-1).abs().sqrt()
    # rounding floor: E[s] is a sum of terms of size up to √I (the largest over the coordinates)
    floor = 1e3 * torch.finfo(m.dtype).eps * root.amax(-1, keepdim=True)
    if monte_carlo:
        slack = 8 * err + 1e-3 * root + floor  # eight standard errors
    else:
        rel = 1e-5 if m.dtype == torch.float64 else 3e-2
        slack = 4 * err + rel * root + floor
    bad = (m > slack) & torch.isfinite(m)
    if bool(bad.any()):
        idx = _first(bad.any(-1))
        got = mean[idx] if idx else mean.reshape(-1, mean.shape[-1])[0]
        how = "samples" if monte_carlo else "nodes of the exact expectation"
        raise NumericalError(
            f"{name}: route {route!r} at theta = {shown_theta(theta, idx)}: the mean score came out "
            f"{[float(x) for x in got.detach()][:8]} instead of 0, so the {how} do not resolve the distribution "
            f"(part of the probability mass is out of their reach) and the Fisher information from them would be "
            f"wrong; {advice(theta, route)}"
        )


def finite_or_raise(name: str, theta: Any, value: Tensor, what: str, hint: str) -> Tensor:
    """``value`` if every entry is finite, else :class:`NumericalError` naming ``what`` and θ."""
    v = value.detach()
    if v.numel() and not bool(torch.isfinite(v).all()):
        t = theta if isinstance(theta, Tensor) else torch.as_tensor(theta)
        raise NumericalError(f"{name}: {what} came out non-finite at theta = {shown_theta(t)}; {hint}")
    return value


__all__ = ["check_information", "check_mean_score", "finite_or_raise", "shown_theta"]
