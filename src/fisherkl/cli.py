"""The ``fisherkl`` command.

    fisherkl families [--json]
    fisherkl fisher gamma --theta 2.5,1.7 [--method M] [--fixed k=v] [--json]
    fisherkl kl gamma --theta 2.5,1.7 --delta 0.01,-0.02 [--json]
    fisherkl demo [--delta 1e-3] [--json]
    fisherkl report [--out DIR] [--family NAME] [--no-plots] [--network]
    fisherkl --version

Bad arguments print a one-line error and exit with status 2 (no traceback); an interrupt (Ctrl-C)
exits with status 130 and leaves no partial report. What the command accepts as a number, and
what ``--json`` writes, is described in :mod:`fisherkl.cli_input`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

from . import families
from ._version import __version__
from .agreement import Agreement, agreement, format_agreement
from .cli_input import (
    UsageError,
    bounded_int,
    check_destination,
    integer_or_float,
    parser_error_hint,
    positive_float,
    remove_if_empty,
    strict_json,
    suggest,
    unknown_options,
    vector,
)
from .divergence import chi2, jeffreys, kl
from .errors import FisherKLError
from .estimate import Estimate
from .families.base import Family
from .fisher import METHODS, auto_method, available_routes, fisher
from .model import no_argument_validation

__all__ = ["UsageError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        root = getattr(self, "_root", self)
        self.exit(2, f"{self.prog}: error: {message}{parser_error_hint(root, message)}\n")


def _vector(text: str, what: str) -> list[float]:
    return vector(text, what)


def _dump(record: Any) -> None:
    print(json.dumps(strict_json(record), indent=2, allow_nan=False))


def _fixed(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--fixed takes NAME=VALUE, got {item!r}")
        if value.strip().lower() == "none":
            out[key.strip()] = None
            continue
        number = integer_or_float(value, f"--fixed {key.strip()}")
        if math.isfinite(number) and abs(number) > 2**53:
            raise UsageError(f"--fixed {item}: values beyond 2^53 ≈ 9.0e15 are not supported")
        out[key.strip()] = number
    return out


def _family(args: argparse.Namespace) -> Family:
    name = args.family
    if name.lower() not in families.names():
        raise UsageError(f"unknown family {name!r}{suggest(name.lower(), families.names())} (see `fisherkl families`)")
    fixed = _fixed(args.fixed)
    try:
        return families.family(name, **fixed)
    except (OverflowError, TypeError) as exc:
        given = ", ".join(f"{k}={v}" for k, v in fixed.items())
        raise UsageError(f"{name}: fixed argument(s) {given} out of range ({exc})") from None


def _theta(model: Family, text: str, what: str = "--theta") -> torch.Tensor:
    """θ from 'v1,v2,...' in θ order, or from named blocks 'loc=0,1; scale_tril=1,0.3,2'."""
    values = _blocks(model, text, what) if "=" in text else _vector(text, what)
    if len(values) != model.dim:
        raise UsageError(
            f"{what} for {model.name} needs {model.dim} values ({', '.join(model.names)}), got {len(values)}"
        )
    return model.validate(torch.tensor(values, dtype=torch.float64), what.lstrip("-"))


def _blocks(model: Family, text: str, what: str) -> list[float]:
    bases = [n.split("[")[0] for n in model.names]
    given: dict[str, list[float]] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, vals = part.partition("=")
        key = key.strip()
        if not sep or key not in bases:
            known = ", ".join(dict.fromkeys(bases))
            raise UsageError(f"{what}: unknown parameter block {key!r} for {model.name} (blocks: {known})")
        if key in given:
            raise UsageError(f"{what}: block {key} given twice")
        given[key] = _vector(vals, f"{what} {key}")
    out: list[float] = []
    for base in dict.fromkeys(bases):
        need = bases.count(base)
        if base not in given:
            raise UsageError(f"{what}: missing block {base}= ({need} values)")
        if len(given[base]) != need:
            raise UsageError(f"{what}: block {base} needs {need} values, got {len(given[base])}")
        out += given[base]
    return out


def _fmt(x: float) -> str:
    return f"{x:.10g}" if math.isfinite(x) else str(x)


def _matrix_lines(names: Sequence[str], m: torch.Tensor) -> list[str]:
    """A labelled matrix whose columns are as wide as their widest entry plus two spaces."""
    cells = [[_fmt(float(v)) for v in row] for row in m]
    width = max(12, *(len(n) for n in names), *(len(c) for row in cells for c in row)) + 2
    head = " " * width + "".join(f"{n:>{width}}" for n in names)
    rows = [f"{n:<{width}}" + "".join(f"{c:>{width}}" for c in row) for n, row in zip(names, cells)]
    return [head, *rows]


# --- commands ----------------------------------------------------------------------------------
def cmd_families(args: argparse.Namespace) -> None:
    rows = []
    for name in families.names():
        f = families.family(name)
        theta = f.typical()
        if f.regular:
            routes = available_routes(f, theta)
        else:
            routes = ["none (non-regular)"]
        fixed = {k: v.default for k, v in f.fixed.items()}
        rows.append({"name": name, "params": f.param_table(), "fixed": fixed, "routes": routes, "about": f.description})
    if args.json:
        _dump(rows)
        return
    print(f"{'family':<12} {'parameters (θ order)':<44} {'fixed':<16} routes  [(mc) = Monte Carlo only]")
    for r in rows:
        params = ", ".join(f"{n} {c}" for n, c in r["params"])
        fixed = ", ".join(f"{k}={v}" for k, v in r["fixed"].items())
        print(f"{r['name']:<12} {params:<44} {fixed:<16} {', '.join(r['routes'])}")


def cmd_fisher(args: argparse.Namespace) -> None:
    f = _family(args)
    theta = _theta(f, args.theta)
    est = fisher(f, theta, args.method, return_error=True, seed=args.seed, n_samples=args.samples)
    assert isinstance(est, Estimate)
    if args.json:
        _dump(
            {
                "family": f.name,
                "fixed": f.fixed_values,
                "theta": dict(zip(f.names, theta.tolist())),
                "method": est.method,
                "fisher": est.value.tolist(),
                "error": est.error.tolist(),
                "n_samples": est.n_samples,
            }
        )
        return
    print(f"Fisher information of {f!r} at " + ", ".join(f"{n}={_fmt(v)}" for n, v in zip(f.names, theta.tolist())))
    err = float(est.error.abs().max())
    kind = "standard error" if not est.exact else "error bound"
    print(f"method: {est.method}   ({kind} ≤ {err:.3g})" if err > 0 else f"method: {est.method}")
    print("\n".join(_matrix_lines(f.names, est.value)))


def cmd_kl(args: argparse.Namespace) -> None:
    f = _family(args)
    theta = _theta(f, args.theta)
    delta = torch.tensor(_vector(args.delta, "--delta"), dtype=torch.float64)
    if delta.numel() != f.dim:
        raise UsageError(f"--delta for {f.name} needs {f.dim} values, got {delta.numel()}")
    if not bool(torch.isfinite(delta).all()):
        raise UsageError(f"--delta must be finite, got {args.delta!r}")
    if not bool((delta != 0).any()):
        raise UsageError("--delta is zero: KL and ½δᵀIδ both vanish, so there is nothing to compare")
    other = _theta(f, ",".join(str(v) for v in (theta + delta).tolist()), "theta+delta")
    if f.regular:
        info = fisher(f, theta)
        assert isinstance(info, torch.Tensor)
        quad = float(delta @ info @ delta)
    else:  # no Fisher information: the divergences are still exact
        quad = math.nan
    with no_argument_validation():
        route = auto_method(f, theta) if f.regular else "none"
    result: dict[str, Any] = {
        "family": f.name,
        "theta": theta.tolist(),
        "delta": delta.tolist(),
        "fisher_method": route,
        "kl": float(kl(f, theta, other)),  # type: ignore[arg-type]
        "kl_quadratic": 0.5 * quad,
        "jeffreys": float(jeffreys(f, theta, other)),  # type: ignore[arg-type]
        "jeffreys_quadratic": quad,
    }
    try:
        pearson = chi2(f, theta, other, return_error=True, seed=0)
        assert isinstance(pearson, Estimate)
        result["chi2"], result["chi2_method"] = float(pearson.value), pearson.method
        result["chi2_error"] = float(pearson.error)
    except FisherKLError as exc:  # the other rows stand on their own
        result["chi2"], result["chi2_method"], result["chi2_error"] = math.nan, f"failed: {exc}", math.nan
    result["kl_ratio"] = result["kl"] / result["kl_quadratic"] if quad > 0 else math.nan
    result["jeffreys_ratio"] = result["jeffreys"] / quad if quad > 0 else math.nan
    if not f.regular:
        result["note"] = "non-regular model: no Fisher information, so no quadratic forms"
        for key in ("kl_quadratic", "jeffreys_quadratic", "kl_ratio", "jeffreys_ratio"):
            result[key] = None
    if args.json:
        _dump(result)
        return
    print(f"{f!r}: θ = {_fmt_vec(theta.tolist())}, δ = {_fmt_vec(delta.tolist())}")
    print(f"  KL[p_θ ‖ p_θ+δ]      {_fmt(result['kl']):>20}")
    if f.regular:
        kl_ratio, j_ratio = _ratio(result["kl_ratio"]), _ratio(result["jeffreys_ratio"])
        print(f"  ½ δᵀI(θ)δ            {_fmt(result['kl_quadratic']):>20}   ratio KL/(½δᵀIδ) = {kl_ratio}")
    print(f"  Jeffreys             {_fmt(result['jeffreys']):>20}")
    if f.regular:
        print(f"  δᵀI(θ)δ              {_fmt(result['jeffreys_quadratic']):>20}   ratio J/(δᵀIδ)    = {j_ratio}")
    how = "" if result["chi2_method"] != "mc" else f"   (Monte Carlo, standard error {result['chi2_error']:.2g})"
    if str(result["chi2_method"]).startswith("failed"):
        how = f"   ({result['chi2_method']})"
    print(f"  Pearson χ²           {_fmt(result['chi2']):>20}{how}")
    if "note" in result:
        print(f"  ({result['note']})")


def _ratio(x: float) -> str:
    return f"{x:.6f}" if math.isfinite(x) else "undefined (½δᵀIδ = 0: δ is along a null direction of I)"


def _fmt_vec(v: Sequence[float]) -> str:
    return "(" + ", ".join(_fmt(x) for x in v) + ")"


def cmd_demo(args: argparse.Namespace) -> None:
    results: list[Agreement] = []
    for name in families.names():
        f = families.family(name)
        results.append(agreement(f, f.typical(), delta_norm=args.delta))
    if args.json:
        _dump([_agreement_json(a) for a in results])
        return
    print("fisherkl demo: every route to the Fisher information at a typical θ, and the seeds' relation")
    print(f"KL[p_θ‖p_θ+δ] ≈ ½δᵀIδ and Jeffreys ≈ δᵀIδ at |δ| = {args.delta:g} (float64).\n")
    print(format_agreement(results))


def cmd_report(args: argparse.Namespace) -> None:
    """Everything that can fail for lack of a package, a name or room fails here, before any work."""
    from .report import main_report, require_packages

    for name in args.family:
        if name.lower() not in families.names():
            raise UsageError(f"--family: unknown family {name!r}{suggest(name.lower(), families.names())}")
    require_packages(plots=not args.no_plots, network=args.network)
    out, created = check_destination(args.out)
    try:
        main_report(str(out), args.family or None, plots=not args.no_plots, network=args.network)
    except BaseException:
        if created:
            remove_if_empty(out)
        raise


def _agreement_json(a: Agreement) -> dict[str, Any]:
    return {
        "family": a.name,
        "theta": a.theta,
        "reference": a.reference,
        "routes": [r.__dict__ for r in a.routes],
        "delta_norm": a.delta_norm,
        "kl": a.kl,
        "kl_quadratic": a.kl_quadratic,
        "jeffreys": a.jeffreys,
        "jeffreys_quadratic": a.jeffreys_quadratic,
        "note": a.note,
    }


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fisherkl", description="Fisher information and KL divergences of parametric models.")
    p.add_argument("--version", action="version", version=f"fisherkl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("families", help="list the families, their parameters and routes")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_families)

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("family", help="a family name (see `fisherkl families`)")
        s.add_argument(
            "--theta",
            required=True,
            help="parameters, comma-separated in θ order, or named blocks: 'loc=0,1; scale_tril=1,0.3,2'",
        )
        s.add_argument(
            "--fixed", action="append", default=[], metavar="NAME=VALUE", help="fixed argument, e.g. total_count=20"
        )
        s.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("fisher", help="the Fisher information at θ")
    common(s)
    s.add_argument("--method", default="auto", choices=METHODS)
    s.add_argument(
        "--samples",
        type=bounded_int(2, 10**9, "must be an integer from 2 (a standard error needs two draws) to 10^9"),
        default=200_000,
        help="Monte Carlo samples when a route needs them (2 … 10^9)",
    )
    s.add_argument(
        "--seed", type=bounded_int(0, 2**63 - 1, "must be an integer from 0 to 2^63 − 1"), default=0, help="seed"
    )
    s.set_defaults(run=cmd_fisher)

    s = sub.add_parser("kl", help="exact KL/Jeffreys/χ² vs the quadratic forms ½δᵀIδ and δᵀIδ")
    common(s)
    s.add_argument("--delta", required=True, help="the step δ, comma-separated")
    s.set_defaults(run=cmd_kl)

    s = sub.add_parser("report", help="check the whole catalogue; write tables, PNG plots and one HTML page")
    s.add_argument(
        "--out", default="fisherkl-report", help="output directory, created if missing (default fisherkl-report)"
    )
    s.add_argument("--family", action="append", default=[], help="only these families (repeatable)")
    s.add_argument("--no-plots", action="store_true", help="skip the plots (no matplotlib needed)")
    s.add_argument(
        "--network",
        action="store_true",
        help="add neural-network sections (digits MLP: Fisher approximations, what pruning and quantisation "
        "cost; needs scikit-learn)",
    )
    s.set_defaults(run=cmd_report)

    s = sub.add_parser("demo", help="every family: all routes agree, and KL ≈ ½δᵀIδ")
    s.add_argument("--delta", type=positive_float, default=1e-3, help="|δ| > 0 for the KL check (default 1e-3)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_demo)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child._root = p  # type: ignore[attr-defined]
    return p


def _join_vector_options(argv: Sequence[str]) -> list[str]:
    """``--theta -1,2`` → ``--theta=-1,2`` so that argparse does not read -1,2 as an option."""
    out: list[str] = []
    it = iter(argv)
    for token in it:
        if token in ("--theta", "--delta"):
            value = next(it, None)
            out.append(token if value is None else f"{token}={value}")
        else:
            out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success, 2 for a bad argument or a refused computation, 130 on Ctrl-C."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        unknown_options(parser, argv)
        args = parser.parse_args(_join_vector_options(argv))
        args.run(args)
    except (UsageError, FisherKLError) as exc:
        print(f"fisherkl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fisherkl: interrupted (nothing was written)", file=sys.stderr)
        return 130
    except (ArithmeticError, ValueError, TypeError, MemoryError) as exc:
        # a library path without its own message: one line, the kind of failure, no traceback
        print(f"fisherkl: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
