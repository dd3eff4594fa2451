"""Memory does not grow with the data: a streamed Fisher over 100× the batches has the same peak RSS.

Each case runs in a fresh Python process (peak RSS only grows within a process); the data is a one-shot
generator, so no batch outlives its turn."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import resource, sys, torch
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
    fnn.fisher(net, stream(), kind=kind, representation=rep, seed=0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
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
