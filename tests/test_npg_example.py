"""examples/npg_cartpole.py: a few TRPO-style updates on gymnasium's classic-control environments.

Oracle: the exact KL between the old and new policy on the rollout's states, computed by the script with
torch.distributions (Categorical / Normal), independently of NaturalGradient's own report.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("gymnasium", reason="the 'rl' extra (make install installs it)")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "npg_cartpole.py"


@pytest.fixture(scope="module")
def npg():
    spec = importlib.util.spec_from_file_location("npg_cartpole", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_trust_region_holds_in_policy_updates(npg, env):
    out = npg.run("exact+LS", env, seed=0, updates=3, steps=256, max_kl=0.01)
    assert len(out["kl"]) == 3 and all(0 < kl <= 0.01 for kl in out["kl"]), out["kl"]
    assert all(math.isfinite(r) for r in out["ret"])


def test_uncorrected_kfac_scaling_overshoots(npg):
    out = npg.run("kfac-quad", "cartpole", seed=0, updates=2, steps=256, max_kl=0.01)
    assert max(out["kl"]) > 0.015, out["kl"]  # what issue 13 fixed: ½δᵀF_kfacδ = max_kl is not the KL
    fixed = npg.run("kfac+LS", "cartpole", seed=0, updates=2, steps=256, max_kl=0.01)
    assert max(fixed["kl"]) <= 0.01
