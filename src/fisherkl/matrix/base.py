"""The protocol every Fisher matrix representation follows, and the generic sum / scaled forms.

A :class:`FisherMatrix` F (size p × p, p = number of parameters) offers

* ``mv(v)`` = F v and ``quad(v)`` = vᵀ F v  (½·quad(δ) is the predicted KL for a step δ);
* ``diag()`` ``[p]`` and ``trace()``;
* ``solve(b, damping)`` = (F + damping·I)⁻¹ b;
* ``to_dense()`` ``[p, p]`` (refused with :class:`DenseTooLargeError` beyond a memory limit);
* ``eig()`` (all eigenpairs, ascending) and ``topk(k)`` (largest k, descending);
* ``F + G``, ``c * F``, ``F * c``, ``F / c``;
* ``state_dict()`` / ``load_state_dict()`` and :func:`fisherkl.matrix.from_state_dict`;
* ``save(path)`` (atomic; read back by :func:`fisherkl.io.load`);
* ``all_reduce(group)``: the mean over the data of every rank of a ``torch.distributed`` group
  (per-rank means weighted by their example counts ``n_examples``);
* ``as_linear_operator()``: a ``scipy.sparse.linalg.LinearOperator`` view.

Vectors are flat tensors ``[p]`` (or columns ``[p, k]``), lists of parameter-shaped tensors, or
dicts ``name -> tensor`` (see :class:`~fisherkl.matrix.layout.ParamLayout`); results come back in
the form given.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .. import arguments
from ..errors import ConvergenceError, FisherKLError, ParameterError
from .layout import ParamLayout, Vector

_MAX_DENSE_BYTES = [2 * 1024**3]
_REGISTRY: dict[str, type[FisherMatrix]] = {}


class DenseTooLargeError(FisherKLError, MemoryError):
    """A p × p matrix would not fit in the allowed memory."""


def set_max_dense_bytes(n: int) -> int:
    """Set the memory limit for p × p matrices (default 2 GiB); returns the previous limit."""
    old = _MAX_DENSE_BYTES[0]
    _MAX_DENSE_BYTES[0] = arguments.integer(n, "max_bytes", 0)
    return old


def max_dense_bytes() -> int:
    return _MAX_DENSE_BYTES[0]


def check_dense_fits(p: int, dtype: torch.dtype, what: str, max_bytes: int | None = None, factor: int = 1) -> None:
    """Raise :class:`DenseTooLargeError` if ``factor`` p × p matrices of ``dtype`` exceed the limit."""
    limit = max_dense_bytes() if max_bytes is None else arguments.integer(max_bytes, "max_bytes", 0)
    need = factor * p * p * torch.empty((), dtype=dtype).element_size()
    if need > limit:
        raise DenseTooLargeError(
            f"{what}: a {p} × {p} matrix needs {need / 1024**2:.1f} MiB, over the limit of "
            f"{limit / 1024**2:.1f} MiB (fisherkl.matrix.set_max_dense_bytes to change it); use a structured "
            "representation ('diag', 'block', 'kfac', 'ekfac', 'lowrank', 'implicit') instead"
        )


def register(cls: type[FisherMatrix]) -> type[FisherMatrix]:
    _REGISTRY[cls.__name__] = cls
    return cls


def from_state_dict(state: Mapping[str, Any], *, check: bool = True) -> FisherMatrix:
    """Rebuild a Fisher matrix from :meth:`FisherMatrix.state_dict`, checking (``check=True``) its structure
    (every part present, shapes consistent with the layout) and its mathematics (finite, symmetric positive
    semi-definite, scales and counts ≥ 0); :class:`ParameterError` names what is wrong."""
    if not isinstance(state, Mapping):
        raise ParameterError(f"state_dict must be a mapping, got {type(state).__name__}")
    kind = state.get("type")
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ParameterError(f"state_dict: unknown representation type {kind!r}; known: {', '.join(_REGISTRY)}")
    try:
        f = _REGISTRY[kind]._from_state(state)
    except KeyError as e:
        raise ParameterError(f"state_dict: the {kind} state has no {e.args[0]!r} entry") from None
    except (TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        if isinstance(e, FisherKLError):
            raise
        raise ParameterError(f"state_dict: the {kind} state is malformed ({type(e).__name__}: {e})") from e
    f = _restore_counts(f, state)
    if not check:
        return f
    from .checks import check_matrix  # checks build on every representation

    return check_matrix(f, f"state_dict ({kind})")


def _restore_counts(f: FisherMatrix, state: Mapping[str, Any]) -> FisherMatrix:
    n = state.get("n_examples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, Tensor)) or int(n) < 0):
        raise ParameterError(f"state_dict: n_examples must be an integer >= 0, got {n!r}")
    f.n_examples = None if n is None else int(n)
    rows = state.get("row_counts")
    if rows is not None and not isinstance(rows, Mapping):
        raise ParameterError(f"state_dict: row_counts must be a mapping, got {type(rows).__name__}")
    f.row_counts = None if rows is None else {str(k): int(v) for k, v in rows.items()}
    return f


def _block_key(block: Mapping[str, Any]) -> str:
    """A Kronecker block's key in ``row_counts``: its weight's name, with its rows when it covers only some."""
    rows = block.get("rows")
    return str(block["weight"]) if rows is None else f"{block['weight']}[{int(rows[0])}:{int(rows[1])}]"


def _rename(s: str, mapping: Mapping[str, str]) -> str:
    """A parameter name, or a block key ``name[a:b]``, under ``mapping``."""
    if s in mapping:
        return mapping[s]
    head, bracket, tail = s.partition("[")
    return mapping[head] + bracket + tail if bracket and head in mapping else s


def _renamed(obj: Any, mapping: Mapping[str, str]) -> Any:
    """A state dict with every parameter name (values, and the keys of ``row_counts``) renamed."""
    if isinstance(obj, str):
        return _rename(obj, mapping)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if k == "type":
                out[k] = v
            elif k == "row_counts":
                out[k] = {_rename(str(a), mapping): b for a, b in v.items()}
            else:
                out[k] = _renamed(v, mapping)
        return out
    if isinstance(obj, list):
        return [_renamed(v, mapping) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_renamed(v, mapping) for v in obj)
    return obj


def check_k(k: Any, high: int, what: str = "topk") -> int:
    """k as an integer in 1..high (the number of eigenpairs asked for)."""
    return arguments.integer(k, f"{what}: k", 1, high)


def _group_src(dist: Any, group: Any) -> int:
    """The global rank of the group's first member (the source of broadcasts)."""
    if group is None:
        return 0
    return int(dist.get_global_rank(group, 0))


