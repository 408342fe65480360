"""Time every registered attack's ``forge`` against the mean of the batch, and count the searches' rule evaluations.

For each size (default ``n = 45, d = 1e6`` and ``n = 13, d = 8e4``; ``f = max(1, floor((n - 3) / 4))``,
the convention of ``benchmarks/aggregators.py``: 10 resp. 2 Byzantine workers), a float32 Gaussian
batch ``G: Tensor[n, d]`` is drawn and the ``AttackContext`` is built as ``engine.simulator``'s
``messages`` builds it: a seeded random set of ``f`` Byzantine rows (``byzantine``, sorted), ``honest =
G.index_select(0, honest rows)`` (``Tensor[n - f, d]``), ``own = G.index_select(0, byzantine rows)`` for
attacks with ``needs_own_gradients`` (else ``None``), ``params = 0_d``, the defender's ``aggregator``
(``trimmed_mean`` with ``f``; ``krum`` for ``fang_krum``), the attack's seeded ``generator``, and the
``aggregation`` context the rule would see (``round``, ``params``, ``lr = 0.1``, a quadratic public
loss, a fixed server update, its own generator). The forge is called through ``engine.round.forge``
(the contract check the engines run), ``round`` counting up from 0 across the calls (the warm-up is
round 0, so stateful attacks such as ``mimic`` are timed past their warm-up); the figure is the median
of ``--repeats`` calls after one warm-up. The reference is byzlearn's ``mean`` rule on the whole batch
``G``, called alternately with the forge (mean, forge, mean, forge, ...), and the ratio is the median
forge over the median mean of those same calls (a shared machine's contention hits both alike). The
defender's rule on ``G`` (one rule evaluation) is timed once per size. Each row also records the number
of cores other processes kept busy while it was measured (``foreign_cores``, from ``/proc/stat``).

Search attacks: the aggregator handed to the attack is wrapped in a counter of its ``evaluate`` and
``__call__`` calls (rule evaluations per forge). The attacks' own counters are reported beside it:
``last_tests`` (the gamma tests of ``min_max`` / ``min_sum``, distance tests with no rule evaluation;
``agr_tailored``'s tests are rule evaluations) and ``last_evaluations`` (``fang_krum``'s Krum
evaluations, made with byzlearn's ``krum_scores`` on the candidate batch, not through the defender's
object). ``alie_optimal`` / ``ipm_optimal`` evaluate the rule ``evals`` (20) times. The issue's target:
every forge at most 2x the mean at n = 45, d = 1e6, except the searches (``SEARCHES``), whose cost is
given in rule evaluations (the count, and the forge time over one evaluation of the defender's rule).

Configured variants are timed beside the defaults (``VARIANTS``): Blades' ``NoiseAdversary`` (``gaussian``
with ``mean = 0.1, std = 0.1``) and the ``knowledge = "own"`` variants of ``min_max`` and ``fang_trmean``.
Attacks that need a defender other than a plain rule (``learned_whitebox``: a learned aggregator) are
listed with the error they raise.

Usage (from the repository root)::

    .venv/bin/python benchmarks/attacks.py --json benchmarks/results-attacks-cpu.json
    .venv/bin/python benchmarks/attacks.py --quick          # smoke check: n = 13, d = 1e4
    .venv/bin/python benchmarks/attacks.py --sizes 45:1000000 --attacks min_max fang_krum --repeats 7
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import byzlearn  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
from aggregators_common import cpu_snapshot, foreign_cores, run_meta, time_call  # noqa: E402  (benchmarks/ is on sys.path)
from byzlearn.aggregators import AggregationContext, build_aggregator  # noqa: E402
from byzlearn.attacks import ATTACKS, AttackContext, build_attack  # noqa: E402
from byzlearn.engine.round import forge  # noqa: E402

SEARCHES = ("min_max", "min_sum", "agr_tailored", "fang_krum", "alie_optimal", "ipm_optimal", "learned_whitebox")
DEFENDER = {"fang_krum": "krum"}  # the defender's rule handed to the attack (default: trimmed_mean)
VARIANTS = [
    ("noise (gaussian mean=0.1 std=0.1)", {"name": "gaussian", "mean": 0.1, "std": 0.1}),
    ("min_max (knowledge=own)", {"name": "min_max", "knowledge": "own"}),
    ("fang_trmean (knowledge=own)", {"name": "fang_trmean", "knowledge": "own"}),
]
TARGET = (45, 1_000_000)
MAX_RATIO = 2.0


def default_f(n: int) -> int:
    return max(1, (n - 3) // 4)


class CountingRule:
    """The defender's rule, counting ``evaluate`` / ``__call__`` (rule evaluations); everything else delegated."""

    def __init__(self, rule):
        self._rule, self.count = rule, 0

    def evaluate(self, G, ctx=None):
        self.count += 1
        return self._rule.evaluate(G, ctx)

    def __call__(self, G, ctx=None):
        self.count += 1
        return self._rule(G, ctx)

    def __getattr__(self, item):
        return getattr(self._rule, item)


