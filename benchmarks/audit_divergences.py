"""Correctness audit: the reproducers of issue 17 (and issue 15's KL cases), each against its oracle.

Not a speed benchmark: prints one line per reproducer (PASS/FAIL and what was returned) and the
count. Runs against whatever ``fisherkl`` is importable, so the same script measures a branch and
main (``PYTHONPATH=/path/to/main/src python benchmarks/audit_divergences.py``). Oracles: mpmath at
60 digits (tests/mp_oracles.py), closed forms written here.

    python benchmarks/audit_divergences.py
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import fisherkl as fk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mp_oracles import chi2_oracle, kl_oracle

torch.set_num_threads(1)
F64 = torch.float64


def t64(*v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=F64)


def close(got: float, want: float, rtol: float) -> bool:
    return got == want or (math.isfinite(want) and abs(got - want) <= rtol * abs(want))


def item1() -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    mvn = fk.family("mvn")
    p, q = [0, 0, 1, 0.3, 0.8], [0.5, -0.2, 1.2, 0.1, 1.0]
    cases = [
        (
            "1 mvn χ² far means = e^100 − 1",
            lambda: fk.chi2(mvn, t64(0, 0, 1, 0, 1), t64(10, 0, 1, 0, 1)),
            math.expm1(100),
        ),
        ("1 mvn χ² σq² = 4σp² = inf", lambda: fk.chi2(mvn, t64(0, 0, 1, 0, 1), t64(0, 0, 2, 0, 2)), math.inf),
        (
            "1 mvn χ² correlated = 159329.69",
            lambda: fk.chi2(mvn, t64(*p), t64(*q)),
            float(chi2_oracle("mvn", {}, p, q)),
        ),
    ]
    out = [
        (name, (lambda f=f, w=w: (close(float(f()), w, 1e-10), f"{float(f()):.6g} vs {w:.6g}"))) for name, f, w in cases
    ]
    for name, fixed in (("mvn", {}), ("mvn_diag", {}), ("lowrank_mvn", {})):
        out.append((f"1 {name} χ² on 18 random pairs", lambda name=name, fixed=fixed: random_pairs(name, fixed)))
    return out


def random_pairs(name: str, fixed: dict) -> tuple[bool, str]:
    fam = fk.family(name, **fixed)
    rng = np.random.default_rng(0)
    wrong = 0
    for _ in range(18):
        tp = fam.typical() * torch.tensor(np.exp(rng.normal(0, 0.2, fam.dim)))
        tq = tp + torch.tensor(rng.normal(0, 0.5, fam.dim)) * (tp.abs() + 0.3)
        try:
            tq = fam.validate(tq)
        except fk.ParameterError:
            tq = fam.validate(tp + 0.1 * (tq - tp))
        want = float(chi2_oracle(name, fixed, tp.tolist(), tq.tolist()))
        got = float(fk.chi2(fam, tp, tq, seed=0))
        wrong += not close(got, want, 1e-10 * max(1.0, math.log1p(want) if math.isfinite(want) else 1.0))
    return wrong == 0, f"{wrong}/18 wrong"


def item2() -> tuple[bool, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = fk.chi2(
            fk.family("normal"), t64(0, 1), t64(0, 1.35), method="mc", n_samples=2000, seed=0, return_error=True
        )
    warned = any("E_p" in str(w.message) for w in caught)
    ok = warned or math.isinf(float(est.error))
    return ok, f"value {float(est.value):.4g} ± {float(est.error):.3g}, warning: {warned}"


def item3() -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    geo, poi, nb = fk.family("geometric"), fk.family("poisson"), fk.family("negativebinomial", total_count=5)
    cases = [
        ("3 geometric exact χ² 0.2922→0.1484 = inf", geo, 0.2922, 0.1484, math.inf),
        ("3 poisson exact χ² 0.4791→11.1226", poi, 0.4791, 11.1226, math.expm1((11.1226 - 0.4791) ** 2 / 0.4791)),
        ("3 poisson exact χ² 1.5677→1476.37 = inf", poi, 1.5677, 1476.37, math.inf),
        ("3 negativebinomial exact χ² 0.494→0.8185 = inf", nb, 0.494, 0.8185, math.inf),
    ]

    def run(f, a, b, w):
        try:
            got = float(fk.chi2(f, t64(a), t64(b), method="exact"))
        except fk.FisherKLError as exc:
            return False, f"{type(exc).__name__}"
        return close(got, w, 1e-10), f"{got:.6g} vs {w:.6g}"

    return [(n, (lambda f=f, a=a, b=b, w=w: run(f, a, b, w))) for n, f, a, b, w in cases]


def item4_negative() -> tuple[bool, str]:
    """Every family at typical θ and relative perturbations 1e-12…1e-6: KL, Jeffreys, χ² never < 0."""
    from fisherkl.families import names

    rng = np.random.default_rng(4)
    bad: set[str] = set()
    for name in names():
        fam = fk.family(name)
        tp = fam.typical()
        for eps in (1e-12, 1e-10, 1e-8, 1e-6):
            v = torch.tensor(rng.uniform(-1, 1, fam.dim))
            try:
                tq = fam.validate(tp * (1 + eps * v) + eps * v * (tp == 0))
            except fk.ParameterError:
                continue
            for fn in (fk.kl, fk.jeffreys, fk.chi2):
                try:
                    if float(fn(fam, tp, tq)) < 0:
                        bad.add(f"{name}.{fn.__name__}")
                except fk.FisherKLError:
                    pass
    return not bad, f"negative: {sorted(bad)}"


def item4_cases() -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    def kl_case(name, tp, tq, rtol, dtype=F64, fixed=None):
        fixed = fixed or {}
        fam = fk.family(name, **fixed)
        a, b = torch.tensor(tp, dtype=dtype), torch.tensor(tq, dtype=dtype)
        got = float(fk.kl(fam, a, b))
        want = float(kl_oracle(name, fixed, a.double().tolist(), b.double().tolist()))
        return close(got, want, rtol) and got >= 0, f"{got:.6g} vs {want:.6g}"

    def lowrank_self():
        fam = fk.family("lowrank_mvn")
        rng = np.random.default_rng(0)
        th = fam.typical() + 0.3 * torch.tensor(rng.normal(size=(18, fam.dim)))
        th[:, -fam.k :] = th[:, -fam.k :].abs() + 0.1
        nonzero = int((fk.kl(fam, th, th) != 0).sum())
        return nonzero == 0, f"{nonzero}/18 nonzero"

    g = [500.0, 1000.0]
    return [
        ("4 gamma [500, 1000] at 1e-12", lambda: kl_case("gamma", g, [x * (1 + 1e-12) for x in g], 1e-6)),
        ("4 beta KL at 1e-9", lambda: kl_case("beta", [2.0, 3.0], [2.0 * (1 + 1e-9), 3.0 * (1 - 1e-9)], 1e-8)),
        ("4 poisson KL at 1e-9", lambda: kl_case("poisson", [3.5], [3.5 * (1 + 1e-9)], 1e-8)),
        ("4 kl(lowrank_mvn, θ, θ) = 0", lowrank_self),
        ("15 gamma [1e15, 1] → [1.001e15, 1.001]", lambda: kl_case("gamma", [1e15, 1.0], [1.001e15, 1.001], 1e-10)),
        (
            "15 float32 gamma [1e6, 1] → [1.1e6, 1.1]",
            lambda: kl_case("gamma", [1e6, 1.0], [1.1e6, 1.1], 1e-5, torch.float32),
        ),
        ("15 float32 chi2 1e6 → 1.001e6", lambda: kl_case("chi2", [1e6], [1.001e6], 1e-5, torch.float32)),
        ("15 float32 poisson 1e8 → 1.001e8", lambda: kl_case("poisson", [1e8], [1.001e8], 1e-5, torch.float32)),
        ("15 vonmises [0.3, 1e-8] → [0.33, 1.1e-8]", lambda: kl_case("vonmises", [0.3, 1e-8], [0.33, 1.1e-8], 1e-8)),
        ("15 negativebinomial 1e-15 → 1.001e-15", lambda: kl_case("negativebinomial", [1e-15], [1.001e-15], 1e-8)),
    ]


def item5() -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    import mpmath as mp

    from mp_oracles import quad_divergence  # mpmath quadrature of ∫p(log p − log q)

    def logistic(th, x):
        z = (x - th[0]) / th[1]
        return -z - 2 * mp.log1p(mp.exp(-z)) - mp.log(th[1])

    def studentt(th, x):
        nu, z = mp.mpf(5), (x - th[0]) / th[1]
        return mp.loggamma(3) - mp.loggamma(2.5) - mp.log(mp.sqrt(5 * mp.pi) * th[1]) - 3 * mp.log1p(z * z / nu)

    def kuma(th, x):
        return mp.log(th[0] * th[1]) + (th[0] - 1) * mp.log(x) + (th[1] - 1) * mp.log1p(-(x ** th[0]))

    def mix(th, x):
        w = [th[0], 1 - th[0]]
        return mp.log(mp.fsum(w[i] * mp.npdf(x, th[1 + i], th[3 + i]) for i in range(2)))

    cases = [
        ("logistic", (0.5, 1.5), logistic, [-mp.inf, 0.5, mp.inf], 1e-9),
        ("studentt", (0.5, 1.5), studentt, [-mp.inf, 0.5, mp.inf], 1e-9),
        ("studentt", (0.5, 1.5), studentt, [-mp.inf, 0.5, mp.inf], 1e-5),
        ("kumaraswamy", (2.0, 3.0), kuma, [0, 0.5, 1], 1e-9),
        ("mixture_normal", (1 / 3, -1.0, 1.0, 0.7, 0.9), mix, [-mp.inf, -1, 1, mp.inf], 1e-9),
    ]

    def run(name, theta, logpdf, bounds, eps):
        fam = fk.family(name)
        tp = t64(*theta)
        tq = tp * (1 + eps * torch.linspace(0.3, -0.7, fam.dim, dtype=F64))
        try:
            est = fk.kl(fam, tp, tq, return_error=True)
        except fk.FisherKLError as exc:
            return False, type(exc).__name__
        with mp.workdps(30):
            want = float(quad_divergence(logpdf, tp.tolist(), tq.tolist(), bounds))
        err = abs(float(est.value) - want)
        return err <= float(est.error) and float(est.value) > 0, f"error {err:.2g}, stated {float(est.error):.2g}"

    return [(f"5 {c[0]} quadrature KL at {c[4]:g}", (lambda c=c: run(*c))) for c in cases]


def item6() -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    def pareto():
        est = fk.fisher(fk.family("pareto"), t64(0.225), "score", return_error=True)
        err = abs(float(est.value) - 1 / 0.225**2)
        return err <= float(est.error), f"error {err:.2g}, stated {float(est.error):.2g}"

    def studentt(df):
        f = fk.family("studentt", df=df)
        closed = fk.fisher(f, t64(0.5, 1.5), "closed")
        try:
            got = fk.fisher(f, t64(0.5, 1.5), "kl_hessian")
        except fk.FisherKLError as exc:
            return False, type(exc).__name__
        err = float((got - closed).abs().max() / closed.abs().max())
        return err < 1e-12, f"relative error {err:.2g}"

    return [
        ("6 pareto score α = 0.225: error covered", pareto),
        ("6 studentt df 0.5 kl_hessian exact", lambda: studentt(0.5)),
        ("6 studentt df 1 kl_hessian exact", lambda: studentt(1.0)),
    ]


def item7() -> tuple[bool, str]:
    from fisherkl import nn as fnn

    outcomes = []
    for seed in range(6):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4)).double()
        x = torch.randn(40, 3, dtype=F64)
        for rep in ("kfac", "ekfac"):
            f = fnn.fisher(net, x, "categorical", representation=rep)
            g = [torch.randn_like(p) for p in net.parameters()]
            for call in (lambda f=f, g=g: fk.natural_gradient(f, g), lambda f=f, g=g: fk.kl_step(f, g, 1e-3)):
                try:
                    call()
                    outcomes.append("returned")
                except fk.FisherKLError as exc:
                    outcomes.append("named" if "2.weight" in str(exc) else "refused")
    named = outcomes.count("named")
    return named == len(outcomes), f"{named}/{len(outcomes)} refused naming the layer ({set(outcomes)})"


def item9() -> list[tuple[str, Callable[[], tuple[bool, str]]]]:
    vm = fk.family("vonmises")

    def dist(a, b, want):
        try:
            got = float(fk.fisher_rao_distance(vm, t64(*a), t64(*b)))
        except fk.FisherKLError as exc:
            return False, type(exc).__name__
        return abs(got - want) <= 1e-9, f"{got:.12g} vs {want}"

    return [
        ("9 vonmises locations 2π apart: distance 0", lambda: dist((0, 1), (2 * math.pi, 1), 0.0)),
        ("9 vonmises [0, 1] → [2.5, 1] = 1.266488566785", lambda: dist((0, 1), (2.5, 1), 1.266488566785)),
    ]


def main() -> None:
    checks: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
        *item1(),
        ("2 MC χ² with E_p[(q/p)⁴] = ∞ gives no confident SE", item2),
        *item3(),
        ("4 no negative KL/Jeffreys/χ² at 1e-12…1e-6, every family", item4_negative),
        *item4_cases(),
        *item5(),
        *item6(),
        ("7 singular KFAC/EKFAC, damping 0: named refusal (6 seeds)", item7),
        *item9(),
    ]
    passed = 0
    for name, check in checks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ok, detail = check()
            except Exception as exc:  # an internal error is a failure of the reproducer
                ok, detail = False, f"{type(exc).__name__}: {str(exc)[:80]}"
        passed += ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"{passed}/{len(checks)} reproducers pass")


if __name__ == "__main__":
    main()
