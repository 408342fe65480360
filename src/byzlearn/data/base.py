"""Data sets as in-memory tensors, and the registry of loaders."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry


@dataclass
class Dataset:
    """A classification data set held in memory.

    ``x_*``: ``float32 Tensor[N, C, H, W]`` standardised per channel with the training statistics;
    ``y_*``: ``int64 Tensor[N]`` in ``[0, num_classes)``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


DATASETS: Registry[Dataset] = Registry("data set")


def standardise(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """New ``float32`` copies of both sets, standardised per channel (dim 1) with the training mean and std."""
    x_train, x_test = x_train.to(torch.float32, copy=True), x_test.to(torch.float32, copy=True)
    dims = [d for d in range(x_train.dim()) if d != 1]
    mean = x_train.mean(dim=dims, keepdim=True)
    std = x_train.std(dim=dims, keepdim=True).clamp_min(1e-8)
    return x_train.sub_(mean).div_(std), x_test.sub_(mean).div_(std)


def class_subset(ds: Dataset, classes: list[int]) -> Dataset:
    """The samples of ``ds`` whose label is in ``classes``, relabelled ``0..k-1`` in the given order
    (MNIST-2, CIFAR-5, ... of the learned-aggregator paper's transfer experiments)."""
    if len(set(classes)) != len(classes) or not classes or any(not 0 <= c < ds.num_classes for c in classes):
        raise ValueError(f"classes must be distinct labels in [0, {ds.num_classes}), got {classes!r}")
    remap = torch.full((ds.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    keep_tr, keep_te = remap[ds.y_train] >= 0, remap[ds.y_test] >= 0
    return Dataset(
        f"{ds.name}{len(classes)}",
        ds.x_train[keep_tr],
        remap[ds.y_train[keep_tr]],
        ds.x_test[keep_te],
        remap[ds.y_test[keep_te]],
        len(classes),
    )
