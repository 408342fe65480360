"""scikit-learn's bundled 8x8 digits: always available offline, no download."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .base import DATASETS, Dataset, standardise

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@DATASETS.register("digits")
def digits(data_dir: str | None = None, download: bool = True) -> Dataset:
    """scikit-learn digits, 1x8x8, 10 classes; a fixed stratified 80/20 train/test split."""
    del data_dir, download  # bundled with scikit-learn
    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype("float32") / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype("int64"))
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=TEST_FRACTION, stratify=bunch.target, random_state=SPLIT_SEED
    )
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    x_train, x_test = standardise(x[idx_train], x[idx_test])
    return Dataset("digits", x_train, y[idx_train], x_test, y[idx_test], num_classes=10)
