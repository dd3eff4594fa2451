"""fisherkl at the scale users have, against the peers: a ResNet-18-style CNN, a GPT-style decoder, a 1M MLP.

Models (float32, random weights, data generated locally): (a) a ResNet-18 topology (BasicBlocks 2-2-2-2,
BatchNorm in eval mode) of width ``--width`` on 3×32×32 inputs, 10 classes, N = 512; (b) a GPT-style decoder
(vocabulary 512, width 256, 4 layers of ``nn.TransformerEncoderLayer`` with 4 heads, context 128, a
per-token categorical head; ~4M parameters), N = 64 sequences; (c) an MLP 1024-768-256-10 (~1M
parameters), N = 4096. Tasks: one gradient of the mean loss (the unit), MC diagonal, exact diagonal, MC
KFAC, exact KFAC, EKFAC, one Fisher-vector product over the data, low-rank (rank 20), per-example
gradients (of the first 256 examples: N × p numbers). The exact kinds backpropagate C − 1 rows per
position: for the GPT that is 128 × 511 rows per sequence, so they are left out there (the table says so).

kronfluence fits its factors in batches whose per-example gradients stay under 2 GB (its eigenvalue
correction holds them all). Timing: every repeat runs the gradient, ours and each peer in turn
(interleaved, so that a busy machine slows them alike); medians, × one gradient, ours / best peer. A
peer that cannot run on a model gets its error. Memory: each case again in a fresh process, peak RSS
(``--memory``), against one training step's peak. The load average is printed at the start and end.

    python benchmarks/bench_models.py [--models cnn,gpt,mlp] [--tasks mc-diag,fvp] [--repeats 3]
        [--width 16] [--memory] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import fisherkl.nn as fnn

Fn = Callable[[], object]


# --- models -------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )
        self.r1, self.r2 = nn.ReLU(), nn.ReLU()  # modules, not F.relu: BackPACK's converter needs them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.r2(self.b2(self.c2(self.r1(self.b1(self.c1(x))))) + self.skip(x))


class ResNet18(nn.Module):
    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        layers, c = [], w
        for i, mult in enumerate((1, 2, 4, 8)):
            for j in range(2):
                layers.append(Block(c, w * mult, 2 if (j == 0 and i > 0) else 1))
                c = w * mult
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int = 512, d: int = 256, layers: int = 4, heads: int = 4, context: int = 128) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, dtype=h.dtype, device=h.device)
        for b in self.blocks:
            h = b(h, src_mask=mask, is_causal=True)
        return self.head(self.ln(h))


def build(name: str, width: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "cnn":
        net = ResNet18(width).eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_var.uniform_(0.5, 2.0)
        return net, torch.randn(512, 3, 32, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    if name == "gpt":
        net = GPT().eval()
        x = torch.randint(0, 512, (64, 128), generator=g)
        return net, x, torch.roll(x, -1, 1)
    net = nn.Sequential(nn.Linear(1024, 768), nn.Tanh(), nn.Linear(768, 256), nn.Tanh(), nn.Linear(256, 10))
    return net, torch.randn(4096, 1024, generator=g), torch.randint(0, 10, (4096,), generator=g)


def loss_of(net: nn.Module, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    out = net(x)
    return F.cross_entropy(out.transpose(1, 2) if out.ndim == 3 else out, y, reduction=reduction)


def gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Fn:
    def run() -> None:
        net.zero_grad()
        loss_of(net, x, y).backward()

    return run


TASKS = ("mc diag", "exact diag", "mc kfac", "exact kfac", "ekfac", "fvp", "lowrank", "per-example grads")


# --- fisherkl -------------------------------------------------------------------------------------------
PER_EXAMPLE = 256  # per-example gradients of N examples are N × p numbers: on the first 256 examples


def ours(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, model: str) -> Fn | None:
    data = (x, y)
    kw = {"batch_size": len(x), "progress": False}
    if model == "gpt" and task in ("exact diag", "exact kfac"):
        return None
    kind = "exact" if task.startswith("exact") or task in ("fvp", "lowrank") else "mc"
    if model == "gpt" and task in ("ekfac", "lowrank"):
        kind = "mc"
    rep = {"mc diag": "diag", "exact diag": "diag", "mc kfac": "kfac", "exact kfac": "kfac"}.get(task, task)
    if task == "fvp":
        f = fnn.fisher(net, data, representation="implicit", **kw)
        v = torch.randn(f.p)
        return lambda: f.mv(v)
    if task == "lowrank":
        return lambda: fnn.fisher(net, data, kind=kind, representation="lowrank", rank=20, **kw)
    if task == "per-example grads":
        return lambda: fnn.per_example_gradients(net, x[:PER_EXAMPLE], y[:PER_EXAMPLE])
    return lambda: fnn.fisher(net, data, kind=kind, representation=rep, **kw)


# --- peers ------------------------------------------------------------------------------------------------
def curvlinops(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, model: str) -> Fn | None:
    from curvlinops import EKFACLinearOperator, FisherType, GGNLinearOperator, KFACLinearOperator

    params = [p for p in net.parameters() if p.requires_grad]
    wrapped = ClassesSecond(net) if model == "gpt" else net
    data = [(x, y)]
    lossf = nn.CrossEntropyLoss()
    per = 128 if model == "gpt" else 1
    common = {"check_deterministic": False, "num_data": len(x), "num_per_example_loss_terms": per}
    if task in ("exact kfac", "mc kfac", "ekfac"):
        ft = FisherType.TYPE2 if task == "exact kfac" else FisherType.MC
        cls = EKFACLinearOperator if task == "ekfac" else KFACLinearOperator

        def kfac() -> object:
            k = cls(wrapped, lossf, params, data, fisher_type=ft, separate_weight_and_bias=False, **common)
            k.compute_kronecker_factors()
            if task == "ekfac":
                k.compute_eigenvalue_correction()
            return k

        return kfac
    if task == "fvp":
        op = GGNLinearOperator(wrapped, lossf, params, data, check_deterministic=False, num_data=len(x))
        v = torch.randn(sum(p.numel() for p in params))
        return lambda: op @ v
    return None


class ClassesSecond(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).transpose(1, 2)


def backpack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, model: str) -> Fn | None:
    import backpack as bp
    from backpack import extensions as ext

    what = {
        "exact diag": ext.DiagGGNExact,
        "mc diag": ext.DiagGGNMC,
        "exact kfac": ext.KFLR,
        "mc kfac": ext.KFAC,
        "per-example grads": ext.BatchGrad,
    }
    if task not in what:
        return None
    m = bp.extend(copy.deepcopy(net), use_converter=True)
    lossf = bp.extend(nn.CrossEntropyLoss())
    xs, ys = (x[:PER_EXAMPLE], y[:PER_EXAMPLE]) if task == "per-example grads" else (x, y)

    def run() -> object:
        m.zero_grad()
        with bp.backpack(what[task]()):
            out = m(xs)
            lossf(out.transpose(1, 2) if out.ndim == 3 else out, ys).backward()
        return None

    return run


def nngeometry(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, model: str) -> Fn | None:
    from nngeometry.metrics import FIM, FIM_MonteCarlo
    from nngeometry.object import PMatDiag, PMatKFAC
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    net = copy.deepcopy(net)  # nngeometry's hooks stay on the network when it fails
    exact = {"exact diag": PMatDiag, "exact kfac": PMatKFAC}
    mc = {"mc diag": PMatDiag, "mc kfac": PMatKFAC}
    if task in exact:
        return lambda: FIM(net, loader, exact[task], variant="classif_logits")
    if task in mc:
        return lambda: FIM_MonteCarlo(net, loader, mc[task], variant="classif_logits")
    return None


def kronfluence(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, model: str) -> Fn | None:
    if task != "ekfac":
        return None
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments
    from kronfluence.task import Task
    from torch.utils.data import TensorDataset

    class Classify(Task):
        def compute_train_loss(self, batch, model, sample=False):  # type: ignore[no-untyped-def]
            inputs, labels = batch
            logits = model(inputs)
            logits = logits.reshape(-1, logits.shape[-1])
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, labels.reshape(-1), reduction="sum")

        def compute_measurement(self, batch, model):  # type: ignore[no-untyped-def]
            return self.compute_train_loss(batch, model)

    out_dir = tempfile.mkdtemp(prefix="kronfluence-")
    m = prepare_model(copy.deepcopy(net), Classify())
    analyzer = Analyzer("bench", m, Classify(), output_dir=out_dir, disable_tqdm=True, disable_model_save=True)
    dataset = TensorDataset(x, y)
    # kronfluence's eigenvalue correction holds per-example gradients of a whole batch: batches whose
    # per-example gradients stay under 2 GB (a full batch of 4096 MLP examples would need 12.9 GB)
    p = sum(q.numel() for q in net.parameters())
    per_batch = max(1, min(len(x), int(2e9 // (4 * p))))

    def run() -> object:
        analyzer.fit_all_factors(
            "ekfac", dataset, per_device_batch_size=per_batch, overwrite_output_dir=True,
            factor_args=FactorArguments(strategy="ekfac"),
        )  # fmt: skip
        return None

    return run


def plain(net: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, model: str) -> Fn | None:
    """torch.func baselines: jvp→vjp for the FVP, vmap(grad) for per-example gradients."""
    from torch.func import functional_call, grad, jvp, vjp, vmap

    params = {k: p.detach() for k, p in net.named_parameters()}
    if task == "fvp":
        v = {k: torch.randn_like(p) for k, p in params.items()}

        def fvp() -> object:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            fast = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder layer has no forward-mode AD
            try:
                with sdpa_kernel([SDPBackend.MATH]):
                    f, u = jvp(lambda pr: functional_call(net, pr, (x,)), (params,), (v,))
            finally:
                torch.backends.mha.set_fastpath_enabled(fast)
            p = torch.softmax(f, -1)
            w = (p * u - p * (p * u).sum(-1, keepdim=True)) / len(x)
            return vjp(lambda pr: functional_call(net, pr, (x,)), params)[1](w)

        return fvp
    if task == "per-example grads":

        def loss(pr: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return loss_of_functional(net, pr, xi[None], yi[None])

        return lambda: vmap(grad(loss), in_dims=(None, 0, 0))(params, x[:PER_EXAMPLE], y[:PER_EXAMPLE])
    return None


def loss_of_functional(net: nn.Module, pr: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from torch.func import functional_call

    out = functional_call(net, pr, (x,))
    return F.cross_entropy(out.transpose(1, 2) if out.ndim == 3 else out, y, reduction="sum")


PEERS: dict[str, Callable[..., Fn | None]] = {
    "curvlinops": curvlinops,
    "kronfluence": kronfluence,
    "BackPACK": backpack,
    "nngeometry": nngeometry,
    "torch.func": plain,
}


def prepare(make: Callable[..., Fn | None], *args: object) -> Fn | str | None:
    """The timed function, None when the library has no such task, or its error (first call included)."""
    try:
        f = make(*args)
        if f is None:
            return None
        f()  # warm-up, and the first call's errors
        return f
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}" if str(exc) else type(exc).__name__


def interleaved(fns: dict[str, Fn], repeats: int) -> tuple[dict[str, float], dict[str, str]]:
    """Median seconds per function over interleaved repeats; a function that fails (e.g. out of memory
    next to the others) is dropped with its error."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    failed: dict[str, str] = {}
    for _ in range(repeats):
        for k, f in fns.items():
            if k in failed:
                continue
            t = time.perf_counter()
            try:
                f()
            except Exception as exc:
                failed[k] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:60]}" if str(exc) else type(exc).__name__
                continue
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items() if k not in failed and v}, failed


