"""Safe storage of Fisher matrices and checkpoints: atomic writes, checked reads.

Writes go to a temporary file in the destination's directory, are flushed and ``fsync``-ed, then
``os.replace``-d over the destination (and the directory is synced), so a crash leaves either the
old file or the new one, never a partial file. A file holds

    {"format": "fisherkl", "version": 1, "what": "matrix" | "checkpoint", "representation": ...,
     "payload": ..., "checksum": sha256 over the payload}

Reads use ``torch.load(weights_only=True)`` (no arbitrary code runs), then check the format, the
version, the checksum (a corrupted tensor is caught, not only a truncated archive), the
representation and, given a network, every parameter's name and shape.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from .errors import FisherKLError
from .matrix.base import _REGISTRY, FisherMatrix, from_state_dict

FORMAT = "fisherkl"
VERSION = 1


class FileFormatError(FisherKLError, ValueError):
    """A file that is not a (complete, intact, compatible) fisherkl file, or not for this network."""


# --- atomic writes ---------------------------------------------------------------------------------


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_ORPHAN_AGE = 3600.0  # seconds: a temporary file without a live owner this old is an orphan


def _as_path(path: Any, where: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise TypeError(f"{where}: path must be a non-empty str or os.PathLike, got {path!r}")
    return Path(path)


def _tmp_prefix(path: Path) -> str:
    """``.<name>.<host hash>-<pid>.``: whose temporary file it is, so that orphans can be told apart."""
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_orphans(path: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files that an interrupted save of ``path`` left (``kill -9`` mid-write).

    A temporary file ``.<name>.<host>-<pid>.<random>.tmp`` is removed when it was made on this host by a
    process that no longer runs; one made elsewhere, or without an owner in its name (older fisherkl),
    only once it is older than an hour (a save in progress keeps writing to it). Returns the paths removed.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:([0-9a-f]{8})-(\d+)\.)?[^/]*\.tmp$")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        host, pid = match.group(1), match.group(2)
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        mine = host == _HOST and pid is not None
        if (mine and int(pid) != os.getpid() and not _alive(int(pid))) or (not mine and age > _ORPHAN_AGE):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically: ``write(f)`` into a temporary file of the same directory, fsync, rename.

    Temporary files that an earlier, killed save of the same path left behind are removed first
    (:func:`remove_orphans`). A write that fails (a full disk, a read-only directory) raises OSError
    naming the path, whatever layer noticed it (torch reports a full disk as a RuntimeError)."""
    path = _as_path(path, "save")
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    remove_orphans(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_tmp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                raise
            except RuntimeError as e:  # torch's zip writer: "enforce fail at inline_container.cc … file write failed"
                raise OSError(errno.EIO, f"could not write {path}: {e} (is the disk full?)") from e
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (POSIX); not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def digest(obj: Any) -> str:
    """A sha256 over a nested structure of dicts, lists, tensors and plain values (deterministic)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def write_file(path: str | os.PathLike[str], what: str, representation: str, payload: Any) -> None:
    """Atomically write a checked fisherkl file (see module doc)."""
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "what": what,
        "representation": representation,
        "payload": payload,
        "checksum": digest(payload),
    }
    atomic_write(path, lambda f: torch.save(doc, f))


def read_file(path: str | os.PathLike[str], what: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and check a file written by :func:`write_file`; raises :class:`FileFormatError` naming the problem."""
    path = _as_path(path, "load")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):  # a FIFO or a device would block or stream forever
        raise FileFormatError(
            f"{path} is not a regular file (a directory, FIFO, socket or device); give a fisherkl file"
        )
    remove_orphans(path)
    size = path.stat().st_size
    try:
        doc = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError… for a damaged archive
        raise FileFormatError(
            f"{path} ({size} bytes) is truncated or corrupted: it is not a complete torch archive ({e})"
        ) from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FileFormatError(f"{path} is not a fisherkl file (no 'format': 'fisherkl' header)")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION or version < 1:
        raise FileFormatError(
            f"{path} has format version {version!r}; this fisherkl reads version {VERSION} (upgrade fisherkl?)"
        )
    if doc.get("what") != what:
        raise FileFormatError(f"{path} holds a {doc.get('what')!r}, not a {what!r}")
    if digest(doc.get("payload")) != doc.get("checksum"):
        raise FileFormatError(f"{path} is corrupted: the checksum of its contents does not match the one stored")
    return doc


