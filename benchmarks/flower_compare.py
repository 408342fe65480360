"""byzlearn's rules (through ``byzlearn.flower.aggregate_records``) against Flower 1.42's built-in robust strategies, same replies.

Flower's Message-API strategies (``flwr.serverapp.strategy``) are called as a strategy calls them,
``aggregate_train(server_round, replies)`` on a list of reply ``Message``s; byzlearn gets the
``ArrayRecord`` of the same replies through ``aggregate_records(records, aggregator, f)``. Pairs:

===============================================  ==============================================
Flower 1.42                                      byzlearn 0.1.0
===============================================  ==============================================
``FedMedian()``                                  ``median``
``FedTrimmedAvg(beta)``                          ``trimmed_mean`` with f = int(beta * n)
``Krum(num_malicious_nodes=f)``                  ``krum`` with f
``MultiKrum(num_malicious_nodes=f, num_nodes_    ``{"name": "multi_krum", "m": m}`` with f
to_select=m)``
``Bulyan(num_malicious_nodes=f)``                ``bulyan`` with f
===============================================  ==============================================

Replies: a model-like layout of named float32 arrays ("mlp": 784-100-10, d = 79,510; "wide":
784-1200-50, d = 1,002,050), n in {10, 20} nodes, f = 2 resp. 3 of them far outliers. Every reply
is the "global model" ``c ~ N(0, 1)`` plus its own update: ``0.1 N(0, 1)`` for the honest nodes,
``10 + 0.01 N(0, 1)`` (a tight, far cluster) for the outliers, at random positions (fixed seed).
Every reply reports ``num-examples`` 10 unless a note says otherwise. For each pair: the largest
``|byzlearn - Flower|`` over all coordinates, agreement within ``TOL``, and the wall time of the
aggregation step, the median of ``--repeats`` ``time.perf_counter`` measurements after one warm-up:
Flower's ``aggregate_train`` including its own decoding and encoding of the arrays, byzlearn's
``aggregate_records`` including its own. FedMedian, FedTrimmedAvg and Bulyan empty the replies'
``ArrayRecord``s as they read them (``ArrayRecord.pop``, ``to_numpy_ndarrays(keep_input=False)``),
so Flower gets freshly built reply messages before every call (outside the timed region; the
``Array`` blobs are built once and shared).

Then the deviations, each demonstrated: Bulyan's one-pass selection (against a numpy
re-implementation of both selections and Flower's Bulyan given an iterative ``selection_rule``),
Krum at n <= 2f + 2, Flower's float32 distances ``|x|^2 + |y|^2 - 2 x.y`` on models that differ by
small updates, Multi-Krum's ``num-examples`` weighting, Bulyan's behaviour below n = 4f + 3, and
the consumed replies.

Usage (from the repository root)::

    .venv/bin/python benchmarks/flower_compare.py            # all settings (about a minute on 2 cores);
                                                              # writes docs/flower-comparison.md and
                                                              # benchmarks/results-flower-cpu.json
    .venv/bin/python benchmarks/flower_compare.py --quick    # smoke check: "mlp", n = 10 only; writes nothing
    .venv/bin/python benchmarks/flower_compare.py --quick --json out.json --md out.md
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import flwr
import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.supercore.task_identity import TaskIdentity

ROOT = Path(__file__).resolve().parents[1]
try:
    import byzlearn
    from byzlearn.flower import aggregate_records
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
    import byzlearn
    from byzlearn.flower import aggregate_records

LAYOUTS = {
    "mlp": {"w1": (784, 100), "b1": (100,), "w2": (100, 10), "b2": (10,)},  # d = 79,510
    "wide": {"w1": (784, 1200), "b1": (1200,), "w2": (1200, 50), "b2": (50,)},  # d = 1,002,050
}
SETTINGS = [("mlp", 10, 2), ("mlp", 20, 3), ("wide", 10, 2), ("wide", 20, 3)]
HONEST_STD, OUTLIER_SHIFT, OUTLIER_STD = 0.1, 10.0, 0.01
TOL = 1e-5  # outputs are float32 of magnitude <= ~15, where one ulp is <= 1.9e-6
DEFAULT_JSON = ROOT / "benchmarks" / "results-flower-cpu.json"
DEFAULT_MD = ROOT / "docs" / "flower-comparison.md"


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


class GcTimer:
    """Time spent in the garbage collector while the block runs (``gc.callbacks``), and the number of collections."""

    def __enter__(self) -> GcTimer:
        self.seconds, self.count, self.full, self._t0 = 0.0, 0, 0, None
        gc.callbacks.append(self._callback)
        return self

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self.count += 1
            self.full += info.get("generation") == 2
            self._t0 = None

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)


def median_time(fn, prepare, repeats: int, with_gc: bool = False):
    """Median seconds of ``fn(prepare())`` over ``repeats`` calls after one warm-up; ``prepare`` is untimed.

    ``with_gc``: also the garbage collection (``GcTimer``) inside the median call.
    """
    fn(prepare())
    runs = []
    for _ in range(repeats):
        arg = prepare()
        with GcTimer() as gct:
            t0 = time.perf_counter()
            fn(arg)
            t = time.perf_counter() - t0
        runs.append((t, gct))
    runs.sort(key=lambda x: x[0])
    t = statistics.median(x[0] for x in runs)
    return (t, runs[(len(runs) - 1) // 2][1]) if with_gc else t


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


# ---------------------------------------------------------------------------------------------- numpy references (from the spec)
def sq_dists(X: np.ndarray) -> np.ndarray:
    """Exact-enough squared distances: float64, rows centred at their mean before the Gram product."""
    Y = X.astype(np.float64)
    Y = Y - Y.mean(axis=0)
    nr = np.einsum("ij,ij->i", Y, Y)
    D = np.maximum(nr[:, None] + nr[None, :] - 2.0 * (Y @ Y.T), 0.0)
    np.fill_diagonal(D, 0.0)
    return D


def krum_scores(D: np.ndarray, f: int, alive: np.ndarray) -> np.ndarray:
    """Sum of the ``max(1, r - f - 2)`` smallest distances to the other alive rows (``inf`` for dead rows)."""
    idx = np.flatnonzero(alive)
    k = max(1, len(idx) - f - 2)
    scores = np.full(len(D), np.inf)
    for i in idx:
        others = np.sort(D[i, idx[idx != i]])
        scores[i] = others[:k].sum()
    return scores


def select_one_pass(D: np.ndarray, f: int, theta: int) -> list[int]:
    """Flower's Bulyan selection: the theta lowest Krum scores, all computed once on the n replies."""
    return [int(i) for i in np.argsort(krum_scores(D, f, np.ones(len(D), bool)), kind="stable")[:theta]]


