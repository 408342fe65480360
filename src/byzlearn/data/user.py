"""A user's own data as a checked ``Dataset``: tensors or arrays, ``(x, y)`` pairs, or ``torch.utils.data`` data sets.

``as_dataset`` accepts ``(x_train, y_train, x_test, y_test)``, ``((x_train, y_train), (x_test, y_test))``,
``(train_dataset, test_dataset)`` (map-style or iterable ``torch.utils.data.Dataset`` of ``(x, y)``
samples, read once into tensors) or a ``Dataset``. The data are used as given: no standardisation
(``byzlearn.data.standardise`` does the registered sets' per-channel one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data import Dataset as TorchDataset

from ..registry import ConfigError
from .base import Dataset

FORMS = (
    "(x_train, y_train, x_test, y_test), ((x_train, y_train), (x_test, y_test)), "
    "(train_dataset, test_dataset) of torch.utils.data data sets, or a byzlearn.data.Dataset"
)
READ_BATCH = 1024  # samples per batch when a torch data set is read into tensors


def _tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{what} must be a tensor or an array, got {type(value).__name__} ({e})") from None


def _read(ds: Any, what: str) -> tuple[Tensor, Tensor]:
    """All ``(x, y)`` samples of a torch data set as two tensors (a ``TensorDataset``'s own tensors as they are)."""
    if isinstance(ds, TensorDataset):
        if len(ds.tensors) != 2:
            raise ConfigError(f"{what} is a TensorDataset of {len(ds.tensors)} tensors; it must hold two, (x, y)")
        return ds.tensors[0], ds.tensors[1]
    xs, ys = [], []
    try:
        for batch in DataLoader(ds, batch_size=READ_BATCH, shuffle=False):
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise ConfigError(f"{what}: every sample must be an (x, y) pair, got {type(batch).__name__} batches")
            xs.append(_tensor(batch[0], f"{what} inputs"))
            ys.append(_tensor(batch[1], f"{what} labels"))
    except ConfigError:
        raise
    except Exception as e:  # the user's __getitem__ / collation
        raise ConfigError(f"{what} cannot be read as (x, y) samples: {type(e).__name__}: {e}") from e
    if not xs:
        raise ConfigError(f"{what} is empty")
    return torch.cat(xs), torch.cat(ys)


def _pair(item: Any, what: str) -> tuple[Tensor, Tensor]:
    if isinstance(item, TorchDataset):
        return _read(item, what)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return _tensor(item[0], f"x_{what}"), _tensor(item[1], f"y_{what}")
    hint = " (data = (x, y) has no test set)" if what == "train" else ""
    raise ConfigError(f"the {what} data must be a torch Dataset or an (x, y) pair, got {type(item).__name__}{hint}; give {FORMS}")


def _split(data: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, int | None, str | None]:
    if isinstance(data, Dataset):
        return data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, data.name
    if isinstance(data, TorchDataset):
        raise ConfigError("data is one torch Dataset; give (train_dataset, test_dataset): the test set is needed for evaluation")
    if isinstance(data, (tuple, list)) and len(data) == 4:
        names = ("x_train", "y_train", "x_test", "y_test")
        return (*(_tensor(v, k) for v, k in zip(data, names)), None, None)  # type: ignore[return-value]
    if isinstance(data, (tuple, list)) and len(data) == 2:
        (x_tr, y_tr), (x_te, y_te) = _pair(data[0], "train"), _pair(data[1], "test")
        return x_tr, y_tr, x_te, y_te, None, None
    raise ConfigError(
        f"data must be {FORMS}; got {type(data).__name__}{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''}"
    )


def _check_x(x: Tensor, what: str, n: int) -> Tensor:
    if x.dim() < 2:
        raise ConfigError(f"{what} has shape {tuple(x.shape)}; it must be Tensor[N, features...] (one row per sample: x.unsqueeze(1))")
    if x.shape[0] != n:
        raise ConfigError(f"{what} has {x.shape[0]} samples but its labels have {n}; x and y must have the same length")
    if not x.is_floating_point():
        raise ConfigError(f"{what} has dtype {x.dtype}; the inputs must be floating point (e.g. x.float(), scaled to a small range)")
    if not bool(torch.isfinite(x).all()):
        raise ConfigError(f"{what} holds NaN or infinite values; clean or impute them first")
    return x.to("cpu", torch.float32)  # the engine moves the data to its device


def _check_y(y: Tensor, what: str) -> Tensor:
    if y.dim() != 1:
        raise ConfigError(f"{what} has shape {tuple(y.shape)}; the labels must be Tensor[N] of class indices")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ConfigError(f"{what} has dtype {y.dtype}; the labels must be integer class indices (e.g. y.long())")
    if y.numel() == 0:
        raise ConfigError(f"{what} is empty; give at least one sample")
    return y.to("cpu", torch.int64)


def as_dataset(data: Any, num_classes: int | None = None, name: str | None = None) -> Dataset:
    """``data`` in one of the accepted forms (module docstring) as a checked ``Dataset``.

    Inputs become ``float32`` (they must be floating point and finite), labels ``int64`` in
    ``[0, num_classes)``; ``num_classes`` defaults to the data set's own, else the largest label + 1.
    ``name`` labels the data set (default: a ``Dataset``'s own name, else ``"custom"``). Every problem is
    a ``ConfigError``.
    """
    x_tr, y_tr, x_te, y_te, own_classes, own_name = _split(data)
    y_tr, y_te = _check_y(y_tr, "y_train"), _check_y(y_te, "y_test")
    x_tr, x_te = _check_x(x_tr, "x_train", y_tr.shape[0]), _check_x(x_te, "x_test", y_te.shape[0])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ConfigError(f"x_train samples have shape {tuple(x_tr.shape[1:])} but x_test samples {tuple(x_te.shape[1:])}; they must match")
    if num_classes is not None and own_classes is not None and num_classes != own_classes:
        raise ConfigError(f"num_classes = {num_classes} but the data set {own_name!r} has {own_classes} classes")
    low, high = int(min(y_tr.min(), y_te.min())), int(max(y_tr.max(), y_te.max()))
    if low < 0:
        raise ConfigError(f"the labels must be class indices 0, 1, ...; found the label {low}")
    k = num_classes if num_classes is not None else own_classes if own_classes is not None else high + 1
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ConfigError(f"num_classes = {k!r}: a classification task needs an integer number of classes >= 2")
    if high >= k:
        raise ConfigError(f"label {high} is out of range for num_classes = {k}: the labels must lie in [0, {k - 1}]")
    return Dataset(name or own_name or "custom", x_tr, y_tr, x_te, y_te, k)
