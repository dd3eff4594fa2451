"""The ``fisherkl`` command.

    fisherkl families [--json]
    fisherkl fisher gamma --theta 2.5,1.7 [--method M] [--fixed k=v] [--json]
    fisherkl kl gamma --theta 2.5,1.7 --delta 0.01,-0.02 [--json]
    fisherkl demo [--delta 1e-3] [--json]

Bad arguments print a one-line error and exit with status 2 (no traceback).
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
from .agreement import Agreement, agreement, format_agreement
from .divergence import chi2, jeffreys, kl
from .errors import FisherKLError
from .estimate import Estimate
from .families.base import Family
from .fisher import METHODS, auto_method, available_routes, fisher
from .model import no_argument_validation


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _vector(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{what} is empty")
    return values


def _fixed(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--fixed takes NAME=VALUE, got {item!r}")
        if value.strip().lower() == "none":
            out[key.strip()] = None
            continue
        try:
            out[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise UsageError(f"--fixed {key}: value must be a number, got {value!r}") from None
    return out


def _family(args: argparse.Namespace) -> Family:
    return families.family(args.family, **_fixed(args.fixed))


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
    width = max(12, *(len(n) for n in names)) + 2
    head = " " * width + "".join(f"{n:>{width}}" for n in names)
    rows = [f"{n:<{width}}" + "".join(f"{_fmt(float(v)):>{width}}" for v in row) for n, row in zip(names, m)]
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
        print(json.dumps(rows, indent=2))
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
        print(
            json.dumps(
                {
                    "family": f.name,
                    "fixed": f.fixed_values,
                    "theta": dict(zip(f.names, theta.tolist())),
                    "method": est.method,
                    "fisher": est.value.tolist(),
                    "error": est.error.tolist(),
                    "n_samples": est.n_samples,
                },
                indent=2,
            )
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
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{f!r}: θ = {_fmt_vec(theta.tolist())}, δ = {_fmt_vec(delta.tolist())}")
    print(f"  KL[p_θ ‖ p_θ+δ]      {_fmt(result['kl']):>20}")
    print(f"  ½ δᵀI(θ)δ            {_fmt(result['kl_quadratic']):>20}   ratio KL/(½δᵀIδ) = {result['kl_ratio']:.6f}")
    print(f"  Jeffreys             {_fmt(result['jeffreys']):>20}")
    ratio = result["jeffreys_ratio"]
    print(f"  δᵀI(θ)δ              {_fmt(result['jeffreys_quadratic']):>20}   ratio J/(δᵀIδ)    = {ratio:.6f}")
    how = "" if result["chi2_method"] != "mc" else f"   (Monte Carlo, standard error {result['chi2_error']:.2g})"
    if str(result["chi2_method"]).startswith("failed"):
        how = f"   ({result['chi2_method']})"
    print(f"  Pearson χ²           {_fmt(result['chi2']):>20}{how}")
    if "note" in result:
        print(f"  ({result['note']})")


def _fmt_vec(v: Sequence[float]) -> str:
    return "(" + ", ".join(_fmt(x) for x in v) + ")"


def cmd_demo(args: argparse.Namespace) -> None:
    results: list[Agreement] = []
    for name in families.names():
        f = families.family(name)
        results.append(agreement(f, f.typical(), delta_norm=args.delta))
    if args.json:
        print(json.dumps([_agreement_json(a) for a in results], indent=2))
        return
    print("fisherkl demo: every route to the Fisher information at a typical θ, and the seeds' relation")
    print(f"KL[p_θ‖p_θ+δ] ≈ ½δᵀIδ and Jeffreys ≈ δᵀIδ at |δ| = {args.delta:g} (float64).\n")
    print(format_agreement(results))


def cmd_report(args: argparse.Namespace) -> None:
    from .report import main_report

    for name in args.family:
        families.family(name)  # unknown names fail here, before any work
    main_report(args.out, args.family or None, plots=not args.no_plots, network=args.network)


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
    s.add_argument("--samples", type=int, default=200_000, help="Monte Carlo samples when a route needs them")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=cmd_fisher)

    s = sub.add_parser("kl", help="exact KL/Jeffreys/χ² vs the quadratic forms ½δᵀIδ and δᵀIδ")
    common(s)
    s.add_argument("--delta", required=True, help="the step δ, comma-separated")
    s.set_defaults(run=cmd_kl)

    s = sub.add_parser("report", help="check the whole catalogue; write tables, PNG plots and one HTML page")
    s.add_argument("--out", default="fisherkl-report", help="output directory (default fisherkl-report)")
    s.add_argument("--family", action="append", default=[], help="only these families (repeatable)")
    s.add_argument("--no-plots", action="store_true", help="skip the plots (no matplotlib needed)")
    s.add_argument(
        "--network", action="store_true", help="add a neural-network section (digits MLP; needs scikit-learn)"
    )
    s.set_defaults(run=cmd_report)

    s = sub.add_parser("demo", help="every family: all routes agree, and KL ≈ ½δᵀIδ")
    s.add_argument("--delta", type=float, default=1e-3, help="|δ| for the KL check (default 1e-3)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_demo)
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
    parser = build_parser()
    args = parser.parse_args(_join_vector_options(sys.argv[1:] if argv is None else argv))
    try:
        args.run(args)
    except (UsageError, FisherKLError) as exc:
        print(f"fisherkl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
