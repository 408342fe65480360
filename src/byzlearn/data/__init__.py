"""Data sets (in-memory tensors, standardised per channel) and partitions of them over workers.

``load_dataset(name, data_dir, download)`` returns a ``Dataset``; the loaders ``digits``, ``mnist``,
``fashion_mnist`` and ``cifar10`` are registered in ``DATASETS``. Files are looked for under
``data_dir``, else ``$BYZLEARN_DATA``, else ``~/.cache/byzlearn`` (see ``locate``).
"""

from __future__ import annotations

from ..registry import ConfigError
from . import cifar, digits, idx, synthetic  # noqa: F401 - register the loaders
from .base import DATASETS, Dataset, class_subset, standardise
from .locate import ENV_VAR, DataFormatError, DataNotFoundError, data_root
from .partition import PARTITION_SCHEMES, extreme_split, gamma_similarity_split, pad_shards, partition, split_public


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    """The registered data set ``name`` (``ConfigError`` listing the known names if unknown)."""
    if name not in DATASETS:
        raise ConfigError(f"data.name = {name!r} is unknown; known data sets: {', '.join(DATASETS.names())}")
    return DATASETS.get(name)(data_dir=data_dir, download=download)


__all__ = [
    "DATASETS",
    "Dataset",
    "class_subset",
    "load_dataset",
    "standardise",
    "data_root",
    "ENV_VAR",
    "DataNotFoundError",
    "DataFormatError",
    "PARTITION_SCHEMES",
    "partition",
    "split_public",
    "pad_shards",
    "extreme_split",
    "gamma_similarity_split",
]
