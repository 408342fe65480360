"""Every rule and every attack's forge against the batched gradient pass of the round (issue 19's component table).

The reference is what a round costs before any rule or attack runs: byzlearn's ``Simulator`` with the
``fc_mnist`` model (784-100-10 ReLU, d = 79,510), batch 32 per worker, its config built as
``benchmarks/end_to_end.py``'s ``simulators()`` builds it, and ``sim.worker_gradients(draw.batches)``
(all n workers' minibatches of one ``draw()``, one ``vmap(grad)`` pass) timed as the median of
``max(21, --repeats)`` calls after 5 warm-up calls, at n = 13 (the reference) and at the grid's other n (for context).
The data set is synthetic, of MNIST's shape (60,000 + 10,000 Gaussian 1x28x28 images, 10 classes, passed
as ``Simulator(cfg, dataset=...)``): the pass's cost does not depend on the pixel values, so no download
is needed; ``--data-dir DIR`` uses the real MNIST there instead.

Rules: every registered rule and pre-aggregator + mean chain, built and timed by
``benchmarks/aggregators.py``'s ``time_byzlearn`` (its candidate list, requirements, MDA's ``n <= 25``
and in-place chains, ``aggregators_common.time_call``: median of ``--repeats`` after a warm-up, one call
when the warm-up exceeds ``--long`` s), on its seeded Gaussian batch, plus ``mve``: the decentralised
agreement's ``mve_average(G, f)`` (not a registered rule; its ``max_subsets`` cap applies).
Attacks: every registered attack and ``VARIANTS`` entry, timed by ``benchmarks/attacks.py``'s ``run_size``
(its ``AttackContext``, defender, rule-evaluation counter, ``engine.round.forge``; median of ``--repeats``).
Both at n in {13, 45, 100} x d in {8e4, 1e6}, float32, f = max(1, floor((n - 3) / 4)) (2, 10, 24).
Cells that cannot run are shown as ``-`` with the reason. ``mean`` and ``trimmed_mean`` are always timed.

Verdict (issue 19: no component above the gradient pass at n = 13, d = 8e4): the n = 13, d = 8e4 cell
over the reference; ``ok`` at <= 1x, else for the components whose definition needs more (the attacks'
``SEARCHES``; the rules in ``EXEMPT``: the learned aggregator and the MDA / MVE / SMEA subset searches) the
cost as a multiple of one rule evaluation: of the attack's defender (trimmed_mean; krum for fang_krum) on
the same batch, and for the rules of one ``trimmed_mean`` evaluation of the same batch; else ``over``.

Usage (from the repository root)::

    .venv/bin/python benchmarks/components.py --json benchmarks/results-components-cpu.json
    .venv/bin/python benchmarks/components.py --quick          # smoke check: n = 13, d = 1e4, 2 repeats
    .venv/bin/python benchmarks/components.py --names trimmed_mean krum alie --n 13 --d 8e4
    .venv/bin/python benchmarks/components.py --report benchmarks/results-components-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import attacks as A  # benchmarks/attacks.py (benchmarks/ is on sys.path); it puts byzlearn on sys.path when not installed
from aggregators import _short, time_byzlearn
from aggregators_common import default_f, make_batch, make_context, run_meta, time_call
from byzlearn import config as C
from byzlearn.data import Dataset, load_dataset
from byzlearn.decentralized.mve import mve_average
from byzlearn.engine import Simulator
from end_to_end import workload

REF_N = 13
GRAD_WARMUP, GRAD_REPEATS = 5, 21  # the gradient pass is cheap: more calls, a steadier reference
EXEMPT = ("learned", "mda", "mve", "smea")  # rules whose definition needs more than one pass (A.SEARCHES: attacks)
CPU = torch.device("cpu")
ELSEWHERE = {"learned": "benchmarks/learned.py", "learned_whitebox": "benchmarks/learned.py"}  # need a trained network


def synthetic_mnist(seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x_tr, x_te = torch.randn(60_000, 1, 28, 28, generator=g), torch.randn(10_000, 1, 28, 28, generator=g)
    return Dataset("mnist", x_tr, torch.randint(10, (60_000,), generator=g), x_te, torch.randint(10, (10_000,), generator=g), 10)


def gradient_pass(ns, args) -> dict[int, dict]:
    """``{n: {ms, d}}``: median seconds of ``worker_gradients`` of one round's ``n`` minibatches, fc_mnist, batch 32."""
    ds = load_dataset("mnist", args.data_dir, False) if args.data_dir else synthetic_mnist(args.seed)
    out = {}
    for n in ns:
        sim = Simulator(C.load(None, workload(n, default_f(n))), dataset=ds)
        batches = sim.draw().batches
        for _ in range(GRAD_WARMUP):  # the first calls of a process pay functorch's and the allocator's start-up
            sim.worker_gradients(batches)
        sec = A.median_time(lambda sim=sim, b=batches: sim.worker_gradients(b), max(GRAD_REPEATS, args.repeats))
        out[n] = dict(ms=sec * 1e3, d=sim.d, workers=int(batches.shape[0]), batch=int(batches.shape[1]))
        print(f"gradient pass n={n} d={sim.d}: {sec * 1e3:.3f} ms", file=sys.stderr, flush=True)
    return out


