"""Flower's named arrays as one flat vector per reply, read as hostile input.

A Flower reply carries its model as an ``ArrayRecord`` (Message API: key -> ``Array``, each a
``.npy`` blob) or as ``Parameters`` (classic API: a list of ``.npy`` blobs). byzlearn's rules take
``Tensor[n, d]``, so every reply becomes one row: the arrays of the *reference layout* (the
arrays the server sent this round, or the layout most replies share) raveled and concatenated in
key order. A reply is read only if it has exactly the layout's keys, and each array's declared
shape and dtype and its blob size match before the blob is decoded (``allow_pickle=False``); the
decoded array must match again. Anything else is *malformed*: the reader returns the problem as a
string and the caller counts and drops the reply; nothing a peer sends raises.

Arrays of every dtype are aggregated in one compute dtype (float64 if the layout holds a float64
array, else float32) and cast back per key: integers and booleans are rounded and clipped to their
range (a ``num_batches_tracked`` buffer stays an integer).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import Tensor

from ..aggregators import AggregationContext, Aggregator, build_aggregator
from ..registry import ConfigError

NUMPY = "numpy.ndarray"
_HEADER_SLACK = 1 << 16  # a .npy header is at most 64 KiB (format 2/3); more bytes than data + this is not one array


@dataclass(frozen=True)
class Layout:
    """Keys, shapes and dtypes of a model's arrays, in order: what a well-formed reply must carry."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of_ndarrays(cls, arrays: list[np.ndarray], keys: list[str] | None = None) -> Layout:
        keys = [str(i) for i in range(len(arrays))] if keys is None else keys
        return cls(tuple(keys), tuple(tuple(int(s) for s in a.shape) for a in arrays), tuple(np.dtype(a.dtype) for a in arrays))

    @classmethod
    def of_record(cls, record: ArrayRecord) -> Layout:
        """The layout a record declares (metadata only, nothing decoded); ``ValueError`` if it declares nonsense."""
        shapes, dtypes = [], []
        for key in record.keys():
            arr = record[key]
            shapes.append(tuple(int(s) for s in arr.shape))
            dtypes.append(np.dtype(arr.dtype))
            if any(s < 0 for s in shapes[-1]) or dtypes[-1].kind not in "biuf":
                raise ValueError(f"array {key!r} declares shape {shapes[-1]} and dtype {dtypes[-1]}")
        return cls(tuple(record.keys()), tuple(shapes), tuple(dtypes))

    @property
    def sizes(self) -> list[int]:
        return [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float64 if any(d == np.float64 for d in self.dtypes) else torch.float32


def _decode(blob: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | str:
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        return f"data is a {type(blob).__name__}, not bytes"
    if not expected <= len(blob) <= expected + _HEADER_SLACK:
        return f"{len(blob)} bytes for {expected} bytes of data"
    try:
        arr = np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any undecodable blob is malformed input, never a crash
        return f"not a .npy array ({type(e).__name__})"
    if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
        got = (getattr(arr, "shape", None), getattr(arr, "dtype", None))
        return f"decodes to shape {got[0]} and dtype {got[1]}"
    return arr


Row = list[np.ndarray]  # one reply's decoded arrays, in the layout's order


def stack(rows: list[Row], layout: Layout) -> Tensor:
    """``Tensor[n, d]`` of the rows' arrays raveled and concatenated, in the layout's compute dtype, copied once."""
    G = torch.empty(len(rows), layout.dim, dtype=layout.compute_dtype)
    out = G.numpy()
    for i, row in enumerate(rows):  # one copy per reply, straight into its row
        if row:
            np.concatenate([a.reshape(-1) for a in row], out=out[i], casting="unsafe")
    return G


def decode_record(record: Any, layout: Layout) -> Row | str:
    """One reply's ``ArrayRecord`` decoded in ``layout``, or the reason it is malformed."""
    if not isinstance(record, ArrayRecord):
        return f"carries a {type(record).__name__} where an ArrayRecord is expected"
    keys = tuple(record.keys())
    if keys != layout.keys:
        missing = [k for k in layout.keys if k not in keys]
        extra = [k for k in keys if k not in layout.keys]
        return f"keys differ from the model's (missing {missing[:3]}, unexpected {extra[:3]})" if missing or extra else "keys out of order"
    arrays = []
    for key, shape, dtype in zip(layout.keys, layout.shapes, layout.dtypes):
        arr = record[key]
        if not isinstance(arr, Array) or getattr(arr, "stype", None) != NUMPY:
            return f"array {key!r} is not a numpy-serialised Array"
        try:
            declared = (tuple(int(s) for s in arr.shape), np.dtype(arr.dtype))
        except Exception:  # noqa: BLE001
            return f"array {key!r} declares an unreadable shape or dtype"
        if declared != (shape, dtype):
            return f"array {key!r} has shape {declared[0]} and dtype {declared[1]}, the model {shape} and {dtype}"
        out = _decode(arr.data, shape, dtype)
        if isinstance(out, str):
            return f"array {key!r}: {out}"
        arrays.append(out)
    return arrays


def decode_blobs(blobs: Any, layout: Layout) -> Row | str:
    """The classic API's ``Parameters.tensors`` (a list of ``.npy`` blobs) decoded in ``layout``, or the problem."""
    if not isinstance(blobs, (list, tuple)) or len(blobs) != len(layout.keys):
        return f"carries {len(blobs) if isinstance(blobs, (list, tuple)) else 'no'} arrays, the model {len(layout.keys)}"
    arrays = []
    for i, (blob, shape, dtype) in enumerate(zip(blobs, layout.shapes, layout.dtypes)):
        out = _decode(blob, shape, dtype)
        if isinstance(out, str):
            return f"array {i}: {out}"
        arrays.append(out)
    return arrays


def read_record(record: Any, layout: Layout) -> Tensor | str:
    """One reply's ``ArrayRecord`` as a flat vector in ``layout``, or the reason it is malformed."""
    row = decode_record(record, layout)
    return row if isinstance(row, str) else stack([row], layout)[0]


def read_blobs(blobs: Any, layout: Layout) -> Tensor | str:
    """The classic API's ``Parameters.tensors`` as a flat vector in ``layout``, or the reason it is malformed."""
    row = decode_blobs(blobs, layout)
    return row if isinstance(row, str) else stack([row], layout)[0]


def unflatten(flat: Tensor, layout: Layout) -> list[np.ndarray]:
    """The arrays of ``layout`` from a flat vector, each in its own dtype (integers rounded and clipped)."""
    out, offset = [], 0
    values = flat.detach().cpu().numpy()
    for shape, dtype, size in zip(layout.shapes, layout.dtypes, layout.sizes):
        part = values[offset : offset + size].reshape(shape)
        offset += size
        if dtype.kind == "f":
            out.append(np.asarray(part, dtype=dtype))
        elif dtype.kind == "b":
            out.append(np.asarray(np.nan_to_num(part) > 0.5))
        else:
            info = np.iinfo(dtype)
            out.append(np.asarray(np.clip(np.rint(np.nan_to_num(part)), info.min, info.max), dtype=dtype))
    return out


def to_record(flat: Tensor, layout: Layout) -> ArrayRecord:
    record = ArrayRecord()
    for key, arr in zip(layout.keys, unflatten(flat, layout)):
        record[key] = Array(np.asarray(arr))
    return record


def as_aggregator(aggregator: str | dict[str, Any] | Aggregator, f: int) -> Aggregator:
    """A rule or chain from a name, a dict of ``aggregator`` config keys (``{name, pre, path, ...}``) or an object."""
    if isinstance(aggregator, Aggregator):
        return aggregator
    if isinstance(aggregator, str):
        aggregator = {"name": aggregator}
    if not isinstance(aggregator, dict) or "name" not in aggregator:
        raise ConfigError(
            f"aggregator must be a rule name, a dict with a name (byzlearn list shows them) or an Aggregator, got {aggregator!r}"
        )
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise ConfigError(f"f must be a non-negative integer (the number of Byzantine replies to tolerate), got {f!r}")
    return build_aggregator(dict(aggregator), f_default=f)


def majority_layout(records: list[Any]) -> Layout:
    """The layout most records declare (ties: the earliest); a Byzantine minority cannot choose it."""
    layouts = []
    for record in records:
        try:
            layouts.append(Layout.of_record(record) if isinstance(record, ArrayRecord) else None)
        except Exception:  # noqa: BLE001 - a record that declares nonsense has no layout
            layouts.append(None)
    counts = Counter(x for x in layouts if x is not None)
    if not counts:
        raise ValueError("no record declares a readable layout; pass ArrayRecords of numeric numpy arrays")
    best = max(counts.values())
    return next(x for x in layouts if x is not None and counts[x] == best)


def aggregate_records(
    records: list[ArrayRecord],
    aggregator: str | dict[str, Any] | Aggregator,
    f: int,
    reference: ArrayRecord | None = None,
    ctx: AggregationContext | None = None,
) -> ArrayRecord:
    """Aggregate the records' arrays with a byzlearn rule: each record is one row of ``Tensor[n, d]``.

    ``aggregator``: a rule name (``"trimmed_mean"``), a dict of aggregator config keys
    (``{"name": "krum", "pre": ["nnm"]}``, a learned one by ``path``) or an ``Aggregator``; ``f`` the
    declared number of Byzantine records, kept apart from ``len(records)``. Records that do not match
    ``reference``'s layout (default: the layout most records share) are dropped; non-finite ones go
    to the rule, which tolerates up to ``f`` of them. ``ValueError`` when no record is readable or
    the rule cannot run on the records left (its (n, f) requirement). The result has the layout's
    keys, shapes and dtypes.
    """
    rule = as_aggregator(aggregator, f)
    layout = Layout.of_record(reference) if reference is not None else majority_layout(list(records))
    rows = [r for r in (decode_record(rec, layout) for rec in records) if not isinstance(r, str)]
    if not rows:
        raise ValueError(f"none of the {len(records)} records matches the layout {layout.keys[:3]}...; they must hold the same arrays")
    problem = rule.requirement(len(rows))
    if problem is not None:
        raise ValueError(f"{rule.name!r} cannot aggregate {len(rows)} records with f = {rule.f}: it requires {problem}")
    return to_record(rule(stack(rows, layout), ctx), layout)
