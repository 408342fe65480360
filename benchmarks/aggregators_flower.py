"""The Flower anchor of ``benchmarks/aggregators.py``: the rule code of Flower 1.42's built-in Message-API
strategies (``flwr.serverapp.strategy``: FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)
called on the benchmark's batch as numpy arrays, one client = one single-layer parameter list
``[G[i].numpy()]`` (views, no copy) wrapped in minimal stand-ins for a reply ``RecordDict`` and its
``ArrayRecord`` / ``Array``, with the ``.npy`` decoding of the replies and the encoding of the result
left out (``_no_encoding`` swaps ``strategy_utils``' ``Array`` / ``ArrayRecord`` for pass-throughs while
timing). ``flower_check`` compares Flower's results with byzlearn's on one batch. flwr, numpy and
byzlearn are imported on call, not at module level.
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch

from aggregators_common import _byzlearn, time_call


class _Arr:
    """Stand-in for ``flwr.app.Array``: ``.numpy()`` returns the (already decoded) array."""

    def __init__(self, a):
        self.a = a

    def numpy(self):
        return self.a


class _Rec(dict):
    """Stand-in for an ``ArrayRecord``: key -> ``_Arr``; ``to_numpy_ndarrays`` without decoding."""

    def to_numpy_ndarrays(self, keep_input: bool = True):
        return [v.a for v in self.values()]


class _Content:
    """Stand-in for a reply's ``RecordDict``: one ArrayRecord ``arrays``, one MetricRecord ``metrics``."""

    def __init__(self, arrays: list, num_examples: int = 10):
        self.array_records = {"arrays": _Rec({f"layer{i}": _Arr(a) for i, a in enumerate(arrays)})}
        self.metric_records = {"metrics": {"num-examples": num_examples}}

    def __getitem__(self, key):
        return self.array_records[key]


@contextlib.contextmanager
def _no_encoding():
    """``aggregate_arrayrecords`` builds ``ArrayRecord({k: Array(v)})`` (serialising): pass-throughs while timing."""
    from flwr.serverapp.strategy import strategy_utils

    saved = strategy_utils.Array, strategy_utils.ArrayRecord
    strategy_utils.Array, strategy_utils.ArrayRecord = (lambda v: v), dict
    try:
        yield
    finally:
        strategy_utils.Array, strategy_utils.ArrayRecord = saved


def flower_candidates(n: int, f: int):
    """(label, fn(contents) -> list of numpy arrays, description) for Flower 1.42's built-in strategies."""
    import numpy as np
    from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import select_multikrum
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    beta = f / n
    if int(beta * n) != f:  # FedTrimmedAvg cuts int(beta * n) per side
        beta = math.nextafter(beta, 1.0)
    assert int(beta * n) == f

    def layers_of(contents):
        keys = list(contents[0]["arrays"].keys())
        return keys, [[c["arrays"][k].numpy() for c in contents] for k in keys]

    def fedmedian(contents):
        return [np.asarray(np.median(np.stack(layers), axis=0)) for layers in layers_of(contents)[1]]

    def fedtrimmedavg(contents):
        return [np.asarray(trim_mean(np.stack(layers), beta)) for layers in layers_of(contents)[1]]

    def multikrum(m):
        def run(contents):
            return aggregate_arrayrecords(select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=m), "num-examples")

        return run

    def bulyan(contents):
        theta = len(contents) - 2 * f
        beta_b = theta - 2 * f
        selected = select_multikrum(contents, f, theta)
        nd = [c["arrays"].to_numpy_ndarrays(keep_input=False) for c in selected]
        median = [np.median(arr, axis=0) for arr in zip(*nd, strict=True)]
        return [np.asarray(a) for a in aggregate_n_closest_weights(median, nd, beta_b)]

    def fedavg(contents):
        return aggregate_arrayrecords(contents, "num-examples")

    out = [
        ("mean", fedavg, "FedAvg: aggregate_arrayrecords (equal num-examples)"),
        ("median", fedmedian, "FedMedian: np.median(np.stack(layers), axis=0)"),
        ("trimmed_mean", fedtrimmedavg, f"FedTrimmedAvg(beta={beta:.6g}): trim_mean(np.stack(layers), beta)"),
        ("krum", multikrum(1), "Krum: select_multikrum(m=1) + aggregate_arrayrecords"),
        ("multi_krum", multikrum(n - f), f"MultiKrum(m={n - f}): select_multikrum + aggregate_arrayrecords"),
    ]
    if n >= 4 * f + 3:
        out.append(("bulyan", bulyan, "Bulyan: select_multikrum(theta) + np.median + aggregate_n_closest_weights"))
    return out


def time_flower(G, n, d, f, only, args, results):
    contents = [_Content([row]) for row in G.numpy()]  # views of G, no copy
    with _no_encoding():
        for label, fn, what in flower_candidates(n, f):
            if only and label not in only:
                continue
            row = dict(impl="flower", rule=label, n=n, d=d, f=f, grid="main", ms=None, ratio=None, calls=0, note=what)
            try:
                sec, calls = time_call(lambda _, fn=fn: fn(contents), torch.device("cpu"), args.repeats, None, args.long)
                row.update(ms=sec * 1e3, calls=calls)
                print(f"  n={n:4d} d={d:>9d} f={f:3d} flower:{label:<15s} {sec * 1e3:10.2f} ms", file=sys.stderr, flush=True)
            except Exception as e:
                row["note"] = f"error: {type(e).__name__}: {e}; {what}"
            results.append(row)


def flower_check(G, f) -> dict:
    """Largest |Flower - byzlearn| per rule on this batch (a sanity check that the two compute the same rule)."""
    import numpy as np

    _, _, AggregationContext, build_aggregator = _byzlearn()
    n = G.shape[0]
    contents = [_Content([row]) for row in G.numpy()]
    out = {}
    with _no_encoding():
        for label, fn, _ in flower_candidates(n, f):
            res = fn(contents)
            flat = np.concatenate([np.asarray(v).ravel() for v in (res.values() if isinstance(res, dict) else res)])
            mine = build_aggregator({"name": label}, f_default=f)(G, AggregationContext()).numpy()
            out[label] = float(np.abs(flat.astype(np.float64) - mine.astype(np.float64)).max())
    return out