def time_rules(n: int, d: int, only, args) -> list[dict]:
    f = default_f(n)
    G, ctx, results = make_batch(n, d, args.seed), make_context(d, CPU, args.seed), []
    time_byzlearn(G, n, d, f, ctx, only, CPU, args, results, {}, "main")
    if not only or "mve" in only:
        row = dict(impl="byzlearn", rule="mve", n=n, d=d, f=f, grid="main", ms=None, ratio=None, calls=0, note="")
        try:
            sec, row["calls"] = time_call(lambda _: mve_average(G, f), CPU, args.repeats, None, args.long)
            row["ms"] = sec * 1e3
        except Exception as e:  # ConfigError: more subsets than max_subsets, or n too small for f
            row["note"] = f"{type(e).__name__}: {str(e)[:160]}"
        results.append(row)
    return results


def exempt_text(r: dict, kind: str, unit_ms: float | None) -> str:
    if kind == "attacks":
        return f"{r['per_rule_evaluation']:.3g}x one {r['defender']} evaluation ({A.cost_text(r)})"
    return f"{r['ms'] / unit_ms:.3g}x one trimmed_mean evaluation" if unit_ms else "no trimmed_mean time"


def verdicts(payload: dict) -> list[dict]:
    """One row per component and kind: its cells, its ratio to the reference and the verdict."""
    ref_ms, sizes, out = payload["gradient_pass"][str(REF_N)]["ms"], [tuple(s) for s in payload["sizes"]], []
    vn, vd = min(sizes)  # n = 13, d = 8e4 (the smallest cell of the grid)
    for kind, rows, key in (("rules", payload["rules"], "rule"), ("attacks", payload["attacks"], "attack")):
        for name in dict.fromkeys(r[key] for r in rows):
            mine = {(r["n"], r["d"]): r for r in rows if r[key] == name}
            cell = mine.get((vn, vd))
            exempt = (name in EXEMPT) if kind == "rules" else bool(cell and cell["search"])
            cells = {f"{n}:{d}": mine.get((n, d)) for n, d in sizes}
            row = dict(kind=kind, name=name, cells=cells, ratio=None, status="n/a", verdict="n/a")
            if name in ELSEWHERE and (cell is None or cell["ms"] is None):
                row["verdict"] = f"n/a: exempt (learned aggregator, needs a network), timed by {ELSEWHERE[name]}"
            if cell is not None and cell["ms"] is not None:
                row["ratio"] = cell["ms"] / ref_ms
                tm = next((r["ms"] for r in rows if kind == "rules" and r[key] == "trimmed_mean" and (r["n"], r["d"]) == (vn, vd)), None)
                row["status"] = "ok" if row["ratio"] <= 1 else "exempt" if exempt else "over"
                row["verdict"] = row["status"] + (f": {exempt_text(cell, kind, tm)}" if exempt else "")
                if cell.get("note"):
                    row["verdict"] += f" ({cell['note']})"
            out.append(row)
    return out


def _why(r) -> str:
    note = r.get("note") or "not run"
    return _short(note[5:-1] if note.startswith("n/a (") else note).split(";")[0][:120]


