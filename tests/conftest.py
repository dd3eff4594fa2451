"""Shared test settings: one torch thread (tiny tensor ops hand off badly between threads on a busy
2-core machine, and results must not depend on the thread count).

``FISHERKL_TEST_STREAM=1`` runs every test with the network engine's streaming forced on (statistics taken
inside the backward pass layer by layer, which the engine otherwise does only above
``fisherkl.nn.engine.STREAM_BYTES``; Fisher-vector products split into a tangent pass and a gradient pass):
the same oracles then check those routes too."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _stream_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.environ.get("FISHERKL_TEST_STREAM"):
        import importlib

        monkeypatch.setattr(importlib.import_module("fisherkl.nn.engine"), "STREAM_BYTES", -1)
        keep = importlib.import_module("fisherkl.nn.fisher")._KeepOnlyBatch
        monkeypatch.setattr(keep, "KEEP_BYTES", -1)
        monkeypatch.setattr(importlib.import_module("fisherkl.nn.implicit"), "SPLIT_BYTES", -1)
