"""CIFAR-10 from the standard binary version (batch files or their ``.tar.gz`` archive)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from . import locate
from .base import DATASETS, Dataset, standardise

TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
FILES = (*TRAIN_FILES, TEST_FILE)
ARCHIVE = "cifar-10-binary.tar.gz"
BATCH_DIR = "cifar-10-batches-bin"
URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
SUBDIRS = (BATCH_DIR, "cifar10", f"cifar10/{BATCH_DIR}", "cifar-10", f"cifar-10/{BATCH_DIR}")
RECORD = 1 + 3 * 32 * 32


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file of any number of records: ``uint8 [N, 3, 32, 32]`` images and ``int64 [N]`` labels."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise locate.DataFormatError(f"{path}: cannot read ({type(e).__name__}: {e}); delete it to re-download") from e
    if data.size == 0 or data.size % RECORD:
        raise locate.DataFormatError(
            f"{path}: {data.size} bytes is not a positive multiple of the {RECORD}-byte CIFAR-10 record "
            "(1 label byte + 3072 pixel bytes); the file is truncated or corrupt, delete it to re-download"
        )
    rec = data.reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() >= 10:
        raise locate.DataFormatError(f"{path}: label {int(labels.max())} out of [0, 10); not a CIFAR-10 batch")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def extract(archive: Path, dest: Path) -> None:
    """Extract the six batch files of ``archive`` (by base name only: no path from the archive is trusted)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile() and Path(m.name).name in FILES}
            missing = [n for n in FILES if n not in members]
            if missing:
                raise locate.DataFormatError(f"{archive}: archive lacks {', '.join(missing)}")
            dest.mkdir(parents=True, exist_ok=True)  # only for an archive that holds the batches
            for name, member in members.items():
                tmp = dest / f".{name}.part"
                with tar.extractfile(member) as src, open(tmp, "wb") as out:  # type: ignore[union-attr]
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.replace(tmp, dest / name)
    except (tarfile.TarError, EOFError, OSError) as e:
        reason = f"{type(e).__name__}: {e}"
        raise locate.DataFormatError(f"{archive}: cannot extract ({reason}); delete it to re-download") from e


def locate_cifar(data_dir: str | None, download: bool) -> dict[str, Path]:
    """Paths of the six batch files: found, extracted from a found archive, or downloaded and extracted."""
    root = locate.data_root(data_dir)
    dirs = locate.candidate_dirs(root, SUBDIRS)
    found = locate.find_all(dirs, FILES, gz=False)
    if found:
        return found
    for d in dirs:
        if (d / ARCHIVE).is_file():
            extract(d / ARCHIVE, d / BATCH_DIR)
            return locate.find_all([d / BATCH_DIR], FILES, gz=False)  # type: ignore[return-value]
    names = (*FILES, ARCHIVE)
    if not download:
        raise locate.not_found("cifar10", names, dirs, "not attempted (download disabled: data.download = false)")
    target = locate.download_dir(root, ("cifar10", "cifar-10"))
    try:
        locate.fetch(URLS, target / ARCHIVE, lambda p: locate.md5_of(p) == ARCHIVE_MD5)
    except OSError as e:
        raise locate.not_found("cifar10", names, dirs, f"into {target} failed: {e}") from e
    extract(target / ARCHIVE, target / BATCH_DIR)
    return locate.find_all([target / BATCH_DIR], FILES, gz=False)  # type: ignore[return-value]


@DATASETS.register("cifar10")
def cifar10(data_dir: str | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 colour images, 3x32x32, 10 classes (50000 train / 10000 test in the full set)."""
    paths = locate_cifar(data_dir, download)
    train = [read_batch(paths[n]) for n in TRAIN_FILES]
    x_test, y_test = read_batch(paths[TEST_FILE])
    x_train = torch.from_numpy(np.concatenate([x for x, _ in train]))
    y_train = torch.from_numpy(np.concatenate([y for _, y in train]))
    xs_train, xs_test = standardise(x_train, torch.from_numpy(x_test))
    return Dataset("cifar10", xs_train, y_train, xs_test, torch.from_numpy(y_test), num_classes=10)
