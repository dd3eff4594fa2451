"""scikit-learn's bundled digits (1,797 8×8 images; no download) for examples, reports and benchmarks."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import FisherKLError

Split = tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]


def load_digits_split(seed: int = 0, n_train: int = 1437) -> Split:
    """((x_train, y_train), (x_test, y_test)): pixels scaled to [0, 1] ``[n, 64]`` float32, labels
    ``[n]``, shuffled with ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise FisherKLError("the digits data needs scikit-learn (pip install scikit-learn)") from exc
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float32)
    y = torch.tensor(y_np)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def digits_mlp(seed: int = 0) -> nn.Module:
    """The MLP 64–32–32–10 (tanh) the examples and the report use, initialised with ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))


def train_classifier(
    net: nn.Module, x: Tensor, y: Tensor, *, epochs: int = 10, lr: float = 1e-2, batch: int = 64, seed: int = 1
) -> float:
    """Adam on cross-entropy for ``epochs`` (shuffled with ``seed``); returns the final training loss."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(net(x), y))
