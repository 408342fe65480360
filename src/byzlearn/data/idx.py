"""MNIST and Fashion-MNIST from the standard IDX files (plain or gzipped), downloaded if missing."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from . import locate
from .base import DATASETS, Dataset, standardise

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# MD5 of each file's *decompressed* content: the same whichever gzip wrapper a mirror serves.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX file (``.gz`` or plain) as a ``uint8`` array; ``DataFormatError`` if malformed."""
    try:
        raw = path.read_bytes()
        data = bytearray(gzip.decompress(raw) if path.suffix == ".gz" else raw)  # writable: no copy later
    except (EOFError, OSError, zlib.error) as e:
        raise locate.DataFormatError(f"{path}: cannot read ({type(e).__name__}: {e}); delete it to re-download") from e
    if len(data) < 4 + 4 * ndim or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        raise locate.DataFormatError(
            f"{path}: not an IDX file of unsigned bytes with {ndim} dimension(s) "
            f"(magic {bytes(data[:4]).hex() or 'missing'}, expected 000008{ndim:02x}); delete it to re-download"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(data) != expected:
        raise locate.DataFormatError(
            f"{path}: {len(data)} bytes but the header {dims} implies {expected}; "
            "the file is truncated or corrupt, delete it to re-download"
        )
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def locate_idx(title: str, data_dir, download: bool, subdirs, extra, mirrors, md5s) -> dict[str, Path]:
    """Paths of the four IDX files, downloading them (``.gz``) into the data root if allowed and needed."""
    root = locate.data_root(data_dir)
    dirs = locate.candidate_dirs(root, subdirs, extra)
    found = locate.find_all(dirs, FILES)
    if found:
        return found
    if not download:
        raise locate.not_found(title, FILES, dirs, "not attempted (download disabled: data.download = false)")
    target = locate.download_dir(root, subdirs)
    try:
        for name in FILES:
            if locate.find_in(target, name) is None:
                locate.fetch(
                    [m + name + ".gz" for m in mirrors], target / f"{name}.gz", lambda p, n=name: locate.md5_of(p, gunzip=True) == md5s[n]
                )
    except OSError as e:
        raise locate.not_found(title, FILES, dirs, f"into {target} failed: {e}") from e
    found = locate.find_all([target], FILES)
    assert found is not None
    return found


def load_idx(title: str, paths: dict[str, Path]) -> Dataset:
    """Build a 10-class ``Dataset`` from the four IDX files (checking sizes and labels agree)."""
    arrays = {n: read_idx(p, 3 if "images" in n else 1) for n, p in paths.items()}
    split = {}
    for part in ("train", "t10k"):
        x, y = arrays[f"{part}-images-idx3-ubyte"], arrays[f"{part}-labels-idx1-ubyte"]
        if x.shape[0] != y.shape[0]:
            raise locate.DataFormatError(f"{title}: {part} has {x.shape[0]} images but {y.shape[0]} labels")
        if x.size == 0:
            raise locate.DataFormatError(
                f"{title}: {paths[f'{part}-images-idx3-ubyte']} holds no pixels (images of shape "
                f"{tuple(x.shape)}); the file is truncated or not {title}: delete it to re-download"
            )
        if y.size and y.max() >= 10:
            raise locate.DataFormatError(f"{title}: {part} labels must be in [0, 10), got {int(y.max())}")
        split[part] = (torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    if split["train"][0].shape[1:] != split["t10k"][0].shape[1:]:
        raise locate.DataFormatError(f"{title}: train and test images differ in shape")
    x_train, x_test = standardise(split["train"][0], split["t10k"][0])
    return Dataset(title, x_train, split["train"][1], x_test, split["t10k"][1], num_classes=10)


@DATASETS.register("mnist")
def mnist(data_dir: str | None = None, download: bool = True) -> Dataset:
    """MNIST handwritten digits, 28x28 grey, 60000 train / 10000 test."""
    paths = locate_idx("mnist", data_dir, download, ("mnist", "MNIST/raw"), (), MNIST_MIRRORS, MNIST_MD5)
    return load_idx("mnist", paths)


@DATASETS.register("fashion_mnist")
def fashion_mnist(data_dir: str | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST clothing images, 28x28 grey, 60000 train / 10000 test."""
    subdirs = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw")
    extra = ("/usr/share/datasets/fashion-mnist",)
    paths = locate_idx("fashion_mnist", data_dir, download, subdirs, extra, FASHION_MIRRORS, FASHION_MD5)
    return load_idx("fashion_mnist", paths)
