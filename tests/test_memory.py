"""Memory does not grow with the data: a streamed Fisher over 100× the batches has the same peak RSS.

Each case runs in a fresh Python process (peak RSS only grows within a process) and reads its own peak from
/proc/self/status (VmHWM): getrusage's ru_maxrss survives execve, so a child would report pytest's peak and
the comparison could not fail. The data is a one-shot generator, so no batch outlives its turn."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

CHILD = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    import fisherkl.nn as fnn
    torch.manual_seed(0)
    torch.set_num_threads(1)
    rep, kind, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 7 * 7, 5))
    def stream():
        g = torch.Generator().manual_seed(1)
        for _ in range(batches):
            yield torch.randn(64, 3, 16, 16, generator=g)
    if rep == "ballast":  # the control: 256 MiB more than the smallest case must show
        ballast = torch.ones(64 * 1024 * 1024)
    fnn.fisher(net, stream(), kind=kind, representation="diag" if rep == "ballast" else rep, seed=0)
    print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024)
    """
)


def peak_mib(rep: str, kind: str, batches: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, rep, kind, str(batches)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(("rep", "kind"), [("diag", "exact"), ("kfac", "mc"), ("kfac", "exact")])
def test_peak_memory_is_flat_in_the_number_of_batches(rep, kind):
    small, large = peak_mib(rep, kind, 2), peak_mib(rep, kind, 200)
    assert large <= 1.10 * small, (small, large)


@pytest.mark.slow
def test_the_peak_measure_sees_the_child_s_own_allocations():
    plain, ballast = peak_mib("diag", "exact", 2), peak_mib("ballast", "exact", 2)
    assert ballast >= plain + 200, (plain, ballast)


STEP = textwrap.dedent(
    """
    import sys, torch
    import torch.nn.functional as F
    from torch import nn
    import fisherkl.nn as fnn
    torch.manual_seed(0)
    torch.set_num_threads(1)
    task = sys.argv[1]

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)

    net = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(inplace=True), Block(24),
                        Block(24), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()
    x = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(2))
    def hwm():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) / 1024
    base = hwm()
    if task == "gradient":
        F.cross_entropy(net(x), y).backward()
    else:
        kind, rep = task.split(":")
        fnn.fisher(net, [(x, y)], kind=kind, representation=rep, seed=0)
    print(base, hwm())
    """
)


def step_mib(task: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", STEP, task], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    base, peak = map(float, out.stdout.split()[-2:])
    return base, peak


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mc:diag", "exact:diag", "mc:kfac", "exact:kfac", "mc:ekfac"])
def test_peak_memory_is_that_of_a_training_step(task):
    """A ResNet-style network (BatchNorm in eval mode, an in-place ReLU, skip connections), one batch of 256
    images: the memory a Fisher adds to the process stays within 1.5× what one training step adds (the
    statistics are taken inside the backward pass, layer by layer; the representation itself is small)."""
    base, grad = step_mib("gradient")
    base_f, ours = step_mib(task)
    assert ours - base_f <= 1.5 * (grad - base), (task, grad - base, ours - base_f)