def select_iterative(D: np.ndarray, f: int, theta: int) -> list[int]:
    """The paper's Bulyan selection: Krum on the remaining rows, the pick removed, theta times."""
    alive, picks = np.ones(len(D), bool), []
    for _ in range(theta):
        i = int(np.argmin(krum_scores(D, f, alive)))
        picks.append(i)
        alive[i] = False
    return picks


def bulyan_step2(S: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Per coordinate, the mean (in S's dtype) of the beta = theta - 2f picked values closest to their median.

    Equally close values: the smaller first (values sorted, then a stable sort by distance). Also returns the
    coordinates where the beta-th and (beta+1)-th closest values are exactly as close (a tie at the window's edge).
    """
    beta = S.shape[0] - 2 * f
    S = np.sort(S, axis=0)
    med = np.median(S, axis=0)
    dist = np.abs(S - med)
    idx = np.argsort(dist, axis=0, kind="stable")
    ranked = np.take_along_axis(dist, idx, axis=0)
    ties = ranked[beta - 1] == ranked[beta] if beta < S.shape[0] else np.zeros(S.shape[1], bool)
    return np.take_along_axis(S, idx[:beta], axis=0).mean(axis=0), ties


def iterative_selection_rule(contents: list[RecordDict], num_malicious_nodes: int, num_nodes_to_select: int) -> list[RecordDict]:
    """A Flower ``selection_rule`` for ``Bulyan``: the iterative Krum selection (``select_iterative``)."""
    X = np.stack([np.concatenate([a.ravel() for a in c["arrays"].to_numpy_ndarrays()]) for c in contents])
    return [contents[i] for i in select_iterative(sq_dists(X), num_malicious_nodes, num_nodes_to_select)]


def nearest_row(out: np.ndarray, X: np.ndarray) -> int:
    return int(np.argmin(((X.astype(np.float64) - out) ** 2).sum(axis=1)))


# ---------------------------------------------------------------------------------------------- the comparisons
def pairs(n: int, f: int) -> list[tuple]:
    beta, m = f / n, n - f
    return [
        ("FedMedian ↔ median", lambda: FedMedian(), "median", f),
        (f"FedTrimmedAvg(beta={beta:g}) ↔ trimmed_mean", lambda: FedTrimmedAvg(beta=beta), "trimmed_mean", int(beta * n)),
        ("Krum ↔ krum", lambda: Krum(num_malicious_nodes=f), "krum", f),
        (
            f"MultiKrum(m={m}) ↔ multi_krum(m={m})",
            lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m),
            dict(name="multi_krum", m=m),
            f,
        ),
        ("Bulyan ↔ bulyan", lambda: Bulyan(num_malicious_nodes=f), "bulyan", f),
    ]


def main_table(settings, repeats: int, seed: int, log: FlowerLog) -> tuple[list[dict], list[dict]]:
    rows, bulyan_notes = [], []
    for layout, n, f in settings:
        d = dim(layout)
        X, bad = make_rows(d, n, f, np.random.default_rng([seed, n, d]))
        replies = Replies(X, layout)
        msgs = replies.messages()  # byzlearn reads them and leaves them as they are
        for label, make, spec, fb in pairs(n, f):
            row = dict(pair=label, layout=layout, n=n, f=f, byzlearn_f=fb, d=d, outliers=bad)
            ref, said = run_flower(make, replies, log)
            try:
                mine = run_byzlearn(spec, fb, replies, msgs)
                refused = ""
            except ValueError as e:
                mine, refused = None, str(e)
            if ref is None or mine is None:
                row.update(max_abs_diff=None, agree=None, flower_ms=None, byzlearn_ms=None, speedup=None)
                row["flower_says"] = said or "(returned an output)"
                row["byzlearn_says"] = refused or "(returned an output)"
                rows.append(row)
                said = f"flower: {row['flower_says']} | byzlearn: {row['byzlearn_says']}"
                print(f"  {layout:4s} n={n} f={f} {label:42s} {said}", file=sys.stderr)
                continue
            row.update(compare(mine, ref))
            t_fl, gct = median_time(lambda r, make=make: make().aggregate_train(1, r), replies.messages, repeats, with_gc=True)
            row.update(flower_gc_ms=gct.seconds * 1e3, flower_gc_full_collections=gct.full)
            t_bz = median_time(lambda r, spec=spec, fb=fb: byzlearn_step(r, spec, fb), lambda msgs=msgs: msgs, repeats)
            row.update(flower_ms=t_fl * 1e3, byzlearn_ms=t_bz * 1e3, speedup=t_fl / t_bz)
            rows.append(row)
            print(
                f"  {layout:4s} n={n} f={f} {label:42s} max|diff| {row['max_abs_diff']:.3g}  flower {t_fl * 1e3:9.2f} ms  "
                f"byzlearn {t_bz * 1e3:9.2f} ms",
                file=sys.stderr,
                flush=True,
            )
            if spec == "bulyan":
                bulyan_notes.append(explain_bulyan(X, bad, layout, n, f, replies, msgs, ref, mine, log))
    return rows, bulyan_notes


def iterative_min_gap(D: np.ndarray, f: int, theta: int) -> tuple[float, int]:
    """The smallest relative gap between the best and the second-best score over the iterative picks, and its step."""
    alive, best = np.ones(len(D), bool), (np.inf, -1)
    for t in range(theta):
        scores = np.sort(krum_scores(D, f, alive))
        best = min(best, ((scores[1] - scores[0]) / scores[0], t))
        alive[int(np.argmin(krum_scores(D, f, alive)))] = False
    return float(best[0]), int(best[1])


def explain_bulyan(X, bad, layout, n, f, replies, msgs, flower_out, byz_out, log) -> dict:
    """Bulyan's two selections against both sides, on these float32 replies and on the same replies in float64."""
    theta = n - 2 * f
    D = sq_dists(X)
    one, it = select_one_pass(D, f, theta), select_iterative(D, f, theta)
    gap, step = iterative_min_gap(D, f, theta)
    (np_one, ties_one), (np_it, ties_it) = bulyan_step2(X[one], f), bulyan_step2(X[it], f)
    honest = X[[i for i in range(n) if i not in bad]].astype(np.float64).mean(axis=0)

    def rms(v):
        return float(np.sqrt(np.mean((v.astype(np.float64) - honest) ** 2)))

    # float64 replies: byzlearn computes in float64 (its compute dtype follows the arrays), so near-ties resolve exactly
    X64 = X.astype(np.float64)
    rep64 = Replies(X64, layout)
    byz64 = run_byzlearn("bulyan", f, rep64, rep64.messages())
    flower_it64, _ = run_flower(lambda: Bulyan(num_malicious_nodes=f, selection_rule=iterative_selection_rule), rep64, log)
    np_it64, ties_it64 = bulyan_step2(X64[it], f)
    out = dict(
        layout=layout,
        n=n,
        f=f,
        theta=theta,
        beta=theta - 2 * f,
        outliers=bad,
        one_pass=sorted(one),
        iterative=sorted(it),
        iterative_order=it,
        only_one_pass=sorted(set(one) - set(it)),
        only_iterative=sorted(set(it) - set(one)),
        outliers_picked_one_pass=sorted(set(one) & set(bad)),
        outliers_picked_iterative=sorted(set(it) & set(bad)),
        iterative_min_relative_gap=gap,
        iterative_min_gap_step=step + 1,
        rms_to_honest_mean=dict(flower=rms(flower_out), byzlearn=rms(byz_out), honest_spread=HONEST_STD),
        byzlearn_vs_flower=compare(byz_out, flower_out),
        flower_vs_numpy_one_pass=compare(flower_out, np_one, ties_one),
        byzlearn_vs_numpy_one_pass=compare(byz_out, np_one),
        byzlearn_vs_numpy_iterative=compare(byz_out, np_it, ties_it),
        float64_byzlearn_vs_numpy_iterative=compare(byz64, np_it64, ties_it64),
        float64_byzlearn_vs_flower_iterative_rule=compare(byz64, flower_it64, ties_it64),
    )
    del rep64, X64
    return out


def krum_small_n(seed: int, log: FlowerLog) -> list[dict]:
    """Flower's Krum at n <= 2f + 2 (f = 2): it runs; byzlearn refuses."""
    out = []
    for n in (4, 5, 6, 7):
        f, d = 2, dim("mlp")
        X, bad = make_rows(d, n, f, np.random.default_rng([seed, n, 1]))
        replies = Replies(X, "mlp")
        ref, _ = run_flower(lambda f=f: Krum(num_malicious_nodes=f), replies, log)
        row = dict(n=n, f=f, outliers=bad, flower_neighbours=max(1, n - f - 2))
        pick = nearest_row(ref, X)
        row.update(flower_pick=pick, flower_pick_is_outlier=pick in bad)
        try:
            mine = run_byzlearn("krum", f, replies, replies.messages())
            row.update(byzlearn_says="(returned an output)", byzlearn_pick=nearest_row(mine, X))
        except ValueError as e:
            row.update(byzlearn_says=str(e), byzlearn_pick=None)
        out.append(row)
    return out


def float32_cancellation(seed: int, log: FlowerLog) -> list[dict]:
    """Krum on models that differ by small updates: Flower's distances |x|^2 + |y|^2 - 2x.y lose the digits."""
    out = []
    n, f, layout = 10, 2, "wide"
    d = dim(layout)
    for scale in (1e-1, 1e-2, 1e-3, 1e-4):
        # honest update scales grow with the index: the exact Krum choice is well separated (the lowest-scale node)
        rng = np.random.default_rng([seed, 7])
        X, bad = make_rows(d, n, f, rng, scales=scale * (1.0 + np.arange(n) / n))
        replies = Replies(X, layout)
        D = sq_dists(X)
        exact = krum_scores(D, f, np.ones(n, bool))
        ref, _ = run_flower(lambda: Krum(num_malicious_nodes=f), replies, log)
        mine = run_byzlearn("krum", f, replies, replies.messages())
        flat = X.astype(np.float32)
        norms = np.square(flat).sum(axis=1)
        Dfl = norms[:, None] + norms[None, :] - 2 * flat @ flat.T  # Flower's compute_distances, float32
        good = np.array([i not in bad for i in range(n)])
        off = ~np.eye(n, dtype=bool) & good[:, None] & good[None, :]  # honest pairs
        rel = float((np.abs(Dfl - D)[off] / D[off]).max())
        fp, bp = nearest_row(ref, X), nearest_row(mine, X)
        out.append(
            dict(
                update_scale=scale,
                outliers=bad,
                exact_pick=int(np.argmin(exact)),
                flower_pick=fp,
                byzlearn_pick=bp,
                flower_pick_exact_rank=int(np.argsort(exact, kind="stable").tolist().index(fp)),
                flower_pick_score_ratio=float(exact[fp] / exact.min()),
                flower_distance_max_rel_error=rel,
                flower_diagonal_max=float(np.abs(np.diag(Dfl)[good]).max()),
                smallest_true_distance=float(D[off].min()),
            )
        )
    return out


def weighted_multikrum(seed: int, log: FlowerLog) -> dict:
    """MultiKrum with unequal num-examples: Flower weights the selected replies, byzlearn does not."""
    n, f, layout = 10, 2, "mlp"
    m = n - f
    X, bad = make_rows(dim(layout), n, f, np.random.default_rng([seed, 11]))
    weights = [10 * (i + 1) for i in range(n)]
    replies = Replies(X, layout, num_examples=weights)
    ref, _ = run_flower(lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m), replies, log)
    mine = run_byzlearn({"name": "multi_krum", "m": m}, f, replies, replies.messages())
    sel = select_one_pass(sq_dists(X), f, m)
    w = np.array([weights[i] for i in sel], dtype=np.float64)
    weighted = (w[:, None] * X[sel].astype(np.float64)).sum(axis=0) / w.sum()
    plain = X[sel].astype(np.float64).mean(axis=0)
    return dict(
        n=n,
        f=f,
        m=m,
        num_examples=weights,
        selected=sorted(sel),
        byzlearn_vs_flower=compare(mine, ref),
        flower_vs_weighted_mean=compare(ref, weighted),
        byzlearn_vs_plain_mean=compare(mine, plain),
    )


def gc_cost() -> dict:
    """One full ``gc.collect()`` in this process (Flower's Bulyan runs one per selected reply)."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        gc.collect()
        times.append(time.perf_counter() - t0)
    return dict(ms=statistics.median(times) * 1e3, tracked_objects=len(gc.get_objects()))


def consumed_replies(seed: int, log: FlowerLog) -> list[dict]:
    """What each strategy leaves in the replies' ArrayRecords after aggregate_train."""
    n, f, layout = 10, 1, "mlp"
    X, _ = make_rows(dim(layout), n, f, np.random.default_rng([seed, 13]))
    replies = Replies(X, layout)
    out = []
    strategies = [
        ("FedMedian", FedMedian),
        ("FedTrimmedAvg", lambda: FedTrimmedAvg(beta=0.1)),
        ("Krum", lambda: Krum(num_malicious_nodes=f)),
        ("MultiKrum", lambda: MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f)),
        ("Bulyan", lambda: Bulyan(num_malicious_nodes=f)),
    ]
    for name, make in strategies:
        msgs = replies.messages()
        make().aggregate_train(1, msgs)
        out.append(dict(strategy=name, n=n, emptied=sum(len(m.content["arrays"]) == 0 for m in msgs)))
    msgs = replies.messages()
    byzlearn_step(msgs, "bulyan", f)
    out.append(dict(strategy="byzlearn aggregate_records (bulyan)", n=n, emptied=sum(len(m.content["arrays"]) == 0 for m in msgs)))
    return out


# ---------------------------------------------------------------------------------------------- report
def machine() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), platform.processor())
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {platform.machine()}"