def memory_child(spec: str, width: int) -> None:
    """(subprocess) One case; prints its peak RSS in MiB."""
    model, task, lib = spec.split(":")
    net, x, y = build(model, width)
    make = ours if lib == "fisherkl" else (lambda *a: gradient(*a[:3])) if lib == "gradient" else PEERS[lib]
    f = make(net, x, y, task, model) if lib != "gradient" else gradient(net, x, y)
    if f is not None:
        f()
    print(peak_mib())


def peak_mib() -> float:
    """This process's peak RSS in MiB: VmHWM from /proc (getrusage's ru_maxrss survives execve, so a child
    would report its parent's peak), else ru_maxrss."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cnn,gpt,mlp")
    ap.add_argument("--tasks", default="", help="comma-separated tasks (dashes for spaces); default all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=16, help="ResNet width (64 is the original ResNet-18)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", action="store_true", help="also peak RSS, each case in a fresh process")
    ap.add_argument("--max-gib", type=float, default=20.0, help="address-space cap of the process (GiB)")
    ap.add_argument("--memory-child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    # a library that asks for more than the machine has gets an allocation error (its cell says "error")
    # instead of the kernel's OOM killer ending the whole run
    cap = int(args.max_gib * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if args.memory_child:
        memory_child(args.memory_child, args.width)
        return
    by_key = {t.replace("-", " "): t for t in TASKS}
    tasks = [by_key.get(t.replace("-", " "), t) for t in args.tasks.split(",") if t] or list(TASKS)
    print(
        f"torch {torch.__version__}, {args.threads} threads, float32; median of {args.repeats} interleaved repeats; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    for model in args.models.split(","):
        net, x, y = build(model, args.width)
        p = sum(q.numel() for q in net.parameters())
        print(f"\n== {model}: p = {p:,}, N = {len(x)}; ms (× one gradient); ours / best peer")
        names = ["fisherkl", *PEERS]
        print(f"{'task':<18}" + "".join(f"{n:>14}" for n in names) + f"{'ours/best':>11}")
        rows_mem = []
        for task in tasks:
            fns: dict[str, Fn] = {"gradient": gradient(net, x, y)}
            cells: dict[str, str] = {}
            for name, make in [("fisherkl", ours), *PEERS.items()]:
                f = prepare(make, net, x, y, task, model)
                if callable(f):
                    fns[name] = f
                elif isinstance(f, str):
                    cells[name] = "error"
                    print(f"    {name} on {task}: {f}")
            med, failed = interleaved(fns, args.repeats)
            for name, err in failed.items():
                cells[name] = "error"
                print(f"    {name} on {task}: {err}")
            unit = med["gradient"]
            for n in names:
                if n in med:
                    cells[n] = f"{1e3 * med[n]:.0f}({med[n] / unit:.1f})"
            peers = [med[n] for n in PEERS if n in med]
            ratio = med["fisherkl"] / min(peers) if peers and "fisherkl" in med else float("nan")
            print(f"{task:<18}" + "".join(f"{cells.get(n, '-'):>14}" for n in names) + f"{ratio:>11.2f}", flush=True)
            rows_mem.append((task, [n for n in ["gradient", *names] if n in med]))
        if args.memory:
            print(f"peak RSS (MiB), fresh process per case ({model})")
            for task, libs in rows_mem:
                cells = []
                for lib in libs:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--memory-child",
                        f"{model}:{task}:{lib}",
                        "--width",
                        str(args.width),
                    ]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    cells.append(f"{lib} {float(out.stdout.split()[-1]):.0f}" if out.returncode == 0 else f"{lib} err")
                print(f"  {task:<18} " + ", ".join(cells), flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
