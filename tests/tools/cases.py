"""A fixed, seeded sample of calls over fisherkl's public non-network API, each with what a correct
outcome is: ``(label, call, check)`` where ``check(result) -> bool`` judges a returned value (against an
mpmath oracle or a mathematical property), or ``check is None`` when the arguments are invalid (so the
call must refuse). Used by ``tests/tools/outcomes.py`` (counts by outcome class) and the fuzz tests.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import mpmath as mp
import torch

import fisherkl as fk

from .contract import matches, tolerance
from .oracles import as_floats, fisher_oracle, normal_distance, poisson_distance

Case = tuple[str, Callable[[], Any], "Callable[[Any], bool] | None"]

# family name, fixed arguments: every family with an oracle
FAMILIES: list[tuple[str, dict]] = [
    ("normal", {}),
    ("lognormal", {}),
    ("laplace", {}),
    ("cauchy", {}),
    ("studentt", {"df": 0.5}),
    ("studentt", {"df": 5.0}),
    ("logistic", {}),
    ("gumbel", {}),
    ("bernoulli", {}),
    ("binomial", {"total_count": 10}),
    ("geometric", {}),
    ("negativebinomial", {"total_count": 5.0}),
    ("categorical", {"k": 3}),
    ("multinomial", {"total_count": 4, "k": 3}),
    ("poisson", {}),
    ("exponential", {}),
    ("rayleigh", {}),
    ("halfnormal", {}),
    ("gamma", {}),
    ("inversegamma", {}),
    ("chi2", {}),
    ("beta", {}),
    ("dirichlet", {"k": 3}),
    ("weibull", {}),
    ("vonmises", {}),
    ("pareto", {}),
]
ROUTES = ("closed", "kl_hessian", "jeffreys_hessian", "score", "neg_hessian")
DTYPES = (torch.float64, torch.float32)


def exponent_range(dtype: torch.dtype) -> tuple[int, int]:
    return (-300, 300) if dtype == torch.float64 else (-36, 36)


def draw_coordinate(rng: random.Random, low: float, high: float, dtype: torch.dtype) -> float:
    """An extreme-but-valid value in (low, high) half of the time, a moderate one otherwise."""
    lo_e, hi_e = exponent_range(dtype)
    extreme = rng.random() < 0.5
    e = rng.uniform(lo_e, hi_e) if extreme else rng.uniform(-1.5, 1.5)
    if math.isinf(low) and math.isinf(high):
        return rng.choice((-1.0, 1.0)) * 10.0**e if rng.random() < 0.8 else 0.0
    if math.isinf(high):
        return low + 10.0**e
    # the unit interval: near 0, near 1, or inside
    small = 10.0 ** (-rng.uniform(1, -lo_e)) if extreme else rng.uniform(0.02, 0.98)
    return small if rng.random() < 0.6 else 1 - (10.0 ** (-rng.uniform(1, 15)) if extreme else small)


def draw_theta(rng: random.Random, name: str, fixed: dict, dtype: torch.dtype) -> list[float]:
    fam = fk.family(name, **fixed)
    if name in ("categorical", "multinomial"):
        k = int(fixed["k"])
        lo_e = exponent_range(dtype)[0]
        raw = [10.0 ** (-rng.uniform(0, -lo_e)) if rng.random() < 0.4 else rng.uniform(0.05, 1) for _ in range(k)]
        total = math.fsum(raw)
        return [r / total for r in raw[:-1]]
    return [draw_coordinate(rng, c.low, c.high, dtype) for c in fam.constraints]


def fisher_case(rng: random.Random, name: str, fixed: dict, route: str, dtype: torch.dtype) -> Case:
    theta = draw_theta(rng, name, fixed, dtype)
    t = torch.tensor(theta, dtype=dtype)
    represented = [float(x) for x in t]
    fam = fk.family(name, **fixed)
    try:
        truth = as_floats(fisher_oracle(name, fixed, represented))
    except (ValueError, ZeroDivisionError):
        truth = None  # θ not representable in this dtype (rounds to 0 or 1): the call must refuse
    finite = truth is not None and all(math.isfinite(x) and abs(x) < torch.finfo(dtype).max for r in truth for x in r)
    kwargs = {"return_error": True, "seed": 0, "n_samples": 4000}

    def call() -> Any:
        return fk.fisher(fam, t, route, **kwargs)

    def check(est: Any) -> bool:
        return finite and matches(est.value, est.error, truth, mc=est.method.endswith("/mc"))

    label = f"fisher {name}{fixed or ''} {route} {str(dtype)[6:]} θ={[f'{x:.3g}' for x in represented]}"
    return label, call, check


def fisher_cases(seed: int, n: int) -> Iterator[Case]:
    rng = random.Random(seed)
    for _ in range(n):
        name, fixed = rng.choice(FAMILIES)
        yield fisher_case(rng, name, fixed, rng.choice(ROUTES), rng.choice(DTYPES))


def _rel_ok(value: Any, truth: Any, dtype: torch.dtype = torch.float64) -> bool:
    v = float(value)
    t = float(truth)
    return math.isfinite(v) and math.isfinite(t) and abs(v - t) <= tolerance(dtype) * max(abs(t), 1e-300)


def geometry_cases(seed: int, n: int) -> Iterator[Case]:
    rng = random.Random(seed + 1)
    normal, poisson = fk.family("normal"), fk.family("poisson")
    for _ in range(n):
        kind = rng.choice(("distance normal", "distance poisson", "taylor", "christoffel", "cramer_rao"))
        if kind == "distance normal":
            a = [
                draw_coordinate(rng, -math.inf, math.inf, torch.float64),
                draw_coordinate(rng, 0, math.inf, torch.float64),
            ]
            b = [
                draw_coordinate(rng, -math.inf, math.inf, torch.float64),
                draw_coordinate(rng, 0, math.inf, torch.float64),
            ]
            truth = normal_distance(a, b)
            yield (
                f"fisher_rao_distance normal {a} {b}",
                lambda a=a, b=b: fk.fisher_rao_distance(
                    normal, torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
                ),
                lambda r, truth=truth: _rel_ok(r, truth),
            )
        elif kind == "distance poisson":
            a, b = (draw_coordinate(rng, 0, math.inf, torch.float64) for _ in range(2))
            truth = poisson_distance(a, b)
            yield (
                f"fisher_rao_distance poisson {a:.3g} {b:.3g}",
                lambda a=a, b=b: fk.fisher_rao_distance(
                    poisson, torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
                ),
                lambda r, truth=truth: _rel_ok(r, truth),
            )
        elif kind == "taylor":
            name, fixed = rng.choice(
                [f for f in FAMILIES if f[0] in ("poisson", "exponential", "normal", "gamma", "bernoulli", "geometric")]
            )
            fam = fk.family(name, **fixed)
            theta = draw_theta(rng, name, fixed, torch.float64)
            delta = [1e-3 * x * rng.uniform(-1, 1) for x in theta]
            info = fisher_oracle(name, fixed, theta)
            truth = mp.fsum(info[i][j] * delta[i] * delta[j] for i in range(len(delta)) for j in range(len(delta))) / 2
            yield (
                f"kl_taylor order 2 {name} θ={theta} δ={delta}",
                lambda fam=fam, theta=theta, delta=delta: fk.kl_taylor(
                    fam, torch.tensor(theta, dtype=torch.float64), torch.tensor(delta, dtype=torch.float64)
                ),
                lambda r, truth=truth: _rel_ok(r, truth) or (float(truth) == 0 and float(r) == 0),
            )
        elif kind == "christoffel":
            name, fixed = rng.choice(
                [f for f in FAMILIES if f[0] in ("geometric", "poisson", "exponential", "bernoulli")]
            )
            fam = fk.family(name, **fixed)
            theta = draw_theta(rng, name, fixed, torch.float64)
            # Γ = ½ I′/I = ½ (log I)′ for a one-parameter family, from the closed forms of I
            x = mp.mpf(theta[0])
            truth = {
                "geometric": (-2 / x + 1 / (1 - x)) / 2,  # I = 1/(p²(1 − p))
                "bernoulli": (-1 / x + 1 / (1 - x)) / 2,  # I = 1/(p(1 − p))
                "poisson": -1 / (2 * x),  # I = 1/λ
                "exponential": -1 / x,  # I = 1/λ²
            }[name]
            yield (
                f"christoffel {name} θ={theta}",
                lambda fam=fam, theta=theta: fk.christoffel(fam, torch.tensor(theta, dtype=torch.float64)),
                lambda r, truth=truth: _rel_ok(r.reshape(()), truth) if mp.isfinite(truth) else False,
            )
        else:
            name, fixed = rng.choice([f for f in FAMILIES if f[0] in ("normal", "gamma", "beta", "poisson")])
            fam = fk.family(name, **fixed)
            theta = draw_theta(rng, name, fixed, torch.float64)
            n_obs = rng.choice((1, 10, 10**6, 10**400))
            info = mp.matrix(fisher_oracle(name, fixed, theta))
            try:
                truth = as_floats((info**-1 / n_obs).tolist())
            except ZeroDivisionError:
                truth = None
            yield (
                f"cramer_rao {name} θ={theta} n={'10**400' if n_obs > 10**300 else n_obs}",
                lambda fam=fam, theta=theta, n_obs=n_obs: fk.cramer_rao(
                    fam, torch.tensor(theta, dtype=torch.float64), n=n_obs
                ),
                lambda r, truth=truth: truth is not None and _matrix_ok(r, truth),
            )


def _matrix_ok(value: torch.Tensor, truth: list[list[float]]) -> bool:
    t = torch.tensor(truth, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        return False
    return bool(((value - t).abs() <= tolerance(value.dtype) * t.abs().max() + 1e-300).all()) and bool(
        torch.isfinite(value).all()
    )


# --- secondary arguments: every value here is invalid (the call must refuse), unless marked valid -----
def _family(name: str, **fixed: Any) -> Any:
    return fk.family(name, **fixed)


T2 = torch.tensor([0.5, 1.5], dtype=torch.float64)


def argument_cases() -> Iterator[Case]:
    normal, dirichlet = fk.family("normal"), fk.family("dirichlet")
    d3 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    for v in ("a", 0, 1, 2.5, None, True, -5):
        yield f"fisher n_samples={v!r}", lambda v=v: fk.fisher(dirichlet, d3, "score", n_samples=v), None
    for v in ("x", -1, 1.5, [1]):
        yield f"fisher seed={v!r}", lambda v=v: fk.fisher(dirichlet, d3, "score", seed=v), None
    yield "fisher generator='g'", lambda: fk.fisher(dirichlet, d3, "score", generator="g"), None
    for v in (-1.0, math.nan, "a", 0.0, 2.0):
        yield f"fisher rtol={v!r}", lambda v=v: fk.fisher(normal, T2, "score", rtol=v), None
    for v in (0, -1, "a", 2.5):
        yield (
            f"exp_map steps={v!r}",
            lambda v=v: fk.exp_map(normal, T2, torch.tensor([0.1, 0.1], dtype=torch.float64), steps=v),
            None,
        )
    for v in (math.nan, "a", math.inf):
        yield (
            f"exp_map t={v!r}",
            lambda v=v: fk.exp_map(normal, T2, torch.tensor([0.1, 0.1], dtype=torch.float64), t=v),
            None,
        )
    yield (
        "exp_map velocity of length 3",
        lambda: fk.exp_map(normal, T2, torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)),
        None,
    )
    for v in (0.0, -1.0, math.nan, "a"):
        yield (
            f"validity_radius t_max={v!r}",
            lambda v=v: fk.validity_radius(normal, T2, torch.tensor([1.0, 0.0], dtype=torch.float64), t_max=v),
            None,
        )
    for v in (-1, "a", 2.5):
        yield (
            f"validity_radius iterations={v!r}",
            lambda v=v: fk.validity_radius(normal, T2, torch.tensor([0.0, 1.0], dtype=torch.float64), iterations=v),
            None,
        )
    for v in (math.nan, -1.0, "a"):
        yield (
            f"geodesic rtol={v!r}",
            lambda v=v: fk.geodesic(
                fk.family("gamma"),
                torch.tensor([2.0, 1.0], dtype=torch.float64),
                torch.tensor([3.0, 2.0], dtype=torch.float64),
                rtol=v,
            ),
            None,
        )
    for v in (math.nan, "a", -1.0):
        yield f"cramer_rao rcond={v!r}", lambda v=v: fk.cramer_rao(normal, T2, rcond=v), None
    for v in (0, 1, "a"):
        yield (
            f"fisher_rao_distance return_path steps={v!r}",
            lambda v=v: fk.fisher_rao_distance(normal, T2, T2 + 1, return_path=True, steps=v),
            None,
        )
    for v in (0, -1, "a", 1.5):
        yield f"check directions={v!r}", lambda v=v: fk.check([normal], directions=v, radius=False), None
    yield "check([1])", lambda: fk.check([1]), None
    eye = torch.eye(2, dtype=torch.float64)
    g = torch.ones(2, dtype=torch.float64)
    for v in (math.inf, math.nan, -1.0, "a"):
        yield f"natural_gradient damping={v!r}", lambda v=v: fk.natural_gradient(eye, g, damping=v), None
    for v in (math.nan, -1.0, "a", math.inf):
        yield f"kl_step max_kl={v!r}", lambda v=v: fk.kl_step(eye, g, v), None
    yield "kl_step integer matrix", lambda: fk.kl_step(torch.eye(2, dtype=torch.int64), g, 0.1), None
    yield (
        "natural_gradient float16",
        lambda: fk.natural_gradient(torch.eye(2, dtype=torch.float16), torch.ones(2, dtype=torch.float16)),
        None,
    )
    for v in (None, "a", 1.5, 10**400):
        yield (
            f"cramer_rao n={'10**400' if v == 10**400 else repr(v)}",
            lambda v=v: fk.cramer_rao(normal, T2, n=v),
            ((lambda r: bool(torch.isfinite(r).all()) and float(r.abs().max()) == 0.0) if v == 10**400 else None),
        )
    # fixed arguments: valid extremes must be accepted and give the closed form; invalid ones refused
    yield (
        "family studentt df=1e300 closed",
        lambda: fk.fisher(_family("studentt", df=1e300), T2),
        lambda r: matches(r, None, as_floats(fisher_oracle("studentt", {"df": 1e300}, [0.5, 1.5]))),
    )
    yield (
        "family pareto scale=1e-300 closed",
        lambda: fk.fisher(_family("pareto", scale=1e-300), torch.tensor([2.0], dtype=torch.float64)),
        lambda r: matches(r, None, [[0.25]]),
    )
    yield (
        "family binomial total_count=1e30",
        lambda: fk.fisher(_family("binomial", total_count=1e30), torch.tensor([0.3], dtype=torch.float64), "score"),
        None,
    )
    yield "family categorical k=10**20", lambda: _family("categorical", k=10**20), None
    yield "family binomial total_count=True", lambda: _family("binomial", total_count=True), None
    # θ of kinds that cannot be computed with
    for dt in (torch.float16, torch.bfloat16):
        for route in ("closed", "score", "kl_hessian"):
            yield f"fisher {dt} θ {route}", lambda dt=dt, route=route: fk.fisher(normal, T2.to(dt), route), None
    yield "fisher meta θ", lambda: fk.fisher(normal, torch.empty(2, device="meta")), None
    for route in ROUTES:
        yield (
            f"fisher empty batch {route}",
            lambda route=route: fk.fisher(normal, torch.empty(0, 2, dtype=torch.float64), route),
            lambda r: tuple(r.shape) == (0, 2, 2),
        )
    constant = fk.Model(lambda t: torch.distributions.Normal(torch.zeros(t.shape[:-1], dtype=t.dtype), 1.0), 1)
    for route in ROUTES[1:]:
        yield (
            f"fisher constant model {route}",
            lambda route=route: fk.fisher(constant, torch.tensor([0.5], dtype=torch.float64), route),
            lambda r: float(r.abs().max()) == 0.0,
        )
    concave = fk.ExponentialFamily(
        lambda e: -(e**2).sum(-1), 1, base=lambda e: torch.distributions.Normal(e[..., 0], 1.0)
    )
    yield (
        "ExponentialFamily with a concave log-partition",
        lambda: fk.fisher(concave, torch.tensor([0.0], dtype=torch.float64)),
        None,
    )
    wide = torch.tensor([0.5, 1.5], dtype=torch.float64).expand(10**5, 2)
    yield (
        "fisher stride-0 batch of 1e5 θ by quadrature",
        lambda: fk.fisher(normal, wide, "score"),
        lambda r: tuple(r.shape) == (10**5, 2, 2) and matches(r[-1], None, [[1 / 2.25, 0], [0, 2 / 2.25]]),
    )
    nb = fk.family("negativebinomial")
    yield (
        "negativebinomial p=1-1e-12 neg_hessian",
        lambda: fk.fisher(nb, torch.tensor([1 - 1e-12], dtype=torch.float64), "neg_hessian"),
        lambda r: matches(r, None, as_floats(fisher_oracle("negativebinomial", {}, [1 - 1e-12]))),
    )


# --- Fisher matrices ---------------------------------------------------------------------------------
def _matrices() -> dict[str, Any]:
    from fisherkl.matrix import Dense, Diagonal, LowRank, ParamLayout

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    m = a @ a.T + 0.5 * torch.eye(4, dtype=torch.float64)
    layout = ParamLayout(("w", "b"), ((3,), (1,)))
    vals, vecs = torch.linalg.eigh(m)
    return {
        "Dense": Dense(m, layout),
        "Diagonal": Diagonal(m.diagonal().clone(), layout),
        "LowRank": LowRank(vals.flip(0)[:2].clone(), vecs.flip(1)[:, :2].clone(), layout),
    }


def matrix_cases() -> Iterator[Case]:
    mats = _matrices()
    b = torch.ones(4, dtype=torch.float64)
    for name, f in mats.items():
        dense = f.to_dense()
        for k in (1, 2):
            want = torch.linalg.eigvalsh(dense).flip(0)[:k]
            yield (
                f"{name}.topk({k})",
                lambda f=f, k=k: f.topk(k),
                lambda r, want=want: bool(torch.allclose(r[0], want, rtol=1e-10, atol=1e-12)),
            )
        for k in (2.5, 0, 99, "a", None):
            yield f"{name}.topk({k!r})", lambda f=f, k=k: f.topk(k), None
        for dmp in (0.1, 1.0):
            yield (
                f"{name}.solve(damping={dmp})",
                lambda f=f, dmp=dmp: f.solve(b, damping=dmp),
                lambda r, d=dense, dmp=dmp: bool(
                    torch.allclose((d + dmp * torch.eye(4, dtype=torch.float64)) @ r, b, atol=1e-10)
                ),
            )
        for dmp in (-1.0, math.nan, math.inf, torch.tensor([1.0, 2.0]), "x"):
            yield f"{name}.solve(damping={dmp!r})", lambda f=f, dmp=dmp: f.solve(b, damping=dmp), None
        yield f"{name}.to_dense(max_bytes=0)", lambda f=f: f.to_dense(max_bytes=0), None
        yield f"{name}.to_dense(max_bytes=-1)", lambda f=f: f.to_dense(max_bytes=-1), None
        yield f"{name}.to_dense(max_bytes='a')", lambda f=f: f.to_dense(max_bytes="a"), None
        yield f"{name}.diag('bogus')", lambda f=f: f.diag("bogus"), None
        for c in (math.nan, math.inf, -1.0):
            yield f"{name} * {c}", lambda f=f, c=c: f * c, None
        yield f"{name} / 0", lambda f=f: f / 0, None
    from fisherkl.matrix import from_state_dict

    good = mats["Dense"].state_dict()
    for label, state in (
        ("{'type': 'Dense'}", {"type": "Dense"}),
        ("type 3", {**good, "type": 3}),
        ("not a dict", [1, 2]),
        ("n_examples=-5", {**good, "n_examples": -5}),
    ):
        yield f"from_state_dict {label}", lambda state=state: from_state_dict(state), None


# --- files --------------------------------------------------------------------------------------------
def _write_payload(path: str, state: dict) -> None:
    from fisherkl.io import write_file

    write_file(path, "matrix", state["type"], state)


def file_cases(directory: str) -> Iterator[Case]:
    mats = _matrices()
    dense = mats["Dense"]
    good = dense.state_dict()
    m = good["matrix"]
    bad_states = {
        "NaN Dense": {**good, "matrix": m.clone().fill_(math.nan)},
        "asymmetric Dense": {**good, "matrix": m + torch.triu(torch.ones_like(m), 1)},
        "negative-definite Dense": {**good, "matrix": -m},
        "integer Dense": {**good, "matrix": m.round().long()},
        "scaled c=-1": {"type": "ScaledMatrix", "layout": good["layout"], "c": -1.0, "base": good},
        "scaled c=NaN": {"type": "ScaledMatrix", "layout": good["layout"], "c": math.nan, "base": good},
        "n_examples=-5": {**good, "n_examples": -5},
        "negative Diagonal": {**mats["Diagonal"].state_dict(), "diagonal": -torch.ones(4, dtype=torch.float64)},
        "LowRank with negative values": {
            **mats["LowRank"].state_dict(),
            "values": torch.tensor([1.0, -2.0], dtype=torch.float64),
        },
    }
    for label, state in bad_states.items():
        path = os.path.join(directory, f"bad-{label.replace(' ', '_')}.pt")
        _write_payload(path, state)
        yield f"load {label} (valid checksum)", lambda path=path: fk.load(path), None
    path = os.path.join(directory, "good.pt")
    dense.save(path)
    yield "load good Dense", lambda: fk.load(path), lambda r: bool(torch.equal(r.to_dense(), dense.to_dense()))
    yield "load net='x'", lambda: fk.load(path, net="x"), None
    yield "load representation=3", lambda: fk.load(path, representation=3), None
    doc = torch.load(path, weights_only=True)
    doc["version"] = True
    vpath = os.path.join(directory, "version-true.pt")
    torch.save(doc, vpath)
    yield "load version True", lambda: fk.load(vpath), None
    fifo = os.path.join(directory, "fifo")
    os.mkfifo(fifo)
    yield "load a FIFO", lambda: fk.load(fifo), None
    yield "save onto a full disk (/dev/full)", lambda: _save_to_full_disk(dense), None
    yield "orphan .tmp after kill -9 removed by the next save", lambda: _orphan_after_kill(directory), lambda r: r == []


def _save_to_full_disk(f: Any) -> None:
    """Save where every write fails with ENOSPC, as on a full disk: the temporary file's descriptor is
    replaced by one of /dev/full (Linux)."""
    import fisherkl.io as fio

    real = fio.os.fdopen

    def full(fd: int, *args: Any, **kwargs: Any) -> Any:
        dev = os.open("/dev/full", os.O_WRONLY)
        os.dup2(dev, fd)
        os.close(dev)
        return real(fd, *args, **kwargs)

    fio.os.fdopen = full  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as d:
            f.save(os.path.join(d, "x.pt"))
    finally:
        fio.os.fdopen = real


_KILLED_SAVE = """
import os, sys, time, torch, fisherkl
from fisherkl.matrix import Dense, ParamLayout
import fisherkl.io as fio
path = sys.argv[1]
real = torch.save
def slow(obj, f, *a, **k):
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
torch.save = slow
Dense(torch.eye(2, dtype=torch.float64), ParamLayout(("w",), ((2,),))).save(path)
"""


def _orphan_after_kill(directory: str) -> list[str]:
    """kill -9 a process in the middle of a save, save the same path again: which .tmp files remain."""
    path = os.path.join(directory, "killed.pt")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # the child is inside the write
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _matrices()["Dense"].save(path)
    return sorted(n for n in os.listdir(directory) if n.startswith(".killed.pt.") and n.endswith(".tmp"))


def all_cases(directory: str, seed: int = 0, n_fisher: int = 400, n_geometry: int = 60) -> Iterator[Case]:
    """The fixed sample: ``n_fisher`` Fisher calls, ``n_geometry`` geometry calls, then the fixed lists."""
    yield from fisher_cases(seed, n_fisher)
    yield from geometry_cases(seed, n_geometry)
    yield from argument_cases()
    yield from matrix_cases()
    yield from file_cases(directory)