def fmt_diff(x) -> str:
    return "—" if x is None else ("0" if x == 0 else f"{x:.2g}")


def fmt_ms(x) -> str:
    return "—" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def table(rows: list[dict]) -> list[str]:
    out = [
        "| rule pair (Flower ↔ byzlearn) | n | f | d | max abs diff | agree? | Flower ms | byzlearn ms | speed-up |",
        "|---|---:|---:|---:|---:|:---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["agree"] is None:
            agree = "both refuse" if "(returned" not in r["flower_says"] + r["byzlearn_says"] else "one refuses"
        else:
            agree = "yes" if r["agree"] else f"**no** ({r['coords_over_tol']:,} coords > tol)"
        f = f"{r['f']}" if r["byzlearn_f"] == r["f"] else f"{r['f']} (byzlearn {r['byzlearn_f']})"
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        out.append(
            f"| {r['pair']} | {r['n']} | {f} | {r['d']:,} | {fmt_diff(r['max_abs_diff'])} | {agree} | {fmt_ms(r['flower_ms'])} | "
            f"{fmt_ms(r['byzlearn_ms'])} | {speed} |"
        )
    return out


def markdown(res: dict) -> str:
    meta, rows = res["meta"], res["rows"]
    v = meta["versions"]
    L = ["# byzlearn against Flower's built-in robust strategies", ""]
    L += [
        "Produced by",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"on {meta['machine']} (torch {meta['threads']} threads; a shared machine, 1-minute load average "
        f"{meta['load_average'][0]:g} at the start and {meta['load_average'][1]:g} at the end), {meta['time']}. "
        f"Versions: Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, flwr {v['flwr']}, byzlearn {v['byzlearn']}. "
        f"Raw numbers: `benchmarks/results-flower-cpu.json`.",
        "",
        "## Setup",
        "",
        "Flower's Message-API strategies (`flwr.serverapp.strategy`) are called as a strategy calls them, "
        "`aggregate_train(server_round, replies)` on the reply `Message`s; byzlearn aggregates the `ArrayRecord`s of the same "
        "replies with `byzlearn.flower.aggregate_records(records, aggregator, f)`. Pairs: `FedMedian()` ↔ `median`; "
        "`FedTrimmedAvg(beta)` ↔ `trimmed_mean` with f = int(beta·n) (beta = f/n here, so both trim f per side); "
        "`Krum(num_malicious_nodes=f)` ↔ `krum`; `MultiKrum(num_malicious_nodes=f, num_nodes_to_select=m)` ↔ "
        '`{"name": "multi_krum", "m": m}` (m = n − f); `Bulyan(num_malicious_nodes=f)` ↔ `bulyan`.',
        "",
        "Replies: four float32 arrays per reply, `mlp` = {w1 784×100, b1 100, w2 100×10, b2 10} (d = 79,510) and "
        "`wide` = {w1 784×1200, b1 1200, w2 1200×50, b2 50} (d = 1,002,050). Each reply is a common model c ~ N(0, 1) plus "
        f"its own update: {HONEST_STD} N(0, 1) for the honest nodes, {OUTLIER_SHIFT:g} + {OUTLIER_STD} N(0, 1) for the f far "
        "outliers (a tight cluster, at random positions), `num-examples` 10 each; fixed seed "
        f"{meta['seed']}. Times: median of {meta['repeats']} `time.perf_counter` measurements after one warm-up, of the whole "
        "step a strategy pays: Flower's `aggregate_train` (reading the `.npy` blobs, its maths, building the output "
        "`ArrayRecord`, its metric aggregation; its INFO log lines switched off) and byzlearn's `aggregate_records` "
        "(layout check, decoding, the rule, encoding). "
        "Speed-up = Flower ms / byzlearn ms. "
        f"Agreement: max |byzlearn − Flower| ≤ {TOL:g} over all d coordinates (the outputs are float32 values of magnitude ≲ 15, "
        "where one ulp is ≤ 1.9e-6; the non-zero differences below are summation-order rounding).",
        "",
    ]
    L += table(rows)
    L += ["", "## Deviations", ""]
    L += bulyan_section(res)
    L += krum_small_n_section(res["krum_small_n"])
    L += cancellation_section(res["float32_cancellation"])
    L += weighted_section(res["weighted_multikrum"])
    L += refusal_section(rows)
    L += timing_section(rows, res["gc"])
    L += consumed_section(res["consumed_replies"])
    L += [
        "### Smaller points",
        "",
        "- **FedTrimmedAvg's count is int(beta·n)**, truncated: the default beta = 0.2 trims 2 per side at n = 14 (not 2.8), "
        "and 0 at n ≤ 4 (a plain mean). byzlearn's `trimmed_mean` takes the count itself (f, or `b` ≥ f) and refuses n ≤ 2b.",
        "- **Median and trimmed mean agree exactly or to rounding**: both compute the even-n median as the mean of the two middle "
        "values (numpy `(a+b)/2`, byzlearn `0.5a + 0.5b`: the same float32 result); the trimmed mean sums the kept values in a "
        "different order (numpy's partition leaves them unordered), a few ulps.",
        "- **(Multi-)Krum distances**: Flower's `compute_distances` forms ‖x‖² + ‖y‖² − 2x·y in float32 on the raw models and "
        "takes `argsort(row)[1 : k+1]`, assuming the row's own entry sorts first; byzlearn centres the rows at a median-norm "
        "row before the Gram product and sets the diagonal to exactly 0. Same selections in the main table; see the "
        "cancellation note above for where they part.",
        "- **Tie-breaking**: byzlearn breaks score ties towards the lowest index and, in Bulyan's second step, takes the smaller "
        "of two equally close values first; Flower uses `np.argsort` (quicksort, not stable) for the scores and "
        "`np.argpartition` for the closest values, so exact ties may resolve differently"
        " (the “exact ties” in the Bulyan table).",
        "- **Metrics**: Flower's strategies also return a `MetricRecord` (the num-examples-weighted mean of the replies' metrics, "
        "for (Multi-)Krum and Bulyan over the selected replies only); `aggregate_records` returns the arrays only. "
        "byzlearn's `RobustStrategy` returns its own counters as train metrics; not compared here.",
        "",
    ]
    return "\n".join(L) + "\n"


def bulyan_section(res: dict) -> list[str]:
    notes = res["bulyan"]
    L = [
        "### Bulyan: one Multi-Krum pass instead of iterated Krum",
        "",
        "Bulyan (El Mhamdi et al., 2018) selects θ = n − 2f replies by applying Krum *iteratively*: pick the reply with the lowest "
        "score, remove it, recompute the scores on the r remaining replies (r − f − 2 neighbours), θ times; then, per coordinate, "
        "it averages the β = θ − 2f selected values closest to their median. byzlearn's `bulyan` does exactly that. Flower 1.42's "
        "Message-API `Bulyan` (`serverapp/strategy/bulyan.py`) calls `select_multikrum(contents, f, θ)` once: the θ lowest "
        "scores, all computed on the n replies with n − f − 2 neighbours, nothing removed. (Flower's classic-API "
        "`flwr.server.strategy.Bulyan`, `aggregate_bulyan` in `server/strategy/aggregate.py`, does iterate.) The sets differ "
        "because the iterative scores change as picks are removed: the t-th pick is scored against the replies not yet "
        "picked, with r − f − 2 neighbours, so a reply that was central mainly thanks to already-picked neighbours falls "
        "behind a reply whose neighbours are still there. Step 2 is the same in both.",
        "",
        "The script checks this with numpy re-implementations of both selections written from the description (float64 "
        "distances of centred rows; then the mean of the β picked values closest to their median, in the replies' dtype) and "
        "with Flower's own `Bulyan` given an iterative `selection_rule` (the script's `iterative_selection_rule`), once on the "
        "float32 replies and once on the same replies cast to float64 (byzlearn then computes in float64):",
        "",
        "| layout | n | f | θ / β | outliers | picked only by the one pass | picked only iteratively | outliers picked (one pass / "
        "iterative) | byzlearn vs Flower | Flower vs numpy one pass | byzlearn vs numpy one pass | byzlearn vs numpy iterative "
        "| smallest score gap, iterative | float64: byzlearn vs numpy iterative | float64: byzlearn vs Flower with iterative "
        "`selection_rule` | RMS distance to the honest mean (Flower / byzlearn) |",
        "|---|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for b in notes:

        def c(key, b=b):
            x = b[key]
            if x["agree"]:
                word = "equal"
            elif x.get("over_tol_only_at_ties"):
                word = f"equal but for {x['coords_over_tol']} exact tie{'s' if x['coords_over_tol'] > 1 else ''}"
            else:
                word = "differs"
            return f"{fmt_diff(x['max_abs_diff'])} ({word})"

        r = b["rms_to_honest_mean"]
        L.append(
            f"| {b['layout']} | {b['n']} | {b['f']} | {b['theta']} / {b['beta']} | {b['outliers']} | {b['only_one_pass'] or '—'} | "
            f"{b['only_iterative'] or '—'} | {b['outliers_picked_one_pass'] or '—'} / {b['outliers_picked_iterative'] or '—'} | "
            f"{c('byzlearn_vs_flower')} | {c('flower_vs_numpy_one_pass')} | {c('byzlearn_vs_numpy_one_pass')} | "
            f"{c('byzlearn_vs_numpy_iterative')} | {b['iterative_min_relative_gap']:.1e} (pick {b['iterative_min_gap_step']}) | "
            f"{c('float64_byzlearn_vs_numpy_iterative')} | {c('float64_byzlearn_vs_flower_iterative_rule')} | "
            f"{r['flower']:.3g} / {r['byzlearn']:.3g} |"
        )
    L.append("")
    if not notes:
        return L
    checks = ("flower_vs_numpy_one_pass", "float64_byzlearn_vs_numpy_iterative", "float64_byzlearn_vs_flower_iterative_rule")
    if not all(same(b[k]) for b in notes for k in checks):
        return L + ["Not every re-implementation matched its side to the tolerance; see the JSON (`bulyan`) for the numbers.", ""]
    differ = [b for b in notes if not same(b["byzlearn_vs_numpy_one_pass"])]
    text = (
        "Flower's output equals the one-pass re-implementation. byzlearn's output equals the iterative re-implementation "
        "and Flower's own `Bulyan` once that is handed the iterative selection (on the float64 replies in every setting"
        + ("" if all(same(b["byzlearn_vs_numpy_iterative"]) for b in notes) else "; on the float32 ones but for the near-tie below")
        + f"), and does not equal the one-pass re-implementation ({len(differ)} of {len(notes)} settings here): the whole "
        "difference is the selection."
    )
    if any(b[k].get("coords_over_tol") for b in notes for k in checks):
        text += (
            " (An “exact tie” is a coordinate where two picked values are exactly equally close to the median at the edge of "
            "step 2's window: byzlearn takes the smaller value, Flower's `np.argpartition` either one.)"
        )
    for b in notes:
        if not same(b["byzlearn_vs_numpy_iterative"]):
            text += (
                f" On the float32 {b['layout']} replies byzlearn's iterative picks differ from the float64 reference's too: at "
                f"pick {b['iterative_min_gap_step']} the two best remaining scores differ by {b['iterative_min_relative_gap']:.1e} "
                f"of their value, within the float32 rounding of distances summed over d = {dim(b['layout']):,} coordinates: "
                "a near-tie between honest replies, settled one way in float32 and the other in float64 (on the float64 "
                "replies byzlearn's output is the reference's)."
            )
    bad_it = [b for b in notes if b["outliers_picked_iterative"]]
    if bad_it:
        f = bad_it[0]["f"]
        where = "; ".join(
            f"{b['layout']}: reply {i} at pick {b['iterative_order'].index(i) + 1} of {b['theta']}"
            for b in bad_it
            for i in b["outliers_picked_iterative"]
        )
        text += (
            f" The iterative selection also picks an outlier ({where}); the one pass picks "
            f"{'none' if not any(b['outliers_picked_one_pass'] for b in notes) else 'some too'}. For the last pick r = 2f + 1 "
            f"replies are left and Krum scores each by its r − f − 2 = f − 1 = {f - 1} nearest, exactly the other members of a "
            "tight cluster of f outliers. Bulyan is built for that (step 2 keeps, per coordinate, the β = θ − 2f values closest "
            "to the median, so up to f bad picks cannot drag it), and both outputs stay about as close to the honest mean "
            f"(last column; the honest replies scatter {HONEST_STD} per coordinate around the model)."
        )
    return L + [text, ""]


def krum_small_n_section(rows: list[dict]) -> list[str]:
    L = [
        "### Krum at n ≤ 2f + 2",
        "",
        "Krum's guarantee (Blanchard et al., 2017) needs n > 2f + 2. byzlearn refuses "
        "outside it; Flower's `Krum`/`MultiKrum` never check and use `max(1, n − f − 2)` neighbours. Same replies as above "
        "(honest 0.1 N(0, 1) updates, the f = 2 outliers a tight far cluster), mlp layout:",
        "",
        "| n | f | outliers | Flower's neighbours | Flower returns | byzlearn |",
        "|---:|---:|---|---:|---|---|",
    ]
    for r in rows:
        who = f"reply {r['flower_pick']} ({'an **outlier**' if r['flower_pick_is_outlier'] else 'honest'})"
        mine = f"reply {r['byzlearn_pick']}" if r["byzlearn_pick"] is not None else f"`ValueError: {r['byzlearn_says']}`"
        L.append(f"| {r['n']} | {r['f']} | {r['outliers']} | {r['flower_neighbours']} | {who} | {mine} |")
    lost = [r["n"] for r in rows if r["flower_pick_is_outlier"]]
    L += [
        "",
        f"Flower returns an outlier's model at n = {', '.join(map(str, lost)) or 'none'}: with max(1, n − f − 2) = 1 it scores "
        "each reply by its single nearest neighbour, and two colluding outliers are each other's nearest. At n = 2f + 2 "
        "(two neighbours) the pair needs one honest neighbour and loses here, but Krum's guarantee no longer holds. "
        "`aggregate_records` raises the rule's requirement as a `ValueError` before decoding anything.",
        "",
    ]
    return L


def cancellation_section(rows: list[dict]) -> list[str]:
    def picked(r):
        return "the exact choice" if r["flower_pick"] == r["exact_pick"] else f"reply {r['flower_pick']}, not {r['exact_pick']}"

    L = [
        "### Krum's distances in float32 on whole models (cancellation)",
        "",
        "Flower's replies carry whole models, not updates, so replies differ from one another by a small update while "
        "‖x‖² is large. Flower's `compute_distances` forms ‖x‖² + ‖y‖² − 2x·y in float32 on the raw models: its rounding "
        "error is roughly proportional to ‖x‖² (a few units at ‖x‖² ≈ 1e6, as its diagonal, which should be 0, shows), whatever the "
        "distance. byzlearn subtracts a median-norm row before the Gram product (differences of nearby rows lose little), so its error "
        "scales with the distances. Here: wide layout (d = 1,002,050, c ~ N(0, 1) so ‖x‖² ≈ 1e6), n = 10, f = 2 far outliers "
        "as above, honest node i = c + s·(1 + i/10)·N(0, 1), so the exact Krum choice is the honest node with the smallest "
        "update, by a clear margin. Errors and distances over honest pairs:",
        "",
        "| update scale s | exact Krum pick | Flower picks | its exact-score rank | its exact score / best | byzlearn picks "
        "| Flower's worst relative distance error | Flower's largest \\|diagonal\\| | smallest true distance |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        L.append(
            f"| {r['update_scale']:g} | {r['exact_pick']} | {r['flower_pick']} | {r['flower_pick_exact_rank']} | "
            f"{r['flower_pick_score_ratio']:.3g} | {r['byzlearn_pick']} | {r['flower_distance_max_rel_error']:.2g} | "
            f"{r['flower_diagonal_max']:.3g} | {r['smallest_true_distance']:.3g} |"
        )
    L += [
        "",
        "(Exact: float64 distances of centred rows; rank 0 = the exact choice.) "
        + " ".join(
            f"At s = {r['update_scale']:g} Flower's worst distance error is {r['flower_distance_max_rel_error']:.2g}× the "
            f"distance and its Krum picks {picked(r)}."
            for r in rows
        )
        + " The main table uses s = 0.1, where the errors are harmless; from s = 1e-3 (updates 0.1 % of the weights, as late "
        "in training with a small learning rate) they are as large as the distances and Flower's Krum ranks the honest replies "
        "by rounding noise. The far outliers are still excluded, but a Byzantine reply placed within the noise floor is "
        "judged by rounding noise rather than by its distance; Multi-Krum and Bulyan use the same `compute_distances`. "
        "byzlearn picks the exact choice at every scale. (Flower's classic-API `aggregate_krum` computes ‖x − y‖² from the "
        "differences and does not have this problem.)",
        "",
    ]
    return L


def weighted_section(w: dict) -> list[str]:
    return [
        "### Multi-Krum weights by num-examples; byzlearn does not",
        "",
        "Flower's `MultiKrum` returns `aggregate_arrayrecords(selected, 'num-examples')`, the num-examples-weighted mean of the "
        "selected replies; byzlearn's rules are unweighted (`aggregate_records` takes only the `ArrayRecord`s). With equal "
        "counts (the main table) the two are the same; with num-examples "
        f"{w['num_examples']} (n = {w['n']}, f = {w['f']}, m = {w['m']}, selected {w['selected']}): "
        f"max |byzlearn − Flower| = {fmt_diff(w['byzlearn_vs_flower']['max_abs_diff'])}; Flower vs the weighted mean of the "
        f"selected (numpy): {fmt_diff(w['flower_vs_weighted_mean']['max_abs_diff'])}; byzlearn vs their plain mean: "
        f"{fmt_diff(w['byzlearn_vs_plain_mean']['max_abs_diff'])}. Note that num-examples is self-reported: in Flower a "
        "Byzantine reply that passes the selection can claim any weight and dominate the mean. (Krum selects one reply, so "
        "weights do not matter; FedMedian, FedTrimmedAvg and Bulyan ignore them too.)",
        "",
    ]


def refusal_section(rows: list[dict]) -> list[str]:
    r = next((x for x in rows if x["agree"] is None), None)
    if r is None:
        return []
    return [
        "### Bulyan below n = 4f + 3",
        "",
        f"Both refuse (n = {r['n']}, f = {r['f']}), differently. Flower logs a warning and returns `(None, None)`, so "
        "`Strategy.start` keeps the previous model and the round passes with only this warning: "
        f"“{r['flower_says']}”. byzlearn raises `ValueError: {r['byzlearn_says']}`.",
        "",
    ]


def span(rows: list[dict], prefixes: tuple[str, ...]) -> str:
    """The range of the speed-ups of the pairs whose Flower side is one of ``prefixes``."""
    xs = [r["speedup"] for r in rows if r["speedup"] is not None and r["pair"].split("(")[0].split(" ")[0] in prefixes]
    return f"{min(xs):.1f}x to {max(xs):.1f}x" if xs else "—"


def timing_section(rows: list[dict], gcc: dict) -> list[str]:
    bul = [r for r in rows if r["pair"].startswith("Bulyan") and r["flower_ms"] is not None]
    L = [
        "### Where the time goes",
        "",
        "Both sides decode the same `.npy` blobs (`np.load`) and encode the output the same way, so the differences are the "
        "maths. FedMedian and FedTrimmedAvg run `np.median` / `np.partition` per array, on one thread; byzlearn sorts the "
        "stacked rows once (numpy's sort over column blocks in 2 threads): speed-up "
        f"{span(rows, ('FedMedian', 'FedTrimmedAvg'))}. Krum and Multi-Krum: speed-up {span(rows, ('Krum', 'MultiKrum'))}; "
        "Flower forms one float32 Gram product of the raw rows (BLAS), byzlearn a centred one (an extra pass over the data, "
        "which buys the accuracy shown in the cancellation note).",
    ]
    if bul:
        parts = [
            f"{r['layout']}, n = {r['n']}: {r['flower_gc_ms']:.0f} of its {fmt_ms(r['flower_ms'])} ms in garbage collection "
            f"({r['flower_gc_full_collections']} full collections)"
            for r in bul
        ]
        L[-1] += (
            " Flower's Bulyan is slow for a reason outside the rule: it reads each of the θ selected replies with "
            "`ArrayRecord.to_numpy_ndarrays(keep_input=False)`, which ends with a full `gc.collect()`. Measured with "
            "`gc.callbacks` in the median timed call: " + "; ".join(parts) + f". A full collection costs about {gcc['ms']:.0f} ms in "
            f"this process ({gcc['tracked_objects']:,} objects tracked, with torch, numpy and flwr imported, much like a "
            "ServerApp process): the cost grows with the server's heap, not with the model."
        )
    return L + [""]


def consumed_section(rows: list[dict]) -> list[str]:
    def who(r):
        return f"{r['strategy']} {r['emptied']} of {r['n']}"

    return [
        "### Flower's aggregation empties the replies",
        "",
        "`aggregate_train` reads the arrays destructively: FedMedian and FedTrimmedAvg `pop` every key from every reply's "
        "`ArrayRecord`, Bulyan calls `to_numpy_ndarrays(keep_input=False)` (then `gc.collect()`) on the replies it selected. "
        f"Replies left with an empty `ArrayRecord` (n = {rows[0]['n']}, f = 1): " + "; ".join(who(r) for r in rows) + ". "
        "A wrapper that looks at the replies after Flower's aggregation (logging, a second rule, an adversary's bookkeeping) "
        "finds them empty; this benchmark rebuilds the reply messages before every Flower call, outside the timed region. "
        "byzlearn's `aggregate_records` only reads them.",
        "",
    ]


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke check: mlp layout, n = 10 only, 2 repeats; writes nothing by default")
    ap.add_argument(
        "--json", type=Path, default=None, help="write the results here (default without --quick: benchmarks/results-flower-cpu.json)"
    )
    ap.add_argument("--md", type=Path, default=None, help="write the report here (default without --quick: docs/flower-comparison.md)")
    args = ap.parse_args(argv)
    settings = SETTINGS
    if args.quick:
        settings, args.repeats = SETTINGS[:1], 2
    else:
        args.json = args.json or DEFAULT_JSON
        args.md = args.md or DEFAULT_MD
    torch.set_num_threads(args.threads)

    flwr_logger = logging.getLogger("flwr")
    log, saved = FlowerLog(), (flwr_logger.handlers[:], flwr_logger.level)
    flwr_logger.handlers, flwr_logger.level = [log], logging.WARNING
    t0, load_start = time.perf_counter(), os.getloadavg()[0]
    try:
        rows, bulyan = main_table(settings, args.repeats, args.seed, log)
        res = dict(rows=rows, bulyan=bulyan, gc=gc_cost())
        res["krum_small_n"] = krum_small_n(args.seed, log)
        res["float32_cancellation"] = float32_cancellation(args.seed, log) if not args.quick else []
        res["weighted_multikrum"] = weighted_multikrum(args.seed, log)
        res["consumed_replies"] = consumed_replies(args.seed, log)
    finally:
        flwr_logger.handlers, flwr_logger.level = saved
    cmd = ".venv/bin/python benchmarks/flower_compare.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    res["meta"] = dict(
        command=cmd,
        machine=machine(),
        threads=torch.get_num_threads(),
        repeats=args.repeats,
        seed=args.seed,
        tolerance=TOL,
        time=time.strftime("%Y-%m-%d %H:%M"),
        seconds=round(time.perf_counter() - t0, 1),
        load_average=[round(load_start, 2), round(os.getloadavg()[0], 2)],
        versions=dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__, flwr=flwr.__version__),
    )
    res["meta"]["versions"]["byzlearn"] = byzlearn.__version__
    res = {"meta": res.pop("meta"), **res}
    text = markdown(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    if args.md:
        args.md.write_text(text)
    print(f"done in {res['meta']['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
