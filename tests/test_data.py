"""Data loaders: digits, MNIST / Fashion-MNIST from the shared IDX files, CIFAR-10 from small batch files."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import io
import shutil
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from byzlearn.data import DATASETS, DataFormatError, DataNotFoundError, cifar, idx, load_dataset, locate
from byzlearn.registry import ConfigError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
FASHION_DIR = SHARED / "fashion-mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"shared MNIST files not found at {MNIST_DIR}")
needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"shared Fashion-MNIST files not found at {FASHION_DIR}")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test touches the network or the real cache: downloads fail unless a test serves them."""

    def no_network(url, dest, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(locate, "download_file", no_network)
    monkeypatch.delenv(locate.ENV_VAR, raising=False)


@pytest.fixture(scope="module", autouse=True)
def shared_data_untouched():
    """The shared data files must come out of these tests exactly as they went in."""

    def stamp():
        return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in SHARED.rglob("*") if p.is_file()}

    before = stamp() if SHARED.is_dir() else {}
    yield
    assert (stamp() if SHARED.is_dir() else {}) == before


def raw_idx(path: Path, header: int) -> np.ndarray:
    """Independent reading of an IDX file: skip the header, no checks."""
    return np.frombuffer(gzip.decompress(path.read_bytes()), np.uint8, offset=header)


def assert_standardised(x: torch.Tensor) -> None:
    dims = [d for d in range(x.dim()) if d != 1]
    x64 = x.double()
    assert torch.allclose(x64.mean(dim=dims), torch.zeros(x.shape[1], dtype=torch.float64), atol=1e-4)
    assert torch.allclose(x64.std(dim=dims), torch.ones(x.shape[1], dtype=torch.float64), atol=1e-4)


@pytest.fixture(scope="module")
def mnist_ds():
    if not MNIST_DIR.is_dir():
        pytest.skip(f"shared MNIST files not found at {MNIST_DIR}")
    return load_dataset("mnist", str(MNIST_DIR), download=False)


# -- registry and digits ----------------------------------------------------------------------------


def test_registered_loaders_and_signature():
    assert {"digits", "mnist", "fashion_mnist", "cifar10"} <= set(DATASETS.names())
    for name in ("digits", "mnist", "fashion_mnist", "cifar10"):
        params = inspect.signature(DATASETS.get(name)).parameters
        assert list(params) == ["data_dir", "download"]
        assert params["data_dir"].default is None and params["download"].default is True


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ConfigError, match="data.name.*mnist"):
        load_dataset("imagenet")


def test_digits_shapes_standardisation_and_split():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    target = load_digits().target
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.input_shape == (1, 8, 8)
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == len(target)
    assert ds.x_test.shape[0] == pytest.approx(0.2 * len(target), abs=1)
    assert ds.num_classes == 10
    assert_standardised(ds.x_train)
    # stratified: each class's share of the test set is its share of the whole set
    test_counts = torch.bincount(ds.y_test, minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.2 * np.bincount(target)) <= 1)
    # fixed split: a second load is identical
    again = load_dataset("digits", download=False)
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)


# -- MNIST / Fashion-MNIST from the shared files -------------------------------------------------------


