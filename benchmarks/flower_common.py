"""Shared pieces of the Flower comparison (``flower_compare.py``): the reply layouts and constants, the synthetic replies
(``make_rows``, ``Replies``), the two sides' runners (``run_flower``, ``byzlearn_step``, ``run_byzlearn``) and the
output comparison (``compare``, ``same``); imported by ``flower_compare``, ``flower_deviations`` and ``flower_report``,
and imports none of them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parents[1]
try:
    from byzlearn.flower import aggregate_records
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
    from byzlearn.flower import aggregate_records

LAYOUTS = {
    "mlp": {"w1": (784, 100), "b1": (100,), "w2": (100, 10), "b2": (10,)},  # d = 79,510
    "wide": {"w1": (784, 1200), "b1": (1200,), "w2": (1200, 50), "b2": (50,)},  # d = 1,002,050
}
HONEST_STD, OUTLIER_SHIFT, OUTLIER_STD = 0.1, 10.0, 0.01
TOL = 1e-5  # outputs are float32 of magnitude <= ~15, where one ulp is <= 1.9e-6


# ---------------------------------------------------------------------------------------------- replies
def dim(layout: str) -> int:
    return sum(int(np.prod(s)) for s in LAYOUTS[layout].values())


def make_rows(d: int, n: int, f: int, rng: np.random.Generator, scales=None) -> tuple[np.ndarray, list[int]]:
    """``(X: float32[n, d], outlier indices)``: model ``c`` plus ``scales[i] * N(0, 1)`` (honest) or far outliers."""
    c = rng.standard_normal(d, dtype=np.float32)
    scales = np.full(n, HONEST_STD) if scales is None else np.asarray(scales, dtype=np.float64)
    X = np.empty((n, d), dtype=np.float32)
    for i in range(n):
        X[i] = c + np.float32(scales[i]) * rng.standard_normal(d, dtype=np.float32)
    bad = sorted(int(i) for i in rng.choice(n, size=f, replace=False)) if f else []
    for i in bad:
        X[i] = c + np.float32(OUTLIER_SHIFT) + np.float32(OUTLIER_STD) * rng.standard_normal(d, dtype=np.float32)
    return X, bad


class Replies:
    """The rows of ``X`` as one Flower reply each (node ids 101, 102, ...), rebuilt on demand."""

    def __init__(self, X: np.ndarray, layout: str, num_examples=None):
        self.X, self.layout = X, layout
        self.keys = list(LAYOUTS[layout])
        self.num_examples = [10] * len(X) if num_examples is None else list(num_examples)
        self.arrays = []  # per reply: key -> Array (the .npy blobs, built once and shared)
        for row in X:
            out, off = {}, 0
            for key, shape in LAYOUTS[layout].items():
                size = int(np.prod(shape))
                out[key] = Array(np.ascontiguousarray(row[off : off + size].reshape(shape)))
                off += size
            self.arrays.append(out)
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1  # what a ServerApp process has
        self.incoming = [
            Message(content=RecordDict({"config": ConfigRecord({"server-round": 1})}), message_type=MessageType.TRAIN, dst_node_id=101 + i)
            for i in range(len(X))
        ]

    def messages(self) -> list[Message]:
        return [
            Message(RecordDict({"arrays": ArrayRecord(dict(a)), "metrics": MetricRecord({"num-examples": w})}), reply_to=m)
            for a, w, m in zip(self.arrays, self.num_examples, self.incoming)
        ]

    def flat(self, record: ArrayRecord) -> np.ndarray:
        assert list(record.keys()) == self.keys, (list(record.keys()), self.keys)
        parts = []
        for key, shape in LAYOUTS[self.layout].items():
            arr = record[key].numpy()
            assert arr.shape == shape and arr.dtype == self.X.dtype, (key, arr.shape, arr.dtype)
            parts.append(arr.ravel())
        return np.concatenate(parts)


# ---------------------------------------------------------------------------------------------- the two sides
class FlowerLog(logging.Handler):
    """Collects what Flower logs (its INFO lines are not printed; warnings are kept for the report)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_flower(make_strategy, replies: Replies, log: FlowerLog) -> tuple[np.ndarray | None, str]:
    """Flower's output as a flat vector (``None`` if it skipped the round) and what it logged."""
    start = len(log.messages)
    arrays, _ = make_strategy().aggregate_train(1, replies.messages())
    said = " ".join(log.messages[start:])
    return (None if arrays is None else replies.flat(arrays)), said


def byzlearn_step(msgs: list[Message], spec, f: int) -> ArrayRecord:
    """What a strategy using byzlearn does with its replies: their ArrayRecords through ``aggregate_records``."""
    return aggregate_records([m.content["arrays"] for m in msgs], spec, f)


def run_byzlearn(spec, f: int, replies: Replies, msgs: list[Message]) -> np.ndarray:
    return replies.flat(byzlearn_step(msgs, spec, f))


def compare(a: np.ndarray, b: np.ndarray, ties: np.ndarray | None = None) -> dict:
    """Largest |a - b|, how many coordinates exceed ``TOL``; with ``ties``: whether those are all exact-tie coordinates."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    out = {"max_abs_diff": float(diff.max()), "coords_over_tol": int((diff > TOL).sum()), "agree": bool(diff.max() <= TOL)}
    if ties is not None:
        out["tie_coords"] = int(ties.sum())
        out["over_tol_only_at_ties"] = bool(np.all(ties[diff > TOL]))
    return out


def same(c: dict) -> bool:
    """Agree to ``TOL``, or differ only where Bulyan's step 2 meets an exact tie (settled differently by each side)."""
    return c["agree"] or c.get("over_tol_only_at_ties", False)