# --- Fisher matrices -------------------------------------------------------------------------------


def save(f: FisherMatrix, path: str | os.PathLike[str]) -> None:
    """Write the Fisher matrix ``f`` to ``path`` atomically (``F.save(path)`` does the same)."""
    if not isinstance(f, FisherMatrix):
        raise TypeError(f"save: expected a FisherMatrix, got {type(f).__name__}")
    state = f.state_dict()  # Implicit refuses here, with its own message
    write_file(path, "matrix", state["type"], state)


def load(
    path: str | os.PathLike[str],
    net: nn.Module | None = None,
    representation: str | None = None,
    map_location: Any = "cpu",
) -> FisherMatrix:
    """Read a Fisher matrix written by ``F.save(path)``.

    Refuses (:class:`FileFormatError`, naming what is wrong) a truncated or corrupted file, another
    format or a newer version, an unknown representation or not the ``representation`` asked for
    (a class name, e.g. ``"KFAC"``, or a :func:`fisherkl.nn.fisher` name, e.g. ``"kfac"``), and,
    given ``net``, a file whose parameter names or shapes differ from the network's.
    """
    if net is not None and not isinstance(net, nn.Module):
        raise TypeError(f"load: net must be a torch.nn.Module or None, got {type(net).__name__}")
    if representation is not None and not isinstance(representation, str):
        raise TypeError(
            f"load: representation must be a string (e.g. 'kfac' or 'KFAC') or None, got {representation!r}"
        )
    doc = read_file(path, "matrix", map_location)
    state = doc["payload"]
    kind = doc.get("representation")
    if not isinstance(state, dict) or state.get("type") != kind:
        raise FileFormatError(f"{path}: the stored representation {kind!r} does not match its contents")
    if kind not in _REGISTRY:
        raise FileFormatError(f"{path}: unknown representation {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    if representation is not None and representation.lower() not in (kind.lower(), _FISHER_NAMES.get(kind)):
        raise FileFormatError(f"{path} holds a {kind} Fisher, not the {representation!r} asked for")
    if net is not None:
        check_layout(state.get("layout"), net, str(path))
    try:
        return from_state_dict(state)
    except FileFormatError:
        raise
    except FisherKLError as e:
        raise FileFormatError(f"{path}: the stored {kind} is inconsistent: {e}") from e
    except Exception as e:
        raise FileFormatError(f"{path}: the stored {kind} could not be rebuilt ({type(e).__name__}: {e})") from e


_FISHER_NAMES = {
    "Dense": "dense",
    "Diagonal": "diag",
    "BlockDiagonal": "block",
    "KFAC": "kfac",
    "EKFAC": "ekfac",
    "LowRank": "lowrank",
}


def check_layout(layout_state: Any, net: nn.Module, where: str) -> None:
    """Raise :class:`FileFormatError` naming the first parameter whose name or shape differs from ``net``'s
    (the parameters that require grad, in ``named_parameters`` order)."""
    if not isinstance(layout_state, Mapping) or "names" not in layout_state or "shapes" not in layout_state:
        raise FileFormatError(f"{where}: no parameter layout stored")
    stored = dict(zip(layout_state["names"], (tuple(int(i) for i in s) for s in layout_state["shapes"])))
    have = {n: tuple(p.shape) for n, p in net.named_parameters() if p.requires_grad}
    for name, shape in stored.items():
        if name not in have:
            raise FileFormatError(
                f"{where}: parameter {name!r} {shape} is in the file but not in the network "
                f"(the network has {', '.join(have) or 'no trainable parameters'})"
            )
        if have[name] != shape:
            raise FileFormatError(
                f"{where}: parameter {name!r} has shape {shape} in the file but {have[name]} in the network"
            )
    missing = [n for n in have if n not in stored]
    if missing:
        raise FileFormatError(f"{where}: parameter {missing[0]!r} of the network is not in the file")
    if list(stored) != list(have):
        raise FileFormatError(f"{where}: the parameters are in a different order than in the network")
