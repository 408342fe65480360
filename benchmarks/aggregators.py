"""Time every registered aggregation rule (and pre-aggregator + mean) against ``mean``, ByzFL and Flower.

For each ``n`` in {10, 45, 100} and ``d`` in {1e5, 1e6} (float32 Gaussian ``G: Tensor[n, d]`` from
``torch.randn`` with a seeded generator, ``f = max(1, floor((n - 3) / 4))`` so that Bulyan's
``n >= 4f + 3`` holds), every rule registered in ``AGGREGATORS`` at run time is built with
``build_aggregator({"name": rule}, f)`` and timed: one warm-up call, then the median of ``--repeats``
calls (CUDA synchronised); a call whose warm-up takes more than ``--long`` seconds (5) is not
repeated and the warm-up is the figure (``calls = 1`` in the JSON). The table reports the time as a
ratio to byzlearn's ``mean`` measured in the same run, with the absolute time in milliseconds.
Rules whose requirement on ``(n, f)`` fails are shown as ``-`` with the requirement (SMEA's is
``C(n, f) <= SMEA_MAX_SUBSETS``); MDA (exponential in f) runs only for ``n <= 25``; rules that cannot
be built from defaults (learned rules) are listed as n/a. Pre-aggregators (nnm, bucketing, clipping,
arc) are timed as ``pre+mean`` chains. ``zeno`` gets a quadratic public loss ``0.5 ||θ - t||²``
evaluated on the ``n + 1`` candidate parameter vectors; ``fltrust`` gets a fixed server update
``g0 ~ N(0, I_d)`` (``AggregationContext.public_update``, computed once, outside the timed region, as
the engine computes it once per round). SMEA enumerates ``C(n, f)`` subsets, so it is also timed at
the extra sizes ``--smea-n`` (15, 19, 23: f = 3, 4, 5), where ByzFL's enumeration may still finish.

Anchors (the same batch, the same process order, one after the other):

* ``--byzfl``: ByzFL 0.0.11's aggregators in its own venv (``--byzfl-python``, default
  ``/work/byzfl-venv/bin/python``, made by ``bash benchmarks/byzfl_env.sh``). For every ``(n, d)`` this
  script runs itself there with ``--byzfl-worker`` (which imports torch and byzfl, not byzlearn),
  rebuilds the same ``G`` from the same seed (checked: the float64 sum of ``G`` must match) and times
  ByzFL's objects, each called as ``obj(G)``: ``Median()``, ``TrMean(f)``, ``GeometricMedian(nu=0.1,
  T=3)``, ``Krum(f)``, ``MultiKrum(f)``, ``CenteredClipping(L=1, tau=100.0)`` (stateful), ``MDA(f)``,
  ``MoNNA(f, idx=0)``, ``Meamed(f)``, ``CAF(f)``, ``SMEA(f)``, and ``Average()`` after the
  pre-aggregators ``NNM(f)``, ``Bucketing(s=2)``, ``Clipping(c=2.0)``, ``ARC(f)`` (Clipping and ARC
  overwrite their input: both libraries' in-place chains get a fresh copy made outside the timed
  region). ByzFL's SMEA runs only where its enumeration is predicted to finish within
  ``--smea-budget`` seconds (60): the cost of one subset is measured as ``SMEA(1)`` on the first
  ``n - f + 1`` rows (``n - f + 1`` subsets of the same size ``n - f``) and multiplied by ``C(n, f)``.
  ByzFL's NNM materialises an ``n x n x d`` tensor; it is skipped (with a note) above ``--byzfl-nnm-gib``
  GiB (8). ByzFL's package ``__init__`` imports its training framework, which does ``from torchvision
  import datasets, transforms``; the torchvision wheel pip resolves next to torch 2.13.0 fails at
  import, so the worker installs an inert stub ``torchvision`` in ``sys.modules`` first.
* ``--flower``: the rule code of Flower 1.42's built-in Message-API strategies
  (``flwr.serverapp.strategy``), called on the same batch as numpy arrays: one client = one
  single-layer parameter list ``[G[i].numpy()]`` (views, no copy), wrapped in a minimal stand-in for a
  reply ``RecordDict`` whose ``ArrayRecord.to_numpy_ndarrays()`` / ``Array.numpy()`` return those arrays.
  What is timed is Flower's rule without the ``.npy`` decoding of the replies and without encoding the
  result (``benchmarks/flower_compare.py`` times the whole ``aggregate_train`` step):
  ``FedMedian``: ``np.median(np.stack(layers), axis=0)`` (its ``aggregate_train`` body);
  ``FedTrimmedAvg(beta = f/n)``: ``fedtrimmedavg.trim_mean(np.stack(layers), beta)``;
  ``Krum(f)`` / ``MultiKrum(f, m = n - f)``: ``multikrum.select_multikrum`` then
  ``strategy_utils.aggregate_arrayrecords`` (its final ``Array`` / ``ArrayRecord`` encoding replaced by
  pass-throughs); ``Bulyan(f)``: ``select_multikrum(theta = n - 2f)``, ``np.median`` and
  ``bulyan.aggregate_n_closest_weights`` (its ``aggregate_train`` body); ``FedAvg`` (the mean anchor):
  ``aggregate_arrayrecords`` with equal ``num-examples``. Flower's legacy
  ``flwr.server.strategy.aggregate.aggregate_krum`` (an ``n^2`` Python loop of ``np.linalg.norm``) is not
  what the 1.42 strategies call and is not timed.

Targets (issue 16; a table after the main one): every rule at least as fast as the fastest anchor's
version at n = 45, d = 1e6 (MDA at n = 10), with the number of cells of the grid where that holds;
CAF and SMEA at least 5x ByzFL (SMEA at the largest n where ByzFL's enumeration ran, d = 1e6).

Usage (from the repository root)::

    .venv/bin/python benchmarks/aggregators.py --byzfl --flower --json benchmarks/results-aggregators-cpu.json
    .venv/bin/python benchmarks/aggregators.py --quick --byzfl --flower      # smoke check, seconds
    .venv/bin/python benchmarks/aggregators.py --device cuda --d 1000000 10000000 --json out.json
    .venv/bin/python benchmarks/aggregators.py --n 10 45 --d 100000 --repeats 7 --rules median krum
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from aggregators_byzfl import byzfl_worker, run_byzfl
from aggregators_common import (
    BYZFL_PYTHON,
    INPLACE_PRE,
    MDA_MAX_N,
    PRE_NAMES,
    SPEEDUP_5X,
    TARGET_D,
    TARGET_N,
    _byzlearn,
    cpu_snapshot,
    default_f,
    foreign_cores,
    make_batch,
    make_context,
    run_meta,
    time_call,
)
from aggregators_flower import flower_check, time_flower


# ---------------------------------------------------------------------------------------------- byzlearn
def byzlearn_candidates(n: int, f: int, only: set[str] | None):
    """(label, aggregator or None, reason) for every registered rule and pre-aggregator chain."""
    AGGREGATORS, PREAGGREGATORS, _, build_aggregator = _byzlearn()
    out = []
    for name in AGGREGATORS.names():
        if only and name not in only:
            continue
        if name == "mda" and n > MDA_MAX_N:
            out.append((name, None, f"n > {MDA_MAX_N}"))
            continue
        try:
            agg = build_aggregator({"name": name}, f_default=f)
        except Exception as e:  # learned rules etc. need more than defaults
            out.append((name, None, f"n/a ({type(e).__name__})"))
            continue
        problem = agg.requirement(n)
        out.append((name, None if problem else agg, problem or ""))
    for pre in PRE_NAMES:
        label = f"{pre}+mean"
        if pre not in PREAGGREGATORS or (only and label not in only and pre not in only):
            continue
        agg = build_aggregator({"name": "mean", "pre": [pre]}, f_default=f)
        problem = agg.requirement(n)
        out.append((label, None if problem else agg, problem or ""))
    return out


def time_byzlearn(G, n, d, f, ctx, only, device, args, results, timings, grid):
    cands = byzlearn_candidates(n, f, only)
    cands.sort(key=lambda c: c[0] != "mean")  # mean first: the reference
    for label, agg, note in cands:
        row = dict(impl="byzlearn", rule=label, n=n, d=d, f=f, grid=grid, ms=None, ratio=None, calls=0, note=note)
        if agg is None:
            results.append(row)
            continue
        try:
            with torch.no_grad():
                if label in INPLACE_PRE:  # as in the engine: the batch is handed over (a copy made untimed)
                    owned = dataclasses.replace(ctx, owns_batch=True)
                    sec, calls = time_call(lambda X, agg=agg, owned=owned: agg(X, owned), device, args.repeats, G.clone, args.long)
                else:
                    sec, calls = time_call(lambda _, agg=agg: agg(G, ctx), device, args.repeats, None, args.long)
        except Exception as e:
            row["note"] = f"n/a ({type(e).__name__}: {str(e).split(':')[0][:100]})"
            row["error"] = f"{type(e).__name__}: {e}"
            results.append(row)
            print(f"  n={n:4d} d={d:>9d} f={f:3d} {label:<22s} {row['note']}", file=sys.stderr, flush=True)
            continue
        timings[label] = sec
        row.update(ms=sec * 1e3, calls=calls)
        results.append(row)
        print(f"  n={n:4d} d={d:>9d} f={f:3d} {label:<22s} {sec * 1e3:10.2f} ms", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- Flower
# ---------------------------------------------------------------------------------------------- report
def _short(note: str) -> str:
    """A table cell's reason: a requirement's condition without its explanation in brackets."""
    cut = note.find(" (", 20)
    return note[:cut] if len(note) > 70 and cut > 0 else note


def _cell(r) -> str:
    if r is None:
        return ""
    if r["ms"] is None:
        return f"- ({_short(r['note'])})" if r["note"] else "-"
    ratio = f"{r['ratio']:.1f}x" if r["ratio"] is not None else "?"
    return f"{ratio} ({r['ms']:.3g})"


def table(results, cols, grid: str) -> list[str]:
    keys = []
    for r in results:
        k = (r["impl"], r["rule"])
        if r["grid"] == grid and k not in keys:
            keys.append(k)
    order = {"byzlearn": 0, "byzfl": 1, "flower": 2}
    keys.sort(key=lambda k: order[k[0]])
    lines = ["| rule | " + " | ".join(f"n={n}, d={d:.0e}" for n, d in cols) + " |", "|---|" + "---|" * len(cols)]
    untimed = []
    for impl, rule in keys:
        mine = [x for x in results if x["grid"] == grid and (x["impl"], x["rule"]) == (impl, rule)]
        if mine and all(x["ms"] is None for x in mine) and len({x["note"] for x in mine}) == 1:
            untimed.append(f"{rule if impl == 'byzlearn' else f'{impl}: {rule}'}: {mine[0]['note']}")
            continue
        cells = []
        for n, d in cols:
            r = next((x for x in results if x["grid"] == grid and (x["impl"], x["rule"], x["n"], x["d"]) == (impl, rule, n, d)), None)
            cells.append(_cell(r))
        label = rule if impl == "byzlearn" else f"{impl}: {rule}"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if untimed:
        lines += ["", "Not timed: " + "; ".join(untimed) + "."]
    return lines


def targets(results) -> tuple[list[str], list[dict]]:
    """Issue 16's targets: byzlearn >= the fastest anchor (n = 45, d = 1e6; MDA n = 10); CAF, SMEA >= 5x ByzFL."""

    def find(impl, rule, n, d):
        return next((r for r in results if (r["impl"], r["rule"], r["n"], r["d"]) == (impl, rule, n, d) and r["ms"] is not None), None)

    rules = [r["rule"] for r in results if r["impl"] == "byzlearn"]
    rules = list(dict.fromkeys(rules))
    anchored = [x for x in rules if any(r["impl"] != "byzlearn" and r["rule"] == x and r["ms"] is not None for r in results)]
    rows, out = [], []
    for rule in anchored:
        n, d = TARGET_N, TARGET_D
        if rule == "mda":
            n = 10
        if rule == "smea":  # the largest n where ByzFL's enumeration ran at d = 1e6 (else 1e5)
            ran = [r for r in results if r["impl"] == "byzfl" and r["rule"] == "smea" and r["ms"] is not None]
            big = [r for r in ran if r["d"] == TARGET_D] or ran
            if not big:
                continue
            best = max(big, key=lambda r: (r["n"], r["d"]))
            n, d = best["n"], best["d"]
        mine = find("byzlearn", rule, n, d)
        anchors = [a for a in (find("byzfl", rule, n, d), find("flower", rule, n, d)) if a is not None]
        if mine is None or not anchors:
            continue
        fastest = min(anchors, key=lambda a: a["ms"])
        speedup = fastest["ms"] / mine["ms"]
        need = 1.0
        if rule in SPEEDUP_5X:
            need, fastest = 5.0, find("byzfl", rule, n, d) or fastest
            speedup = fastest["ms"] / mine["ms"]
        # every cell of the grid where both ran: byzlearn at least as fast as the fastest anchor
        cells = met_cells = 0
        for r in results:
            if r["impl"] == "byzlearn" and r["rule"] == rule and r["ms"] is not None:
                a = [x for x in (find("byzfl", rule, r["n"], r["d"]), find("flower", rule, r["n"], r["d"])) if x is not None]
                if a:
                    cells += 1
                    met_cells += r["ms"] <= min(x["ms"] for x in a)
        row = dict(
            rule=rule,
            n=n,
            d=d,
            byzlearn_ms=mine["ms"],
            anchor=fastest["impl"],
            anchor_ms=fastest["ms"],
            speedup=speedup,
            target=need,
            met=speedup >= need,
            cells_met=met_cells,
            cells=cells,
        )
        out.append(row)
        rows.append(
            f"| {rule} | {n} | {d:.0e} | {mine['ms']:.3g} | {fastest['impl']} {fastest['ms']:.3g} | {speedup:.1f}x | "
            f">= {need:g}x | {'yes' if row['met'] else 'no'} | {met_cells} of {cells} |"
        )
    head = [
        "| rule | n | d | byzlearn ms | fastest anchor ms | speed-up | target | met | cells where byzlearn <= fastest anchor |",
        "|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    return head + rows, out


def render(payload: dict) -> str:
    """The markdown report of a run (``--report FILE`` re-renders a results JSON)."""
    meta, results, checks = payload["meta"], payload["results"], payload.get("flower_vs_byzlearn_max_abs_diff") or {}
    v = meta["versions"]
    out = [
        f"Aggregator time as a ratio to byzlearn's mean (absolute ms in brackets); device {meta['device']}, float32, "
        f"f = max(1, floor((n-3)/4)), median of {meta['repeats']} after a warm-up (one call when the warm-up exceeds "
        f"{meta['long_s']:g} s); torch {v['torch']}, {meta['threads']} threads; byzfl {v.get('byzfl')}; flwr {v.get('flwr')}.",
        "",
    ]

    def cols(grid):
        return sorted({(r["n"], r["d"]) for r in results if r["grid"] == grid})

    out += table(results, cols("main"), "main")
    if cols("smea"):
        out += ["", "SMEA at the extra sizes (f = max(1, floor((n-3)/4))):", ""] + table(results, cols("smea"), "smea")
    out += ["", "Targets (issue 16):", ""] + targets(results)[0]
    if meta.get("cell_load"):
        loads = sorted(meta["cell_load"], key=lambda c: (c["grid"] != "main", c["n"], c["d"]))
        said = ", ".join(f"n={c['n']} d={c['d']:.0e}: {c['foreign_cores']}" for c in loads)
        out += ["", f"Cores kept busy by other processes while each cell was measured: {said}."]
    if checks:
        diffs = ", ".join(f"{k} {x:.2g}" for k, x in checks.items())
        out += ["", f"Flower against byzlearn on the first batch, largest |difference|: {diffs}"]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, nargs="+", default=[10, 45, 100])
    ap.add_argument("--d", type=float, nargs="+", default=[1e5, 1e6], help="dimensions (float syntax ok: 1e6)")
    ap.add_argument("--smea-n", type=int, nargs="*", default=[15, 19, 23], help="extra n at which only SMEA (and mean) is timed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--long", type=float, default=5.0, help="a warm-up longer than this (s) is the measurement")
    ap.add_argument("--rules", nargs="+", default=None, help="restrict to these names (rule or pre+mean labels)")
    ap.add_argument("--quick", action="store_true", help="smoke check: n in {10, 21}, d = 1e4, 2 repeats, SMEA extra n = 13")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--byzfl", action="store_true", help="also time ByzFL's aggregators (in --byzfl-python's venv)")
    ap.add_argument("--byzfl-python", default=BYZFL_PYTHON, help="the ByzFL venv's python")
    ap.add_argument("--smea-budget", type=float, default=60.0, help="run ByzFL's SMEA only where predicted to finish within this (s)")
    ap.add_argument("--byzfl-nnm-gib", type=float, default=8.0, help="skip ByzFL's NNM where its n x n x d tensor exceeds this (GiB)")
    ap.add_argument("--flower", action="store_true", help="also time the rule code of Flower's built-in strategies (flwr installed)")
    ap.add_argument("--byzfl-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--report", type=Path, default=None, help="only print the report of this results JSON")
    ap.add_argument("--merge", type=Path, default=None, help="re-measure: this run's cells replace theirs in this results JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeats, args.smea_n = [10, 21], [1e4], 2, [13]
    if args.byzfl_worker:
        return byzfl_worker(args)
    if args.report:
        print(render(json.loads(args.report.read_text())))
        return 0
    device = torch.device(args.device)
    dims = [int(d) for d in args.d]
    only = set(args.rules) | {"mean"} if args.rules else None
    t_start, load_start = time.perf_counter(), os.getloadavg()
    results, byzfl_meta, checks = [], {}, {}
    cells = [(n, d, "main") for n in args.n for d in dims]
    if not only or "smea" in only:
        cells += [(n, d, "smea") for n in args.smea_n for d in dims if n not in args.n]
    loads = []  # per cell: the contention while it was measured
    for n, d, grid in cells:
        snap = cpu_snapshot()
        f = default_f(n)
        G = make_batch(n, d, args.seed).to(device)
        ctx = make_context(d, device, args.seed)
        timings = {}
        cell_only = only if grid == "main" else {"mean", "smea"}
        time_byzlearn(G, n, d, f, ctx, cell_only, device, args, results, timings, grid)
        if args.flower and grid == "main" and device.type == "cpu":
            time_flower(G, n, d, f, only, args, results)
            if n == args.n[0] and d == dims[0]:
                checks = flower_check(G, f)
        if args.byzfl and device.type == "cpu":
            rules = sorted(cell_only) if cell_only else None
            rows, byzfl_meta = run_byzfl(n, d, G, args, rules)
            for r in rows:
                r["grid"] = grid
            results += rows
        ref = timings.get("mean")
        for r in results:
            if r["n"] == n and r["d"] == d and r["grid"] == grid and r["ms"] is not None and ref:
                r["ratio"] = r["ms"] / (ref * 1e3)
        del G
        foreign = foreign_cores(snap, cpu_snapshot())
        loads.append(
            dict(n=n, d=d, grid=grid, foreign_cores=None if foreign is None else round(foreign, 2), time=time.strftime("%H:%M:%S"))
        )
        print(f"  n={n:4d} d={d:>9d} cell done; other processes kept {foreign} cores busy", file=sys.stderr, flush=True)

    versions = dict(python=platform.python_version(), torch=torch.__version__, byzfl=byzfl_meta.get("byzfl"))
    if args.flower:
        import flwr

        versions["flwr"] = flwr.__version__
    meta = run_meta(
        "aggregators.py", argv, args, t_start, load_start, versions, device=str(device), long_s=args.long, smea_budget_s=args.smea_budget
    )
    _, target_rows = targets(results)
    meta["cell_load"] = loads
    if args.merge and args.merge.exists():  # re-measured cells replace theirs in an earlier run's results
        old = json.loads(args.merge.read_text())
        done = {(c["n"], c["d"], c["grid"]) for c in loads}
        results = [r for r in old["results"] if (r["n"], r["d"], r.get("grid", "main")) not in done] + results
        meta["cell_load"] = [c for c in old["meta"].get("cell_load", []) if (c["n"], c["d"], c["grid"]) not in done] + loads
        meta["merged_into"] = dict(command=old["meta"].get("command"), time=old["meta"].get("time"), remeasured=sorted(done))
        checks = checks or old.get("flower_vs_byzlearn_max_abs_diff", {})
        _, target_rows = targets(results)
    payload = dict(meta=meta, targets=target_rows, flower_vs_byzlearn_max_abs_diff=checks, results=results)
    print(render(payload))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
