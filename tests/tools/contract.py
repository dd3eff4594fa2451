"""The contract every public entry point keeps, as code: a call ends in a correct value, or in a named
fisherkl error; never a silent NaN/inf/wrong value, never an internal exception, never a hang.

Outcome classes (as in issue 15): ``correct``, ``named error`` (a FisherKLError), ``other clean error``
(a TypeError/ValueError/OSError raised on purpose by fisherkl's own code), ``silent`` (a value that is
NaN/inf/negative/wrong against an oracle, or an invalid argument silently accepted), ``internal`` (any
other exception, or one raised inside torch/numpy/Python rather than by fisherkl), ``slow`` (over the
time limit).
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

import fisherkl

CLASSES = ("correct", "named error", "other clean error", "silent", "internal", "slow")
_PACKAGE = os.path.dirname(fisherkl.__file__)


class _Timeout(BaseException):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def raised_by_fisherkl(exc: BaseException) -> bool:
    """Whether the innermost frame of the traceback is a ``raise`` statement in fisherkl's own code (not
    Python's or torch's message from inside an operation that fisherkl called)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or not frames[-1].filename.startswith(_PACKAGE):
        return False
    return (frames[-1].line or "").lstrip().startswith("raise")


def classify(call: Callable[[], Any], check: Callable[[Any], bool] | None, timeout: float = 30.0) -> tuple[str, str]:
    """Run ``call`` and classify it. ``check(result)`` says whether a returned value is correct;
    ``check=None`` means the arguments are invalid and any returned value is a silent acceptance."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    start = time.perf_counter()
    try:
        result = call()
    except _Timeout:
        return "slow", f"> {timeout:g} s"
    except fisherkl.FisherKLError as e:
        return "named error", f"{type(e).__name__}: {str(e)[:160]}"
    except OSError as e:  # the operating system's own word on a file (no space, no such file): clean
        return "other clean error", f"{type(e).__name__}: {str(e)[:160]}"
    except (TypeError, ValueError, MemoryError) as e:
        cls = "other clean error" if raised_by_fisherkl(e) else "internal"
        return cls, f"{type(e).__name__}: {str(e)[:160]}"
    except Exception as e:
        return "internal", f"{type(e).__name__}: {str(e)[:160]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - start
    if elapsed > timeout:
        return "slow", f"{elapsed:.1f} s"
    if check is None:
        return "silent", f"accepted: returned {_short(result)}"
    try:
        ok = bool(check(result))
    except Exception as e:  # a result the check cannot even read (wrong type or shape) is not correct
        return "silent", f"unreadable result {_short(result)} ({type(e).__name__}: {e})"
    return ("correct", "") if ok else ("silent", f"returned {_short(result)}")


def _short(x: Any) -> str:
    if isinstance(x, fisherkl.Estimate):
        return f"{_short(x.value)} ± {_short(x.error)}"
    if isinstance(x, torch.Tensor):
        return str(x.detach().reshape(-1)[:6].tolist()) + ("…" if x.numel() > 6 else "")
    return repr(x)[:120]


def tolerance(dtype: torch.dtype) -> float:
    """Relative agreement asked of a value beyond its stated error: ~4.5e6 ulp in float64 (2e-9 — the
    extreme-θ routes go through logs and exps of numbers near 700), 1.7e4 ulp in float32 (2e-3)."""
    return 2e-9 if dtype == torch.float64 else 2e-3


def matches(value: torch.Tensor, error: torch.Tensor | None, truth: list[list[float]], mc: bool = False) -> bool:
    """Finite, and within the stated error (six standard errors for Monte Carlo) plus the dtype's
    tolerance times the largest entry of the truth, entry by entry (plus the dtype's smallest normal
    number: a truth below it rounds to a subnormal or 0)."""
    v = value.detach().to(torch.float64).reshape(len(truth), len(truth))
    t = torch.tensor(truth, dtype=torch.float64)
    if not bool(torch.isfinite(v).all()) or not bool(torch.isfinite(t).all()):
        return False
    e = torch.zeros_like(v) if error is None else error.detach().to(torch.float64).reshape(v.shape)
    allowed = (6 if mc else 1) * e + tolerance(value.dtype) * t.abs().max() + torch.finfo(value.dtype).tiny
    return bool(((v - t).abs() <= allowed).all())