def _cell(r) -> str:
    """A cell's time; ``-`` where it could not run (the reason: in the verdict column, or here if short)."""
    if r is None:
        return ""
    if r["ms"] is None:
        why = _why(r)
        return f"- ({why})" if len(why) <= 40 else "-"
    return f"{r['ms']:.3g}"


def render(payload: dict) -> str:
    meta, sizes, gp = payload["meta"], [tuple(s) for s in payload["sizes"]], payload["gradient_pass"]
    ref = gp[str(REF_N)]
    vn, vd = min(sizes)
    passes = ", ".join(f"n={n}: {g['ms']:.3g} ms" for n, g in gp.items())
    out = [
        f"Per-component time (ms, median of {meta['repeats']} after a warm-up; float32, f = max(1, floor((n-3)/4))) against "
        f"the batched gradient pass of the round (fc_mnist, d = {ref['d']:,}, batch 32 per worker, {meta['data']}): "
        f"{passes}; reference n = {REF_N}: {ref['ms']:.3g} ms. torch {meta['versions']['torch']}, {meta['threads']} threads, "
        f"{meta['machine']['cpu_count']} cores. Ratio and verdict: the n={vn}, d={vd:.0e} cell over the reference."
    ]
    rows = verdicts(payload)
    for kind in ("rules", "attacks"):
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        out += ["", f"{kind.capitalize()}:", ""]
        out += ["| " + kind[:-1] + " | " + " | ".join(f"n={n}, d={d:.0e}" for n, d in sizes) + " | x gradient pass | verdict |"]
        out += ["|---|" + "---:|" * len(sizes) + "---:|---|"]
        for r in mine:
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            missing = [c for c in r["cells"].values() if c is not None and c["ms"] is None and len(_why(c)) > 40]
            if missing and r["verdict"] == "n/a":
                r["verdict"] = f"n/a: {_why(missing[0])}"
            elif missing:
                r["verdict"] += f"; not run where marked -: {_why(missing[0])}"
            cells = " | ".join(_cell(r["cells"][f"{n}:{d}"]) for n, d in sizes)
            out.append(f"| {r['name']} | {cells} | {ratio} | {r['verdict']} |")
        counts = {v: sum(r["status"] == v for r in mine) for v in ("ok", "exempt", "over", "n/a")}
        out += ["", f"{kind.capitalize()}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" (n/a: not run at n={vn}, d={vd:.0e})."]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[13, 45, 100])
    ap.add_argument("--d", type=float, nargs="+", default=[8e4, 1e6], help="dimensions (float syntax ok: 1e6)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--long", type=float, default=5.0, help="a rule's warm-up longer than this (s) is its measurement")
    ap.add_argument("--only", choices=("rules", "attacks"), default=None)
    ap.add_argument("--names", nargs="+", default=None, help="restrict to these rules / attacks (names or variant labels)")
    ap.add_argument("--data-dir", default=None, help="time the gradient pass on the real MNIST here (default: synthetic)")
    ap.add_argument("--quick", action="store_true", help="smoke check: n = 13, d = 1e4, 2 repeats")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--report", type=Path, default=None, help="only print the report of this results JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.report:
        print(render(json.loads(args.report.read_text())))
        return 0
    if args.quick:
        args.n, args.d, args.repeats = [13], [1e4], 2
    sizes = [(n, int(d)) for n in args.n for d in args.d]
    names = set(args.names) if args.names else None
    t0, load0 = time.perf_counter(), os.getloadavg()
    gp = gradient_pass(sorted(set(args.n) | {REF_N}), args)
    rules, attacks, bases = [], [], []
    for n, d in sizes:
        if args.only != "attacks":
            rules += time_rules(n, d, names | {"mean", "trimmed_mean"} if names else None, args)
        if args.only != "rules":
            rows, base = A.run_size(n, d, args, names)
            attacks += rows
            bases.append(base)
    data = f"MNIST from {args.data_dir}" if args.data_dir else "synthetic data of MNIST's shape"
    meta = run_meta("components.py", argv, args, t0, load0, data=data)
    payload = dict(meta=meta, sizes=sizes, gradient_pass={str(n): g for n, g in gp.items()}, rules=rules, attacks=attacks)
    payload["attack_sizes"] = bases
    payload["verdicts"] = [{k: v for k, v in r.items() if k != "cells"} for r in verdicts(payload)]
    print(render(payload))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
