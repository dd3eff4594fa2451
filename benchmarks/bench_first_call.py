"""What a new user waits for: `import fisherkl`, the first Fisher of a 500×4 logistic model, the first
forecast Fisher, and a Weibull regression with covariates — each in a fresh process, median of runs.

    python benchmarks/bench_first_call.py [--runs 3]
    PYTHONPATH=/path/to/other/src python benchmarks/bench_first_call.py   # the same on another checkout

Scenarios a new API does not exist for on an older checkout are reported as "n/a". Figures depend
on the machine's load and disk cache; the script prints them, nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SETUP = """
import time, sys, json
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
t1 = time.perf_counter()
import fisherkl as fk
t2 = time.perf_counter()
D = torch.distributions
g = torch.Generator().manual_seed(0)
out = {"import torch": t1 - t0, "import fisherkl": t2 - t1}
"""

SCENARIOS = {
    "logistic 500x4: user Model(Independent(Bernoulli))": """
X = torch.randn(500, 4, dtype=torch.float64, generator=g)
m = fk.Model(lambda t: D.Independent(D.Bernoulli(logits=t @ X.T), 1), 4)
th = torch.zeros(4, dtype=torch.float64)
""",
    "logistic 500x4: fk.regression('bernoulli', X)": """
X = torch.randn(500, 4, dtype=torch.float64, generator=g)
if not hasattr(fk, "regression"):
    print(json.dumps({"na": True})); sys.exit(0)
m = fk.regression("bernoulli", X)
th = torch.zeros(4, dtype=torch.float64)
""",
    "logistic 500x4: fisherkl.nn.fisher(Linear(4, 1), head='bernoulli')": """
X = torch.randn(500, 4, dtype=torch.float64, generator=g)
net = torch.nn.Linear(4, 1).double()
t3 = time.perf_counter()
F = fk.nn.fisher(net, X, head="bernoulli", representation="dense")
t4 = time.perf_counter()
F = fk.nn.fisher(net, X, head="bernoulli", representation="dense")
t5 = time.perf_counter()
out.update({"first call": t4 - t3, "second call": t5 - t4, "method": "nn.fisher dense",
            "stated rel error": 0.0, "sympy imported": "sympy" in sys.modules})
print(json.dumps(out)); sys.exit(0)
""",
    "forecast 50 points: user Model(MultivariateNormal)": """
x = torch.linspace(0, 1, 50, dtype=torch.float64)
C = 0.01 * torch.eye(50, dtype=torch.float64)
m = fk.Model(lambda t: D.MultivariateNormal(t[..., :1] + t[..., 1:2] * x, covariance_matrix=C), 2)
th = torch.tensor([1.0, 2.0], dtype=torch.float64)
""",
    "forecast 50 points: fk.gaussian_model": """
x = torch.linspace(0, 1, 50, dtype=torch.float64)
C = 0.01 * torch.eye(50, dtype=torch.float64)
if not hasattr(fk, "gaussian_model"):
    print(json.dumps({"na": True})); sys.exit(0)
m = fk.gaussian_model(lambda t: t[..., :1] + t[..., 1:2] * x, C, 2)
th = torch.tensor([1.0, 2.0], dtype=torch.float64)
""",
    "weibull regression 500x4 (+shape): user Model(Independent(Weibull))": """
X = torch.randn(500, 4, dtype=torch.float64, generator=g)
m = fk.Model(lambda t: D.Independent(D.Weibull(torch.exp(t[..., :4] @ X.T), torch.exp(t[..., 4:5])), 1), 5)
th = torch.tensor([0.3, 0.5, -0.4, 0.2, 0.5], dtype=torch.float64)
""",
    "weibull regression 500x4 (+shape): fk.regression('weibull', X)": """
X = torch.randn(500, 4, dtype=torch.float64, generator=g)
if not hasattr(fk, "regression"):
    print(json.dumps({"na": True})); sys.exit(0)
m = fk.regression("weibull", X)
th = torch.tensor([0.3, 0.5, -0.4, 0.2, 0.5], dtype=torch.float64)
""",
}

MEASURE = """
t3 = time.perf_counter()
est = fk.fisher(m, th, return_error=True)
t4 = time.perf_counter()
est = fk.fisher(m, th, return_error=True)
t5 = time.perf_counter()
scale = float(est.value.abs().max())
out.update({"first call": t4 - t3, "second call": t5 - t4, "method": est.method,
            "stated rel error": float(est.error.abs().max()) / scale, "sympy imported": "sympy" in sys.modules})
print(json.dumps(out))
"""


def run(name: str, body: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", SETUP + body + MEASURE], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import fisherkl

    print(f"fisherkl {fisherkl.__version__} from {fisherkl.__file__}; median of {args.runs} fresh processes\n")
    print(f"{'scenario':<68} {'import fk':>9} {'1st call':>9} {'2nd call':>9}  method (stated rel. error), sympy")
    for name, body in SCENARIOS.items():
        results = [run(name, body) for _ in range(args.runs)]
        if any("na" in r for r in results):
            print(f"{name:<68} {'n/a':>9}")
            continue
        if any("error" in r for r in results):
            print(f"{name:<68} error: {results[0].get('error')}")
            continue

        def med(key: str, rs: list[dict] = results) -> float:
            return statistics.median(r[key] for r in rs)

        last = results[-1]
        print(
            f"{name:<68} {med('import fisherkl'):>8.2f}s {med('first call'):>8.3f}s {med('second call'):>8.3f}s  "
            f"{last['method']} ({last['stated rel error']:.1e}), {last['sympy imported']}"
        )


if __name__ == "__main__":
    main()
