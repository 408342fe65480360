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
import sys
import time
from pathlib import Path

import flwr
import numpy as np
import torch
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from flower_common import ROOT, TOL, FlowerLog, Replies, byzlearn_step, compare, dim, make_rows, run_byzlearn, run_flower
from flower_deviations import consumed_replies, explain_bulyan, float32_cancellation, gc_cost, krum_small_n, weighted_multikrum
from flower_report import machine, markdown

try:
    import byzlearn
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
    import byzlearn

SETTINGS = [("mlp", 10, 2), ("mlp", 20, 3), ("wide", 10, 2), ("wide", 20, 3)]
DEFAULT_JSON = ROOT / "benchmarks" / "results-flower-cpu.json"
DEFAULT_MD = ROOT / "docs" / "flower-comparison.md"


# ---------------------------------------------------------------------------------------------- timing
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
