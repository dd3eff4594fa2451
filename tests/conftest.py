"""Shared test settings: one torch thread (tiny tensor ops hand off badly between threads on a busy
2-core machine, and results must not depend on the thread count)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
