"""Shared fixtures: real small data (sklearn's digits; MNIST from ../shared/data when present)."""

from pathlib import Path

import pytest

from byzlearn.data import load_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist():
    root = SHARED_DATA / "mnist"
    if not root.is_dir():
        pytest.skip(f"MNIST files not found in {root} (CI has shared/ beside the clone)")
    return load_dataset("mnist", str(root), download=False)