def median_time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn()`` after one warm-up (``time_call`` without its long-call shortcut)."""
    return time_call(lambda _: fn(), torch.device("cpu"), repeats, long_s=float("inf"))[0]


def paired_times(fn, ref, repeats: int) -> tuple[float, float]:
    """``(median of fn, median of ref)``: after one warm-up each, the two alternate call by call, so that both
    medians are taken over the same stretch of time on a shared machine (the ratio is what is reported)."""
    fn()
    ref()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        b.append(t1 - t0)
        a.append(t2 - t1)
    return statistics.median(a), statistics.median(b)


def aggregation_context(d: int, seed: int, round_: int = 0) -> AggregationContext:
    target = torch.ones(d)
    g0 = torch.randn(d, generator=torch.Generator().manual_seed(seed + 1))

    def public_loss(P):
        return 0.5 * ((P - target) ** 2).sum(dim=1)

    return AggregationContext(
        round=round_,
        params=torch.zeros(d),
        lr=0.1,
        public_loss=public_loss,
        public_update=lambda: g0,
        generator=torch.Generator().manual_seed(seed + 2),
    )


def specs(only: set[str] | None) -> list[tuple[str, dict]]:
    out = [(name, {"name": name}) for name in ATTACKS.names()]
    registered = set(ATTACKS.names())
    out += [(label, spec) for label, spec in VARIANTS if spec["name"] in registered]
    if only:
        out = [(label, spec) for label, spec in out if label in only or spec["name"] in only]
    return out


def run_size(n: int, d: int, args, only) -> tuple[list[dict], dict]:
    f = default_f(n)
    G = torch.randn(n, d, generator=torch.Generator().manual_seed(args.seed))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed + 3))
    byz = perm[:f].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[byz] = False
    honest_ids = keep.nonzero().squeeze(1)
    honest = G.index_select(0, honest_ids)
    own_rows = G.index_select(0, byz)
    agg_ctx = aggregation_context(d, args.seed)
    params = torch.zeros(d)
    with torch.no_grad():
        mean = build_aggregator({"name": "mean"}, f_default=f)
        ref = median_time(lambda: mean(G, agg_ctx), args.repeats)
        rules = {}
        for name in sorted(set(DEFENDER.values()) | {"trimmed_mean"}):
            rule = build_aggregator({"name": name}, f_default=f)
            rules[name] = median_time(lambda rule=rule: rule(G, agg_ctx), args.repeats)
    base = dict(n=n, d=d, f=f, mean_ms=ref * 1e3, rule_ms={k: v * 1e3 for k, v in rules.items()})
    print(f"n={n} d={d} f={f}: mean {ref * 1e3:.3f} ms; " + ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in rules.items()), file=sys.stderr)
    rows = []
    for label, spec in specs(only):
        name = spec["name"]
        defender = DEFENDER.get(name, "trimmed_mean")
        row = dict(attack=label, spec=spec, n=n, d=d, f=f, defender=defender, search=name in SEARCHES, ms=None, ratio=None)
        try:
            attack = build_attack(dict(spec))
        except Exception as e:
            row["note"] = f"n/a ({type(e).__name__}: {e})"
            rows.append(row)
            continue
        counter = CountingRule(build_aggregator({"name": defender}, f_default=f))
        state = {"round": 0}
        own = own_rows if attack.needs_own_gradients else None
        h_sum = float(honest.double().sum())
        gen = torch.Generator().manual_seed(args.seed + 4)

        def call(attack=attack, counter=counter, state=state, own=own, gen=gen):
            counter.count = 0
            ctx = AttackContext(
                n=n,
                f=f,
                round=state["round"],
                honest=honest,
                own=own,
                params=params,
                aggregator=counter,
                generator=gen,
                aggregation=dataclasses.replace(agg_ctx, round=state["round"]),
                byzantine=byz,
            )
            state["round"] += 1
            return forge(attack, ctx, d)

        snap = cpu_snapshot()
        try:
            with torch.no_grad():
                sec, mean_sec = paired_times(call, lambda: mean(G, agg_ctx), args.repeats)
                rows_out = call()
        except Exception as e:
            row["note"] = f"error: {type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            print(f"  {label:<36s} {row['note']}", file=sys.stderr, flush=True)
            continue
        row.update(ms=sec * 1e3, mean_ms=mean_sec * 1e3, ratio=sec / mean_sec, rows=int(rows_out.shape[0]), rule_evaluations=counter.count)
        busy = foreign_cores(snap, cpu_snapshot())
        row["foreign_cores"] = None if busy is None else round(busy, 2)
        for attr in ("last_tests", "last_evaluations", "evals"):
            if hasattr(attack, attr):
                row[attr] = getattr(attack, attr)
        row["per_rule_evaluation"] = sec / rules[defender]
        if float(honest.double().sum()) != h_sum:
            row["note"] = "modified ctx.honest in place"
        rows.append(row)
        extra = f" rule evals {counter.count}" + "".join(f" {a}={row[a]}" for a in ("last_tests", "last_evaluations") if a in row)
        print(f"  {label:<36s} {sec * 1e3:10.3f} ms  {sec / mean_sec:6.2f}x mean{extra}", file=sys.stderr, flush=True)
    return rows, base


def cost_text(r: dict) -> str:
    """The search cost of one forge: rule evaluations through the defender's object and the attack's own tests."""
    parts = [f"{r['rule_evaluations']} rule evals"]
    if "last_tests" in r:
        parts.append(f"{r['last_tests']} tests")
    if "last_evaluations" in r:
        parts.append(f"{r['last_evaluations']} Krum evals (internal)")
    return ", ".join(parts)


def _rules_text(base: dict) -> str:
    return ", ".join(f"{k} {v:.3g} ms" for k, v in base["rule_ms"].items())


def markdown(rows: list[dict], bases: list[dict], meta: dict) -> str:
    sizes = [(b["n"], b["d"]) for b in bases]
    lines = [
        f"Forge time of every attack (median of {meta['repeats']} calls after a warm-up, alternating with calls of the mean) "
        f"as a ratio to byzlearn's mean of the whole batch over the same calls (forge ms in brackets); float32, "
        f"f = max(1, floor((n-3)/4)); torch {meta['versions']['torch']}, {meta['threads']} threads. "
        "Mean and one evaluation of the defender's rule on the batch, timed once per size: "
        + "; ".join(f"n={b['n']}, d={b['d']:.0e}: mean {b['mean_ms']:.3g} ms, " + _rules_text(b) for b in bases)
        + ".",
        "",
        "| attack | "
        + " | ".join(f"n={n}, d={d:.0e} (f={default_f(n)})" for n, d in sizes)
        + " | search cost per forge (n=45) | target (n=45, d=1e6) | met |",
        "|---|" + "---|" * len(sizes) + "---|---|---|",
    ]
    labels = list(dict.fromkeys(r["attack"] for r in rows))
    for label in labels:
        cells, target_row = [], None
        for n, d in sizes:
            r = next((x for x in rows if x["attack"] == label and x["n"] == n and x["d"] == d), None)
            if r is None:
                cells.append("")
            elif r["ms"] is None:
                cells.append(f"- ({r.get('note', '').split(';')[0][:160]})")
            else:
                cells.append(f"{r['ratio']:.2f}x ({r['ms']:.3g})")
            if (n, d) == TARGET:
                target_row = r
        ref = target_row or next((x for x in rows if x["attack"] == label and x["ms"] is not None), None)
        search = bool(ref and ref["search"])
        cost = ""
        if ref and ref["ms"] is not None and (search or ref["rule_evaluations"]):
            cost = f"{cost_text(ref)}; {ref['per_rule_evaluation']:.2g}x one {ref['defender']} evaluation"
        if target_row is None or target_row["ms"] is None:
            target, met = ("cost in rule evaluations" if search else f"<= {MAX_RATIO:g}x mean"), "-"
        elif search:
            target, met = "cost in rule evaluations", "n/a"
        else:
            target, met = f"<= {MAX_RATIO:g}x mean", "yes" if target_row["ratio"] <= MAX_RATIO else "no"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cost} | {target} | {met} |")
    busy = [r["foreign_cores"] for r in rows if r.get("foreign_cores") is not None]
    if busy:
        said = f"median {statistics.median(busy):.2f}, max {max(busy):.2f}"
        lines += ["", f"Cores kept busy by other processes while a row was measured: {said}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["45:1000000", "13:80000"], help="n:d pairs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attacks", nargs="+", default=None, help="restrict to these attack names or variant labels")
    ap.add_argument("--quick", action="store_true", help="smoke check: n = 13, d = 1e4, 2 repeats")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = ["13:10000"], 2
    only = set(args.attacks) if args.attacks else None
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows, bases = [], []
    for size in args.sizes:
        n, d = (int(float(x)) for x in size.split(":"))
        r, b = run_size(n, d, args, only)
        rows += r
        bases.append(b)
    meta = run_meta("attacks.py", argv, args, t0, load0, registered=ATTACKS.names())
    print(markdown(rows, bases, meta))
    if args.json:
        args.json.write_text(json.dumps(dict(meta=meta, sizes=bases, results=rows), indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
