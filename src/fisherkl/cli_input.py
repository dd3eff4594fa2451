"""What the ``fisherkl`` command accepts, and how it says what it cannot accept.

* Numbers are ASCII decimals (``1``, ``-2.5``, ``.5``, ``1e-3``, ``inf``, ``nan``). Python's ``float``
  would also take ``2_5`` (as 25) and digits of other scripts (``٣`` as 3); the command refuses
  both, so a number typed is the number read.
* Unknown names (families, subcommands, options, choices) get a "did you mean" from the known ones.
* ``--json`` output is strict JSON: a non-finite float becomes ``null`` and is listed, with its
  value as text, under the record's ``"non_finite"`` key.
* ``report --out`` is checked before anything is computed: not empty, not an existing file, not
  under a file, every name within the file system's limit, writable (a probe file is written and
  removed), and with room for the report.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit status 2."""


_FLOAT = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)", re.ASCII | re.IGNORECASE)
_INT = re.compile(r"[+-]?\d+", re.ASCII)
#: bytes a report needs at most (PNG plots and the page, measured ~1 MB; with margin)
REPORT_BYTES = 8 * 1024**2


def number(text: str, what: str) -> float:
    """One ASCII decimal number (see the module doc), else a :class:`UsageError` naming ``what``."""
    s = text.strip()
    if _FLOAT.fullmatch(s):
        return float(s)
    if any(ch.isdigit() and not ch.isascii() for ch in s):
        raise UsageError(f"{what}: {text!r} contains non-ASCII digits; write numbers with the digits 0-9")
    if "_" in s:
        raise UsageError(f"{what}: {text!r} contains '_'; write numbers without digit separators")
    raise UsageError(f"{what} must be a number, got {text!r}")


def vector(text: str, what: str) -> list[float]:
    """Comma-separated numbers."""
    parts = [p for p in text.replace(" ", "").split(",") if p != ""]
    if not parts:
        raise UsageError(f"{what} is empty")
    out = []
    for p in parts:
        try:
            out.append(number(p, what))
        except UsageError as exc:
            if "must be a number" in str(exc):
                raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None
            raise
    return out


def integer_or_float(text: str, what: str) -> int | float:
    """An integer when written as one (``20``), else a float (``2.5``, ``1e30``)."""
    s = text.strip()
    if _INT.fullmatch(s):
        return int(s)
    return number(s, what)


def bounded_int(low: int, high: int, what: str) -> Any:
    """An argparse ``type=`` for integers in [low, high]."""

    def parse(text: str) -> int:
        s = text.strip()
        if not _INT.fullmatch(s):
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}")
        value = int(s)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what}; got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    """An argparse ``type=`` for finite numbers > 0."""
    try:
        value = number(text, "value")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("value: ")) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def suggest(word: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest known word, or ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def parser_error_hint(parser: argparse.ArgumentParser, message: str) -> str:
    """A "did you mean" for argparse's messages about unknown options and invalid choices."""
    m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if m:
        return suggest(m.group(1), re.findall(r"'?([\w.-]+)'?", m.group(2)))
    m = re.search(r"unrecognized arguments: (.*)", message)
    if m:
        options = _all_option_strings(parser)
        for token in m.group(1).split():
            if token.startswith("-"):
                hint = suggest(token.split("=")[0], options)
                if hint:
                    return hint
    return ""


def unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Refuse an unknown ``--option`` before argparse does, with a "did you mean" (argparse would
    first complain about a required option the typo was meant to be)."""
    known = _all_option_strings(parser)
    for token in argv:
        if token == "--":
            return
        name = token.split("=")[0]
        if name.startswith("--") and name not in known:
            raise UsageError(f"unknown option {name}{suggest(name, known)}")


def _all_option_strings(parser: argparse.ArgumentParser) -> set[str]:
    out: set[str] = set()
    for action in parser._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _all_option_strings(sub)
    return out


def strict_json(record: Any) -> Any:
    """``record`` with every non-finite float replaced by None; each dict that had one gets a
    ``"non_finite"`` entry mapping the path of each replaced value to its text ("inf", "nan")."""
    if isinstance(record, list):
        return [strict_json(r) for r in record]
    if not isinstance(record, dict):
        return _replace(record, "", {})
    found: dict[str, str] = {}
    out = {k: _replace(v, k, found) for k, v in record.items()}
    if found:
        out["non_finite"] = found
    return out


def _replace(value: Any, path: str, found: dict[str, str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found[path] = str(value)
        return None
    if isinstance(value, dict):
        return {k: _replace(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def check_destination(out: str, need_bytes: int = REPORT_BYTES) -> tuple[Path, bool]:
    """Check that directory ``out`` can take the report, before any work; return it and whether it
    was created here (so that a failed run can remove it again)."""
    if not out.strip():
        raise UsageError("--out is empty; give a directory (it is created if missing)")
    path = Path(out)
    existing, found, limit = Path(path.absolute().anchor), True, 255
    for part in path.absolute().parts[1:]:  # from the root down: names too long before any lookup fails
        if found:
            try:
                limit = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
            except (OSError, ValueError):
                limit = 255
        if len(os.fsencode(part)) > limit:
            raise UsageError(
                f"--out: the name {part[:40]}… is {len(os.fsencode(part))} bytes; this file system allows {limit}"
            )
        if found and (existing / part).exists():
            existing = existing / part
        else:
            found = False
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, so nothing can be created under it")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as fh:
            fh.write(b"fisherkl")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        if created:
            remove_if_empty(path)
        raise UsageError(
            f"--out {out}: only {free / 1024**2:.1f} MiB free there; "
            f"the report needs up to {need_bytes / 1024**2:.0f} MiB"
        )
    return path, created


def remove_if_empty(path: Path) -> None:
    """Remove a directory this command created, if nothing was written into it."""
    try:
        path.rmdir()
    except OSError:
        pass