@needs_mnist
def test_mnist_from_data_dir_matches_the_files(mnist_ds):
    ds = mnist_ds
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64 and ds.num_classes == 10
    labels = raw_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz", 8)
    test_labels = raw_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 8)
    assert torch.equal(torch.bincount(ds.y_train, minlength=10), torch.from_numpy(np.bincount(labels, minlength=10)))
    assert torch.equal(ds.y_train, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(ds.y_test, torch.from_numpy(test_labels.astype(np.int64)))
    assert_standardised(ds.x_train)
    # pixels: the file's bytes standardised with the training mean/std (computed here in float64)
    px = raw_idx(MNIST_DIR / "train-images-idx3-ubyte.gz", 16).reshape(60000, 28, 28)
    mean, std = px.mean(dtype=np.float64), px.std(dtype=np.float64, ddof=1)
    for i in (0, 123, 59999):
        assert np.allclose(ds.x_train[i, 0].numpy(), (px[i] - mean) / std, atol=1e-4)
    test_px = raw_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz", 16).reshape(10000, 28, 28)
    assert np.allclose(ds.x_test[9999, 0].numpy(), (test_px[9999] - mean) / std, atol=1e-4)


@needs_mnist
def test_mnist_from_env_root_with_subfolder(monkeypatch, mnist_ds):
    monkeypatch.setenv("BYZLEARN_DATA", str(SHARED))
    ds = load_dataset("mnist", download=False)
    assert torch.equal(ds.y_train, mnist_ds.y_train) and torch.equal(ds.x_test, mnist_ds.x_test)


@needs_mnist
def test_explicit_data_dir_wins_over_env(monkeypatch, tmp_path, mnist_ds):
    monkeypatch.setenv("BYZLEARN_DATA", str(tmp_path))  # empty: would fail
    ds = load_dataset("mnist", str(SHARED), download=False)
    assert torch.equal(ds.y_test, mnist_ds.y_test)


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert locate.data_root() == tmp_path / ".cache" / "byzlearn"
    monkeypatch.setenv("BYZLEARN_DATA", str(tmp_path / "env"))
    assert locate.data_root() == tmp_path / "env"
    assert locate.data_root(str(tmp_path / "arg")) == tmp_path / "arg"


@needs_fashion
def test_fashion_mnist_from_env(monkeypatch):
    monkeypatch.setenv("BYZLEARN_DATA", str(SHARED))
    ds = load_dataset("fashion_mnist", download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    # Fashion-MNIST is exactly balanced: 6000 train and 1000 test images per class
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 1000))
    assert_standardised(ds.x_train)


@needs_mnist
@pytest.mark.parametrize("layout", ["direct", "MNIST/raw under root"])
def test_uncompressed_copy_loads_identically(tmp_path, mnist_ds, layout):
    folder = tmp_path / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for name in idx.FILES:
        (folder / name).write_bytes(gzip.decompress((MNIST_DIR / f"{name}.gz").read_bytes()))
    ds = load_dataset("mnist", str(folder if layout == "direct" else tmp_path), download=False)
    for a in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(ds, a), getattr(mnist_ds, a))


def _copy_with(tmp_path: Path, name: str, content: bytes) -> Path:
    """A folder with copies of the shared MNIST files except ``name``, which holds ``content``.

    Real copies, never links: writing the bad file must not be able to reach the shared data.
    """
    for f in idx.FILES:
        if name not in (f, f"{f}.gz"):
            shutil.copyfile(MNIST_DIR / f"{f}.gz", tmp_path / f"{f}.gz")
    bad = tmp_path / name
    assert not bad.exists()
    bad.write_bytes(content)
    return bad


