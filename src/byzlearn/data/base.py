"""Data sets as in-memory tensors, and the registry of loaders."""

from __future__ import annotations

from dataclasses import dataclass

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
