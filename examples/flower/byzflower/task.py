"""The model, the data partition and the local training both apps share."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def make_model(seed: int = 0) -> nn.Module:
    """A 64-32-10 ReLU network for the 8x8 digits (2,410 parameters in two layers)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def client_data(partition: int, num_partitions: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Shard ``partition`` of an iid split of the digits training set (scikit-learn's bundled copy)."""
    from byzlearn.data import load_dataset  # here, not at the top: a ClientApp that kept its shard skips it

    ds = load_dataset("digits")
    order = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed))
    idx = order.chunk(num_partitions)[partition]
    return ds.x_train[idx], ds.y_train[idx]


def test_data() -> tuple[Tensor, Tensor]:
    from byzlearn.data import load_dataset

    ds = load_dataset("digits")
    return ds.x_test, ds.y_test


def train(model: nn.Module, x: Tensor, y: Tensor, steps: int, batch_size: int, lr: float, seed: int) -> float:
    """``steps`` SGD steps on random mini-batches; the mean training loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(steps):
        batch = torch.randint(len(y), (batch_size,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item()
    return total / max(steps, 1)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    out = model(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