@needs_mnist
@pytest.mark.parametrize("case, match", [("truncated gzip", "cannot read"), ("bad magic", "magic"), ("truncated data", "truncated")])
def test_corrupt_file_gives_clear_error(tmp_path, case, match):
    good = gzip.decompress((MNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes())
    if case == "truncated gzip":
        zipped = (MNIST_DIR / "train-labels-idx1-ubyte.gz").read_bytes()
        bad = _copy_with(tmp_path, "train-labels-idx1-ubyte.gz", zipped[: len(zipped) // 2])
    elif case == "bad magic":
        bad = _copy_with(tmp_path, "train-labels-idx1-ubyte", b"\x00\x00\x08\x03" + good[4:])
    else:
        bad = _copy_with(tmp_path, "train-labels-idx1-ubyte", good[:-100])
    with pytest.raises(DataFormatError, match=match) as err:
        load_dataset("mnist", str(tmp_path), download=False)
    assert str(bad) in str(err.value) and isinstance(err.value, ConfigError)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", str(tmp_path), download=False)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, ConfigError)
    for needle in (*idx.FILES, "BYZLEARN_DATA", "--data-dir", "data.data_dir", "download disabled"):
        assert needle in msg
    for folder in (tmp_path, tmp_path / "mnist", tmp_path / "MNIST" / "raw"):
        assert f"  {folder}\n" in msg


def test_missing_files_default_cache_named(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="fashion-mnist") as err:
        load_dataset("fashion_mnist", download=False)
    assert str(tmp_path / ".cache" / "byzlearn") in str(err.value)
    assert "/usr/share/datasets/fashion-mnist" in str(err.value)


def test_failed_download_explains_why(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", str(tmp_path), download=True)
    msg = str(err.value)
    for needle in ("network disabled in tests", "train-images-idx3-ubyte", "BYZLEARN_DATA", *idx.MNIST_MIRRORS):
        assert needle in msg
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial files left behind


def _serve(monkeypatch, source: Path, calls: list[str], bad_mirror: str | None = None):
    def fake(url, dest, timeout=None):
        calls.append(url)
        if bad_mirror and url.startswith(bad_mirror):
            dest.write_bytes(b"<html>not the file</html>")
        else:
            shutil.copyfile(source / url.rsplit("/", 1)[1], dest)

    monkeypatch.setattr(locate, "download_file", fake)


@needs_mnist
def test_download_lands_files_and_loads(monkeypatch, tmp_path, mnist_ds):
    calls: list[str] = []
    # the first mirror serves garbage (checksum mismatch): the loader falls back to the second
    _serve(monkeypatch, MNIST_DIR, calls, bad_mirror=idx.MNIST_MIRRORS[0])
    ds = load_dataset("mnist", str(tmp_path))
    assert torch.equal(ds.y_train, mnist_ds.y_train) and torch.equal(ds.x_test, mnist_ds.x_test)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(f"{n}.gz" for n in idx.FILES)
    assert {u.rsplit("/", 1)[0] + "/" for u in calls} == set(idx.MNIST_MIRRORS)
    # now on disk: no further download
    calls.clear()
    load_dataset("mnist", str(tmp_path), download=False)
    assert calls == []


@needs_mnist
def test_download_with_bad_checksum_everywhere_fails(monkeypatch, tmp_path):
    calls: list[str] = []
    _serve(monkeypatch, MNIST_DIR, calls, bad_mirror="http")
    with pytest.raises(DataNotFoundError, match="checksum mismatch"):
        load_dataset("mnist", str(tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# -- CIFAR-10 from small files written here ------------------------------------------------------------


def _cifar_batches(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (images uint8 [N, 3, 32, 32], labels); batch sizes differ to exercise any record count."""
    out = {}
    for name, n in zip(cifar.FILES, (20, 7, 13, 1, 20, 11)):
        out[name] = (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n))
    return out


def _record_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """The documented layout: per record, 1 label byte, then 1024 red, 1024 green, 1024 blue bytes (row-major)."""
    buf = bytearray()
    for img, lab in zip(images, labels):
        buf.append(int(lab))
        for plane in (img[0], img[1], img[2]):
            buf += plane.tobytes()
    return bytes(buf)


def _write_batches(folder: Path, batches) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        (folder / name).write_bytes(_record_bytes(x, y))


def _tar_gz(batches) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, (x, y) in batches.items():
            data = _record_bytes(x, y)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _check_cifar(ds, batches) -> None:
    x_train = np.concatenate([batches[n][0] for n in cifar.TRAIN_FILES]).astype(np.float64)
    y_train = np.concatenate([batches[n][1] for n in cifar.TRAIN_FILES])
    x_test, y_test = batches[cifar.TEST_FILE]
    assert ds.x_train.shape == (len(y_train), 3, 32, 32) and ds.x_test.shape == (len(y_test), 3, 32, 32)
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 10
    assert np.array_equal(ds.y_train.numpy(), y_train) and np.array_equal(ds.y_test.numpy(), y_test)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    assert np.allclose(ds.x_train.numpy(), (x_train - mean) / std, atol=1e-4)
    assert np.allclose(ds.x_test.numpy(), (x_test - mean) / std, atol=1e-4)
    assert_standardised(ds.x_train)


def test_cifar_batch_files_in_folder_and_subfolder(monkeypatch, tmp_path):
    batches = _cifar_batches(np.random.default_rng(0))
    _write_batches(tmp_path / "flat", batches)
    _check_cifar(load_dataset("cifar10", str(tmp_path / "flat"), download=False), batches)
    _write_batches(tmp_path / "root" / "cifar-10-batches-bin", batches)
    monkeypatch.setenv("BYZLEARN_DATA", str(tmp_path / "root"))
    _check_cifar(load_dataset("cifar10", download=False), batches)


def test_cifar_channel_order(tmp_path):
    img = np.zeros((1, 3, 32, 32), np.uint8)
    img[0, 0], img[0, 1], img[0, 2] = 200, 100, 0  # orange: R > G > B
    img[0, :, 0, 1] = (0, 50, 250)  # one bluish pixel at row 0, column 1
    rec = _record_bytes(img, np.array([3]))
    assert rec[0] == 3 and rec[1] == 200 and rec[2] == 0 and rec[1025] == 100 and rec[2 + 2048] == 250
    (tmp_path / "b.bin").write_bytes(rec)
    x, y = cifar.read_batch(tmp_path / "b.bin")
    assert y.tolist() == [3] and np.array_equal(x, img)


def test_cifar_from_archive(tmp_path):
    batches = _cifar_batches(np.random.default_rng(1))
    (tmp_path / cifar.ARCHIVE).write_bytes(_tar_gz(batches))
    _check_cifar(load_dataset("cifar10", str(tmp_path), download=False), batches)
    assert sorted(p.name for p in (tmp_path / "cifar-10-batches-bin").iterdir()) == sorted(cifar.FILES)


def test_cifar_download_extracts(monkeypatch, tmp_path):
    batches = _cifar_batches(np.random.default_rng(2))
    archive = _tar_gz(batches)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", hashlib.md5(archive).hexdigest())
    calls = []

    def fake(url, dest, timeout=None):
        calls.append(url)
        dest.write_bytes(archive)

    monkeypatch.setattr(locate, "download_file", fake)
    _check_cifar(load_dataset("cifar10", str(tmp_path)), batches)
    assert calls == list(cifar.URLS)
    assert (tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").is_file()


def test_cifar_corrupt_and_missing(tmp_path):
    batches = _cifar_batches(np.random.default_rng(3))
    _write_batches(tmp_path, batches)
    with open(tmp_path / "data_batch_2.bin", "ab") as f:
        f.write(b"\x01\x02")  # 2 stray bytes: not a whole record
    with pytest.raises(DataFormatError, match="data_batch_2.bin"):
        load_dataset("cifar10", str(tmp_path), download=False)
    (tmp_path / "data_batch_2.bin").unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", str(tmp_path), download=True)
    for needle in ("data_batch_2.bin", "test_batch.bin", cifar.ARCHIVE, "BYZLEARN_DATA", "network disabled"):
        assert needle in str(err.value)


def test_class_subset_relabels_in_the_given_order(digits):
    from byzlearn.data import class_subset

    sub = class_subset(digits, [7, 2])
    assert sub.num_classes == 2 and sub.name == "digits2"
    assert int((sub.y_train == 0).sum()) == int((digits.y_train == 7).sum())
    assert int((sub.y_test == 1).sum()) == int((digits.y_test == 2).sum())
    torch.testing.assert_close(sub.x_train[sub.y_train == 0], digits.x_train[digits.y_train == 7])
    with pytest.raises(ValueError, match="distinct"):
        class_subset(digits, [1, 1])