class FisherMatrix(ABC):
    """A p × p symmetric positive semi-definite matrix over a network's parameters (see module doc)."""

    structured_solve: ClassVar[bool] = False
    #: the number of examples this mean is over (set by :func:`fisherkl.nn.fisher`); needed by all_reduce
    n_examples: int | None = None
    #: KFAC: rows behind each layer's A factor (weight name -> count), when A is a mean over positions
    row_counts: dict[str, int] | None = None

    def __init__(self, layout: ParamLayout, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.layout = layout
        self.dtype = dtype
        self.device = torch.device(device)

    # --- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _mm(self, v: Tensor) -> Tensor:
        """F @ V for flat columns V ``[p, k]``."""

    @abstractmethod
    def _diag(self) -> Tensor:
        """The diagonal, flat ``[p]``."""

    def _state(self) -> dict[str, Any]:
        raise FisherKLError(f"{type(self).__name__} cannot be saved as a state_dict")

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        raise FisherKLError(f"{cls.__name__} cannot be loaded from a state_dict")

    def _scaled(self, c: float) -> FisherMatrix:
        return ScaledMatrix(self, c)

    # --- the protocol ---------------------------------------------------------------------------
    @property
    def p(self) -> int:
        """The number of parameters."""
        return self.layout.numel

    @property
    def shape(self) -> tuple[int, int]:
        return (self.p, self.p)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, dtype={self.dtype})"

    def _flat(self, v: Vector, what: str = "v") -> tuple[Tensor, str]:
        flat, form = self.layout.flatten(v, what)
        return flat.to(dtype=self.dtype, device=self.device), form

    def mv(self, v: Vector) -> Vector:
        """F v, in the form v was given (flat ``[p]``, columns ``[p, k]``, list or dict)."""
        flat, form = self._flat(v)
        out = self._mm(flat.unsqueeze(-1) if flat.ndim == 1 else flat)
        return self.layout.unflatten(out.squeeze(-1) if flat.ndim == 1 else out, form)

    def __matmul__(self, v: Vector) -> Vector:
        return self.mv(v)

    def quad(self, v: Vector) -> Tensor:
        """vᵀ F v (a scalar; ``[k]`` for columns ``[p, k]``). ½·quad(δ) ≈ mean KL for a step δ."""
        flat, _ = self._flat(v)
        cols = flat.unsqueeze(-1) if flat.ndim == 1 else flat
        out = (cols * self._mm(cols)).sum(0)
        return out[0] if flat.ndim == 1 else out

    def diag(self, form: str = "flat") -> Vector:
        """The diagonal: flat ``[p]`` (``form="flat"``), or ``"list"`` / ``"dict"`` parameter-shaped."""
        return self.layout.unflatten(self._diag(), arguments.choice(form, "form", ("flat", "list", "dict")))

    def trace(self) -> Tensor:
        """tr F."""
        return self._diag().sum()

    def to_dense(self, max_bytes: int | None = None) -> Tensor:
        """F as a ``[p, p]`` tensor; raises :class:`DenseTooLargeError` beyond the memory limit."""
        check_dense_fits(self.p, self.dtype, f"{type(self).__name__}.to_dense", max_bytes)
        eye = torch.eye(self.p, dtype=self.dtype, device=self.device)
        out = self._mm(eye)
        return 0.5 * (out + out.T)

    def solve(
        self,
        b: Vector,
        damping: float = 0.0,
        *,
        rtol: float | None = None,
        max_iter: int | None = None,
        preconditioner: FisherMatrix | None = None,
    ) -> Vector:
        """(F + damping·I)⁻¹ b, in b's form.

        Structured representations solve exactly; others use a dense Cholesky when p × p fits in
        memory, else conjugate gradients to relative residual ``rtol`` (default 1e-10 in float64, 1e-5
        in float32). ``preconditioner``: a cheaper representation of the same Fisher (KFAC, EKFAC, diag)
        whose damped solve preconditions the conjugate gradients — the same answer in far fewer products
        when F is ill-conditioned (ignored by the exact solves).
        """
        damping = arguments.real(damping, "solve: damping", low=0.0)
        rtol = arguments.optional_real(rtol, "solve: rtol", low=0.0, high=1.0, low_open=True, high_open=True)
        if max_iter is not None:
            max_iter = arguments.integer(max_iter, "solve: max_iter", 1)
        flat, form = self._flat(b, "b")
        cols = flat.unsqueeze(-1) if flat.ndim == 1 else flat
        precond = None
        if preconditioner is not None:
            if not isinstance(preconditioner, FisherMatrix) or preconditioner.p != self.p:
                raise ParameterError(
                    f"solve: preconditioner must be a FisherMatrix of the same p = {self.p}, got "
                    f"{type(preconditioner).__name__}"
                    + (f" with p = {preconditioner.p}" if isinstance(preconditioner, FisherMatrix) else "")
                )
            pre, d = preconditioner, float(damping)

            def precond(r: Tensor) -> Tensor:
                return pre._solve(r.to(pre.dtype), d, None, None).to(r.dtype)

        out = self._solve(cols, float(damping), rtol, max_iter, precond)
        if out.numel() and not bool(torch.isfinite(out).all()):
            from ..errors import NumericalError

            raise NumericalError(
                f"{type(self).__name__}.solve: (F + {damping:g}·I)⁻¹b came out non-finite (the solution exceeds the "
                f"range of {out.dtype} or F is numerically singular); pass a larger damping"
            )
        return self.layout.unflatten(out.squeeze(-1) if flat.ndim == 1 else out, form)

    def _solve(
        self, b: Tensor, damping: float, rtol: float | None, max_iter: int | None, precond: Any = None
    ) -> Tensor:
        try:
            check_dense_fits(self.p, self.dtype, "solve", factor=2)
        except DenseTooLargeError:
            return conjugate_gradient(self._mm, b, damping, rtol, max_iter, precond)
        return dense_solve(self.to_dense(), b, damping)

    def eig(self) -> tuple[Tensor, Tensor]:
        """All eigenvalues (ascending) ``[p]`` and eigenvectors as columns ``[p, p]``."""
        check_dense_fits(self.p, self.dtype, f"{type(self).__name__}.eig", factor=2)
        return torch.linalg.eigh(self.to_dense())

    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        """The k largest eigenvalues (descending) ``[k]`` and eigenvectors ``[p, k]``."""
        k = check_k(k, self.p)
        try:
            vals, vecs = self.eig()
        except DenseTooLargeError:
            return lanczos_topk(self, k)
        return vals.flip(0)[:k], vecs.flip(1)[:, :k]

    # --- algebra ------------------------------------------------------------------------------
    def __add__(self, other: Any) -> FisherMatrix:
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, FisherMatrix):
            return NotImplemented
        if other.layout != self.layout:
            raise ParameterError("cannot add Fisher matrices over different parameter layouts")
        combined = self._add_same(other) if type(other) is type(self) else None
        return combined if combined is not None else SumMatrix([self, other])

    def __radd__(self, other: Any) -> FisherMatrix:
        return self.__add__(other)

    def _add_same(self, other: FisherMatrix) -> FisherMatrix | None:
        return None

    def __mul__(self, c: Any) -> FisherMatrix:
        if isinstance(c, Tensor) and c.numel() == 1:
            c = float(c)
        if not isinstance(c, (int, float)) or isinstance(c, bool):
            return NotImplemented
        if not math.isfinite(c):
            raise ParameterError(f"a Fisher matrix can only be scaled by a finite number, got {c}")
        if c < 0:
            raise ParameterError(f"a Fisher matrix times a negative number ({c}) is not positive semi-definite")
        return self._scaled(float(c))

    def __rmul__(self, c: Any) -> FisherMatrix:
        return self.__mul__(c)

    def __truediv__(self, c: Any) -> FisherMatrix:
        c = arguments.real(c, "divisor", low=0.0, low_open=True)
        return self.__mul__(1.0 / c)

    # --- persistence ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and metadata to rebuild this matrix (``torch.save``-able)."""
        out = {"type": type(self).__name__, "layout": self.layout.state(), **self._state()}
        if self.n_examples is not None:
            out["n_examples"] = int(self.n_examples)
        if self.row_counts is not None:
            out["row_counts"] = {str(k): int(v) for k, v in self.row_counts.items()}
        return out

    def save(self, path: Any) -> None:
        """Write this matrix to ``path`` atomically (temporary file, fsync, rename); read it back with
        :func:`fisherkl.io.load` (``fisherkl.load``), which checks format, representation and shapes."""
        from ..io import save

        save(self, path)

    # --- torch.distributed ---------------------------------------------------------------------------
    def all_reduce(self, group: Any = None) -> FisherMatrix:
        """Replace this per-rank Fisher by the mean over the data of every rank of ``group`` (default:
        the world) of an initialised ``torch.distributed`` process group, and return it.

        Each rank's mean is weighted by its example count, F = Σᵣ nᵣ Fᵣ / Σᵣ nᵣ, so uneven shards give
        the mean over all data. Every rank must call it (a collective). Dense, Diagonal, BlockDiagonal
        and KFAC reduce exactly; EKFAC only when every rank has the same eigenbasis (otherwise use
        ``fisherkl.nn.fisher(..., distributed=True)``, which reduces the KFAC factors first); LowRank
        and Implicit refuse (see docs/distributed.md). Idempotent: reducing twice changes nothing.
        """
        if type(self).__name__ == "LowRank":
            self._all_reduce(group)  # refused, with its reason
        if self.n_examples is None:
            raise FisherKLError(
                f"{type(self).__name__}.all_reduce needs the number of examples behind this mean "
                "(n_examples); reduce the Fisher as returned by fisherkl.nn.fisher, before scaling or adding"
            )
        agree(self._fingerprint(), group, f"{type(self).__name__}.all_reduce")
        self._all_reduce(group)
        return self

    def _fingerprint(self) -> dict[str, Any]:
        """What every rank's matrix must share to be averaged: type, dtype, layout, the structure of its
        state (tensor shapes), and the network it came from when known (``source``)."""

        def shapes(obj: Any) -> Any:
            if isinstance(obj, Tensor):
                return tuple(obj.shape)
            if isinstance(obj, Mapping):
                return {k: shapes(v) for k, v in obj.items() if k not in ("n_examples", "row_counts")}
            if isinstance(obj, (list, tuple)):
                return [shapes(v) for v in obj]
            return obj

        return {
            "type": type(self).__name__,
            "dtype": str(self.dtype),
            "structure": repr(shapes(self.state_dict())),
            "network": getattr(self, "source", None),
        }

    def _all_reduce(self, group: Any) -> None:
        """Generic reduction through the state dict: every stored tensor is a mean over the examples
        (weighted by ``n_examples``), except KFAC's A factors (weighted by their row counts,
        ``row_counts``) and EKFAC's eigenbases (which must agree on every rank)."""
        name = type(self).__name__
        if name == "LowRank":
            raise FisherKLError(
                "LowRank.all_reduce: the top-k eigenpairs of each rank's Fisher do not determine the top-k of "
                "their mean; use fisherkl.nn.fisher(..., representation='lowrank', distributed=True), which "
                "reduces the dense statistics (or each implicit product) before the eigendecomposition"
            )
        if name not in ("Dense", "Diagonal", "BlockDiagonal", "KFAC", "EKFAC"):
            raise FisherKLError(
                f"{name} cannot be all-reduced as a stored matrix; build it with fisherkl.nn.fisher(..., "
                "distributed=True) (an implicit Fisher all-reduces each product)"
            )
        dist = require_process_group(group)
        rows = dict(self.row_counts or {})
        means: list[Tensor] = []
        weights: list[str] = []
        bases: list[Tensor] = []

        def walk(obj: Any, key: str, block: Mapping[str, Any] | None) -> Any:
            if isinstance(obj, Tensor):
                t = obj.detach().clone()
                if key in ("QA", "QG"):
                    bases.append(t)
                else:
                    w = (
                        f"rows:{_block_key(block)}"
                        if key == "A" and block is not None and _block_key(block) in rows
                        else "n"
                    )
                    means.append(t)
                    weights.append(w)
                return t
            if isinstance(obj, Mapping):
                blk = obj if "weight" in obj and "d_out" in obj else block
                return {k: walk(v, k, blk) for k, v in obj.items()}
            if isinstance(obj, list):
                return [walk(v, key, block) for v in obj]
            return obj

        state = walk(self._state(), "", None)
        counts = {"n": int(self.n_examples or 0), **{f"rows:{k}": int(v) for k, v in rows.items()}}
        if bases:
            ref = [b.clone() for b in bases]
            for b in ref:
                dist.broadcast(b, src=_group_src(dist, group), group=group)
            tol = 1e-10 if bases[0].dtype == torch.float64 else 1e-5
            bad = torch.tensor([float(any(not torch.allclose(a, b, atol=tol) for a, b in zip(bases, ref)))])
            dist.all_reduce(bad, op=dist.ReduceOp.MAX, group=group)
            if float(bad) > 0:
                raise FisherKLError(
                    "EKFAC.all_reduce: the ranks' eigenbases differ (each came from its own shard's KFAC factors), "
                    "so their refitted eigenvalues cannot be averaged; use fisherkl.nn.fisher(..., "
                    "representation='ekfac', distributed=True), which reduces the KFAC factors before the eigenbasis"
                )
            for b, r in zip(bases, ref):
                b.copy_(r)
        keys = sorted(counts)
        sums, totals = all_reduce_sums(
            [m * float(counts[w]) for m, w in zip(means, weights)], [counts[k] for k in keys], group
        )
        counts = dict(zip(keys, totals))
        for m, tot, w in zip(means, sums, weights):
            m.copy_(tot / counts[w] if counts[w] > 0 else torch.zeros_like(tot))
        state["layout"] = self.layout.state()
        new = type(self)._from_state(state)
        self.__dict__.update(new.__dict__)
        self.n_examples = counts["n"]
        if rows:
            self.row_counts = {k[5:]: v for k, v in counts.items() if k.startswith("rows:")}

    def relabel(self, layout: ParamLayout) -> FisherMatrix:
        """The same matrix over parameters with other names: ``layout`` must have the same shapes in the same
        order (e.g. the layout of the network a Fisher was computed through a wrapper of)."""
        if layout.shapes != self.layout.shapes:
            raise ParameterError(
                f"relabel: the layouts' parameter shapes differ: {list(self.layout.shapes)[:4]}… vs "
                f"{list(layout.shapes)[:4]}…"
            )
        if layout == self.layout:
            return self
        mapping = dict(zip(self.layout.names, layout.names))
        new = from_state_dict(_renamed(self.state_dict(), mapping), check=False)  # the same numbers
        return new

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this matrix's contents by those saved in ``state`` (same type and layout)."""
        if state.get("type") != type(self).__name__:
            raise ParameterError(f"load_state_dict: state is a {state.get('type')!r}, not a {type(self).__name__!r}")
        new = type(self)._from_state(state)
        if new.layout != self.layout:
            raise ParameterError("load_state_dict: the state's parameter layout differs from this matrix's")
        self.__dict__.update(new.__dict__)
        _restore_counts(self, state)

    # --- scipy ------------------------------------------------------------------------------------
    def as_linear_operator(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` of shape (p, p) acting on numpy vectors."""
        from scipy.sparse.linalg import LinearOperator

        dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def matmat(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x).reshape(self.p, -1), dtype=self.dtype, device=self.device)
            return self._mm(t).cpu().numpy()

        def matvec(x: np.ndarray) -> np.ndarray:
            return matmat(x).reshape(-1)

        return LinearOperator(self.shape, matvec=matvec, rmatvec=matvec, matmat=matmat, rmatmat=matmat, dtype=dtype)

    # --- moving like a tensor; log-determinant, square root, Gaussian draws (issue 16) ----------------
    # Structured representations override these with their cheap forms; the generic versions below
    # go through the dense matrix (refused beyond the memory limit).
    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> FisherMatrix:
        """This matrix in another dtype and/or on another device (a new matrix; ``self`` if nothing changes)."""
        dtype = self.dtype if dtype is None else dtype
        device = self.device if device is None else torch.device(device)
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ParameterError(f"{type(self).__name__}.to: dtype must be a floating torch.dtype, got {dtype!r}")
        if dtype == self.dtype and device == self.device:
            return self
        state = _map_tensors(
            self.state_dict(),
            lambda t: t.to(dtype=dtype, device=device) if t.is_floating_point() else t.to(device=device),
        )
        # the same numbers, rounded to the new dtype: not a load (whose checks would read float32 rounding of
        # a PSD factor or an orthonormal basis as a defect)
        return from_state_dict(state, check=False)

    def _eigh_damped(self, damping: float, what: str) -> tuple[Tensor, Tensor]:
        damping = _check_damping(damping, what)
        check_dense_fits(self.p, self.dtype, f"{type(self).__name__}.{what}", factor=2)
        w, q = torch.linalg.eigh(self.to_dense())
        return w + damping, q

    def logdet(self, damping: float = 0.0) -> Tensor:
        """log det(F + damping·I) (a scalar); a FisherKLError when F + damping·I is singular."""
        w, _ = self._eigh_damped(damping, "logdet")
        return _logdet_of(w, type(self).__name__, damping)

    def sqrt(self) -> FisherMatrix:
        """F^{1/2}, the symmetric positive semi-definite square root (F^{1/2} F^{1/2} = F)."""
        from .dense import Dense

        w, q = self._eigh_damped(0.0, "sqrt")
        return Dense((q * w.clamp_min(0).sqrt()) @ q.T, self.layout)

    def _inv_sqrt_mm(self, z: Tensor, damping: float) -> Tensor:
        """(F + damping·I)^{-1/2} Z for columns Z ``[p, n]``."""
        w, q = self._eigh_damped(damping, "sample")
        _logdet_of(w, type(self).__name__, damping)  # refuses a singular matrix
        return q @ (w.rsqrt().unsqueeze(-1) * (q.T @ z))

    def sample(
        self, n: int = 1, *, damping: float = 0.0, generator: torch.Generator | None = None, form: str = "flat"
    ) -> Any:
        """n draws from N(0, (F + damping·I)⁻¹): ``[n, p]`` (``form="flat"``), or for ``"list"`` / ``"dict"``
        one parameter-shaped draw per entry with a leading dimension n. This is the Laplace posterior
        of a network around its weights when F is the Fisher of the data (plus a prior as damping)."""
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ParameterError(f"sample: n must be a positive integer, got {n!r}")
        if form not in ("flat", "list", "dict"):
            raise ParameterError(f"sample: form must be 'flat', 'list' or 'dict', got {form!r}")
        z = torch.randn(self.p, n, dtype=self.dtype, device=self.device, generator=generator)
        draws = self._inv_sqrt_mm(z, _check_damping(damping, "sample")).T
        if form == "flat":
            return draws
        parts = [
            draws[:, self.layout.slice(name)].reshape(n, *shape)
            for name, shape in zip(self.layout.names, self.layout.shapes)
        ]
        return parts if form == "list" else dict(zip(self.layout.names, parts))


def _map_tensors(obj: Any, fn: Any) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj


def _check_damping(damping: Any, what: str) -> float:
    if isinstance(damping, Tensor) and damping.numel() == 1:
        damping = float(damping)
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not math.isfinite(damping) or damping < 0:
        raise ParameterError(f"{what}: damping must be a finite number >= 0, got {damping!r}")
    return float(damping)


def _logdet_of(eigenvalues: Tensor, name: str, damping: float) -> Tensor:
    """Σ log λ for the eigenvalues λ of F + damping·I. Without damping, an eigenvalue within rounding
    of zero (p·eps·max λ) counts as zero: F is singular and the call is refused, not answered −inf or NaN."""
    n = eigenvalues.numel()
    scale = float((eigenvalues - damping).abs().max()) if n else 0.0
    floor = n * torch.finfo(eigenvalues.dtype).eps * scale if damping == 0 else 0.0
    if n and float(eigenvalues.min()) <= floor:
        raise FisherKLError(
            f"{name}: F + {damping:g}·I is singular (smallest eigenvalue {float(eigenvalues.min()):.3g}); "
            "pass damping > 0"
        )
    return eigenvalues.log().sum()


def require_process_group(group: Any = None) -> Any:
    """The ``torch.distributed`` module, after checking that a process group is initialised."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise FisherKLError(
            "all_reduce: torch.distributed is not initialised; call torch.distributed.init_process_group "
            "(e.g. under torchrun) first"
        )
    return dist


def agree(fingerprint: Mapping[str, Any], group: Any, what: str) -> None:
    """Raise the same :class:`FisherKLError` on every rank of ``group`` unless all hold the same ``fingerprint``
    (one ``all_gather_object``): ranks that disagree — another network, kind, representation, batch size,
    dtype — would otherwise give every rank the same wrong matrix, or abort inside the backend."""
    dist = require_process_group(group)
    got: list[Any] = [None] * int(dist.get_world_size(group))
    dist.all_gather_object(got, dict(fingerprint), group=group)
    keys = sorted(set().union(*(g.keys() for g in got)))
    diff = [k for k in keys if len({repr(g.get(k)) for g in got}) > 1]
    if diff:
        details = "; ".join(
            f"{k}: " + ", ".join(f"rank {r} {str(g.get(k))[:48]}" for r, g in enumerate(got)) for k in diff[:3]
        )
        raise FisherKLError(
            f"{what}: the ranks disagree on {', '.join(diff)} ({details}); every rank must call it with the same "
            "network, arguments and representation"
        )


def all_reduce_sums(tensors: list[Tensor], counts: list[int], group: Any = None) -> tuple[list[Tensor], list[int]]:
    """Sum ``tensors`` and integer ``counts`` over the ranks of ``group`` (one collective per dtype).

    Returns new tensors (same shapes) and the summed counts, identical on every rank."""
    dist = require_process_group(group)
    out: list[Tensor] = [t for t in tensors]
    by_dtype: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault((t.dtype, t.device), []).append(i)
    for (dtype, _device), idx in sorted(by_dtype.items(), key=lambda kv: str(kv[0])):
        buf = torch.cat([tensors[i].reshape(-1) for i in idx]) if idx else torch.zeros(0, dtype=dtype)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
        at = 0
        for i in idx:
            n = tensors[i].numel()
            out[i] = buf[at : at + n].reshape(tensors[i].shape)
            at += n
    device = tensors[0].device if tensors else torch.device("cpu")
    c = torch.tensor([float(x) for x in counts], dtype=torch.float64, device=device)
    if c.numel():
        dist.all_reduce(c, op=dist.ReduceOp.SUM, group=group)
    return out, [round(float(x)) for x in c]


def dense_solve(m: Tensor, b: Tensor, damping: float) -> Tensor:
    """(M + damping·I)⁻¹ b by Cholesky, with a clear error when the matrix is singular."""
    a = m + damping * torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) != 0:
        raise FisherKLError(
            f"solve: F + {damping:g}·I is singular or not positive definite (a network's Fisher usually is "
            "singular); pass damping > 0"
        )
    return torch.cholesky_solve(b, chol)


def conjugate_gradient(
    mm: Any,
    b: Tensor,
    damping: float,
    rtol: float | None = None,
    max_iter: int | None = None,
    precond: Any = None,
) -> Tensor:
    """Solve (F + damping·I) X = B column by column (batched) by conjugate gradients, stopping at
    ‖B − (F + damping·I) X‖ ≤ rtol ‖B‖ per column. ``precond`` (optional) maps residuals ``[p, k]`` to
    M⁻¹ R for a symmetric positive definite M ≈ F + damping·I (e.g. a damped KFAC solve): the same answer
    in far fewer products when F is ill-conditioned."""
    rtol = (1e-10 if b.dtype == torch.float64 else 1e-5) if rtol is None else rtol
    max_iter = 10 * b.shape[0] if max_iter is None else max_iter
    tiny = torch.finfo(b.dtype).tiny

    def op(v: Tensor) -> Tensor:
        return mm(v) + damping * v

    x = torch.zeros_like(b)
    r = b.clone()
    z = r if precond is None else precond(r)
    d = z.clone()
    rz = (r * z).sum(0)
    rs = (r * r).sum(0)
    target = (rtol * b.norm(dim=0)) ** 2
    for _ in range(max_iter):
        if bool((rs <= target).all()):
            return x
        q = op(d)
        alpha = rz / (d * q).sum(0).clamp_min(tiny)
        x = x + alpha * d
        r = r - alpha * q
        rs = (r * r).sum(0)
        z = r if precond is None else precond(r)
        rz_new = (r * z).sum(0)
        d = z + (rz_new / rz.clamp_min(tiny)) * d
        rz = rz_new
    if bool((rs <= target).all()):
        return x
    raise ConvergenceError(
        f"solve: conjugate gradients did not reach relative residual {rtol:g} in {max_iter} iterations "
        f"(reached {float(rs.max().sqrt() / b.norm(dim=0).max()):.2e}); increase damping"
    )


def lanczos_topk(f: FisherMatrix, k: int) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs by thick-restart Lanczos (:func:`fisherkl.matrix.lanczos.topk_eigh`) on the products."""
    from .lanczos import topk_eigh

    return topk_eigh(f._mm, f.p, k, f.dtype, f.device)


class SumMatrix(FisherMatrix):
    """F₁ + F₂ + …, kept as a sum (structured terms stay structured)."""

    def __init__(self, terms: list[FisherMatrix]) -> None:
        flat: list[FisherMatrix] = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumMatrix) else [t])
        super().__init__(flat[0].layout, flat[0].dtype, flat[0].device)
        self.terms = flat

    def _mm(self, v: Tensor) -> Tensor:
        return sum((t._mm(v) for t in self.terms[1:]), self.terms[0]._mm(v))

    def _diag(self) -> Tensor:
        return sum((t._diag() for t in self.terms[1:]), self.terms[0]._diag())

    def _scaled(self, c: float) -> FisherMatrix:
        return SumMatrix([t * c for t in self.terms])

    def _state(self) -> dict[str, Any]:
        return {"terms": [t.state_dict() for t in self.terms]}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        return cls([from_state_dict(s) for s in state["terms"]])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> FisherMatrix:
        if (dtype in (None, self.dtype)) and (device is None or torch.device(device) == self.device):
            return self
        return SumMatrix([t.to(dtype, device) for t in self.terms])


class ScaledMatrix(FisherMatrix):
    """c · F for a representation without its own scaling."""

    def __init__(self, base: FisherMatrix, c: float) -> None:
        super().__init__(base.layout, base.dtype, base.device)
        self.base, self.c = base, float(c)

    def _mm(self, v: Tensor) -> Tensor:
        return self.c * self.base._mm(v)

    def _diag(self) -> Tensor:
        return self.c * self.base._diag()

    def _scaled(self, c: float) -> FisherMatrix:
        return ScaledMatrix(self.base, self.c * c)

    def _state(self) -> dict[str, Any]:
        return {"c": self.c, "base": self.base.state_dict()}

    @classmethod
    def _from_state(cls, state: Mapping[str, Any]) -> FisherMatrix:
        return cls(from_state_dict(state["base"]), state["c"])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> FisherMatrix:
        if (dtype in (None, self.dtype)) and (device is None or torch.device(device) == self.device):
            return self
        return ScaledMatrix(self.base.to(dtype, device), self.c)

    # cF keeps the structure of F: log det(cF + λI) = p log c + log det(F + (λ/c) I), (cF)^{1/2} = √c F^{1/2}
    def logdet(self, damping: float = 0.0) -> Tensor:
        damping = _check_damping(damping, "logdet")
        if self.c == 0:
            return _logdet_of(torch.full((self.p,), damping, dtype=self.dtype, device=self.device), "ScaledMatrix", 0.0)
        return self.p * math.log(self.c) + self.base.logdet(damping / self.c)

    def sqrt(self) -> FisherMatrix:
        return self.base.sqrt() * math.sqrt(self.c)

    def _inv_sqrt_mm(self, z: Tensor, damping: float) -> Tensor:
        if self.c == 0:
            _logdet_of(torch.full((1,), damping, dtype=self.dtype), "ScaledMatrix", 0.0)
            return z / math.sqrt(damping)
        return self.base._inv_sqrt_mm(z, damping / self.c) / math.sqrt(self.c)


register(SumMatrix)
register(ScaledMatrix)
