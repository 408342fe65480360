"""Time every registered aggregation rule (and pre-aggregator + mean) against ``mean``.

For each ``n`` in {10, 45, 100} and ``d`` in {1e5, 1e6} (float32 Gaussian ``G: Tensor[n, d]``,
``f = max(1, floor((n - 3) / 4))`` so that Bulyan's ``n >= 4f + 3`` holds), every rule registered in
``AGGREGATORS`` at run time is built with ``build_aggregator({"name": rule}, f)`` and timed: one
warm-up call, then the median of ``--repeats`` calls (CUDA synchronised). The table reports the
time as a ratio to ``mean`` measured in the same run, with the absolute time in milliseconds.
Rules whose requirement on ``(n, f)`` fails are shown as ``-``; MDA (exponential in f) runs only
for ``n <= 25``; rules that cannot be built from defaults (learned rules, say) are listed as n/a.
Pre-aggregators (nnm, bucketing, clipping, arc) are timed as ``pre+mean`` chains. ``zeno`` gets a
quadratic public loss ``0.5 ||θ - t||²`` evaluated on the ``n + 1`` candidate parameter vectors.

Usage (from the repository root)::

    .venv/bin/python benchmarks/aggregators.py                  # full CPU sweep (minutes)
    .venv/bin/python benchmarks/aggregators.py --quick          # smoke check, seconds
    .venv/bin/python benchmarks/aggregators.py --device cuda --d 1000000 10000000 --json out.json
    .venv/bin/python benchmarks/aggregators.py --n 10 45 --d 100000 --repeats 7 --rules median krum

ByzFL comparison (``--byzfl``): ByzFL is installed in a separate venv (it pins its own
dependencies; byzlearn's venv must not be touched)::

    python3 -m venv /work/byzfl-venv
    /work/byzfl-venv/bin/pip install torch==2.13.0 byzfl     # torch pinned: pip keeps the CPU wheel
    PYTHONPATH=src /work/byzfl-venv/bin/python benchmarks/aggregators.py --byzfl --quick

ByzFL's package ``__init__`` imports its training framework, which does ``from torchvision import
datasets, transforms``; the torchvision wheel pip resolves next to torch 2.13.0 fails at import
(``operator torchvision::nms does not exist``). Only the aggregators are needed here, so this
script installs a stub ``torchvision`` module in ``sys.modules`` before importing byzfl (every
attribute of the stub is an inert placeholder: byzfl builds some transforms at import time).
ByzFL API: ``byzfl.Median()``, ``byzfl.TrMean(f)``, ``byzfl.GeometricMedian(nu=0.1, T=3)``,
``byzfl.Krum(f)``, ``byzfl.MultiKrum(f)``, ``byzfl.CenteredClipping(m=None, L=1, tau=100.0)``
(stateful: keeps ``m``), ``byzfl.MDA(f)``, ``byzfl.Meamed(f)``, pre-aggregators ``byzfl.NNM(f)``,
``byzfl.Bucketing(s)``, ``byzfl.Clipping(c=2.0)`` (c must be a float), ``byzfl.ARC(f)``; every
object is called as ``obj(vectors)`` with ``vectors`` a ``Tensor[n, d]`` (or numpy array / list)
and returns a ``Tensor[d]`` (rules) or ``Tensor[m, d]`` (pre-aggregators; Clipping and ARC modify
their input in place, so they get a fresh copy, made outside the timed region).
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

try:
    from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS, AggregationContext, build_aggregator
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS, AggregationContext, build_aggregator

PRE_NAMES = ("nnm", "bucketing", "clipping", "arc")
# chains whose pre-aggregator overwrites a batch it is handed (ctx.owns_batch, as the engine does);
# they are timed on a fresh copy made outside the timed region, like ByzFL's in-place Clipping/ARC
INPLACE_PRE = ("clipping+mean", "arc+mean")
MDA_MAX_N = 25


def default_f(n: int) -> int:
    return max(1, (n - 3) // 4)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, repeats: int, prepare=None) -> float:
    """Median wall time in seconds of ``fn(arg)`` after one warm-up; ``prepare()`` makes ``arg`` untimed."""
    arg = prepare() if prepare else None
    fn(arg)
    sync(device)
    times = []
    for _ in range(repeats):
        arg = prepare() if prepare else None
        sync(device)
        t0 = time.perf_counter()
        fn(arg)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_context(d: int, device: torch.device) -> AggregationContext:
    target = torch.ones(d, device=device)

    def public_loss(P):
        return 0.5 * ((P - target) ** 2).sum(dim=1)

    return AggregationContext(
        params=torch.zeros(d, device=device), lr=0.1, public_loss=public_loss, generator=torch.Generator().manual_seed(0)
    )


def byzlearn_candidates(n: int, f: int, only: set[str] | None):
    """(label, aggregator or None, reason) for every registered rule and pre-aggregator chain."""
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


# ---------------------------------------------------------------------------------------------- ByzFL
def _install_torchvision_stub() -> None:
    class _Placeholder:
        def __init__(self, name):
            self._name = name

        def __call__(self, *a, **k):  # byzfl builds transforms at import time: stay inert
            return _Placeholder(f"{self._name}()")

        def __getattr__(self, item):
            return _Placeholder(f"{self._name}.{item}")

    class _StubModule(types.ModuleType):
        def __getattr__(self, item):
            if item.startswith("__"):
                raise AttributeError(item)
            return _Placeholder(f"{self.__name__}.{item}")

    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    root = _StubModule("torchvision")
    root.__path__ = []  # a package, so ``import torchvision.x`` resolves to the stubs below
    sys.modules["torchvision"] = root
    for sub in ("datasets", "transforms", "models", "io", "ops", "utils"):
        mod = _StubModule(f"torchvision.{sub}")
        setattr(root, sub, mod)
        sys.modules[f"torchvision.{sub}"] = mod


def byzfl_candidates(n: int, f: int):
    _install_torchvision_stub()
    import byzfl  # noqa: F401  (after the stub)

    avg = byzfl.Average()
    rules = {
        "median": lambda: byzfl.Median(),
        "trimmed_mean": lambda: byzfl.TrMean(f=f),
        "geometric_median": lambda: byzfl.GeometricMedian(nu=0.1, T=3),
        "krum": lambda: byzfl.Krum(f=f),
        "multi_krum": lambda: byzfl.MultiKrum(f=f),
        "centered_clipping": lambda: byzfl.CenteredClipping(L=1, tau=100.0),
        "mda": lambda: byzfl.MDA(f=f),
    }
    pres = {
        "nnm+mean": (lambda: byzfl.NNM(f=f), False),
        "bucketing+mean": (lambda: byzfl.Bucketing(s=2), False),
        "clipping+mean": (lambda: byzfl.Clipping(c=2.0), True),
        "arc+mean": (lambda: byzfl.ARC(f=f), True),
    }
    out = []
    for label, make in rules.items():
        if label == "mda" and n > MDA_MAX_N:
            continue
        out.append((label, make(), False))
    for label, (make, inplace) in pres.items():
        pre = make()
        out.append((label, (lambda p: lambda X: avg(p(X)))(pre), inplace))
    return out


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, nargs="+", default=[10, 45, 100])
    ap.add_argument("--d", type=float, nargs="+", default=[1e5, 1e6], help="dimensions (float syntax ok: 1e6)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rules", nargs="+", default=None, help="restrict to these names (rule or pre+mean labels)")
    ap.add_argument("--quick", action="store_true", help="smoke check: n in {10, 21}, d = 1e4, 2 repeats")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    ap.add_argument("--byzfl", action="store_true", help="also time ByzFL's aggregators (run inside the byzfl venv)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.d, args.repeats = [10, 21], [1e4], 2
    device = torch.device(args.device)
    dims = [int(d) for d in args.d]
    only = set(args.rules) | {"mean"} if args.rules else None

    results = []  # dicts: impl, rule, n, d, f, ms, ratio, note
    for n in args.n:
        f = default_f(n)
        for d in dims:
            g = torch.Generator().manual_seed(args.seed)
            G = torch.randn(n, d, generator=g).to(device)
            ctx = make_context(d, device)
            timings = {}
            cands = byzlearn_candidates(n, f, only)
            cands.sort(key=lambda c: c[0] != "mean")  # mean first: the reference
            for label, agg, note in cands:
                if agg is None:
                    results.append(dict(impl="byzlearn", rule=label, n=n, d=d, f=f, ms=None, ratio=None, note=note))
                    continue
                with torch.no_grad():
                    if label in INPLACE_PRE:  # as in the engine: the batch is handed over (a copy made untimed)
                        owned = dataclasses.replace(ctx, owns_batch=True)
                        sec = time_call(lambda X, agg=agg, owned=owned: agg(X, owned), device, args.repeats, prepare=G.clone)
                    else:
                        sec = time_call(lambda _, agg=agg, G=G, ctx=ctx: agg(G, ctx), device, args.repeats)
                timings[label] = sec
                results.append(dict(impl="byzlearn", rule=label, n=n, d=d, f=f, ms=sec * 1e3, ratio=None, note=""))
                print(f"  n={n:4d} d={d:>9d} f={f:3d} {label:<22s} {sec * 1e3:10.2f} ms", file=sys.stderr, flush=True)
            if args.byzfl:
                for label, fn, inplace in byzfl_candidates(n, f):
                    if only and label not in only:
                        continue
                    try:
                        with torch.no_grad():
                            prep = (lambda G=G: G.clone()) if inplace else (lambda G=G: G)
                            sec = time_call(fn, device, args.repeats, prepare=prep)
                        results.append(dict(impl="byzfl", rule=label, n=n, d=d, f=f, ms=sec * 1e3, ratio=None, note=""))
                        print(f"  n={n:4d} d={d:>9d} f={f:3d} byzfl:{label:<16s} {sec * 1e3:10.2f} ms", file=sys.stderr, flush=True)
                    except Exception as e:
                        results.append(dict(impl="byzfl", rule=label, n=n, d=d, f=f, ms=None, ratio=None, note=f"error: {e}"))
            ref = timings.get("mean")
            for r in results:
                if r["n"] == n and r["d"] == d and r["ms"] is not None and ref:
                    r["ratio"] = r["ms"] / (ref * 1e3)
            del G

    # markdown table: one row per (impl, rule), one column per (n, d)
    cols = [(n, d) for n in args.n for d in dims]
    keys = []
    for r in results:
        k = (r["impl"], r["rule"])
        if k not in keys:
            keys.append(k)
    print(
        f"Aggregator time as a ratio to mean (absolute ms in brackets); device {device}, float32, "
        f"f = max(1, floor((n-3)/4)), median of {args.repeats} after a warm-up; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads.\n"
    )
    print("| rule | " + " | ".join(f"n={n}, d={d:.0e}" for n, d in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for impl, rule in keys:
        cells = []
        for n, d in cols:
            r = next((x for x in results if x["impl"] == impl and x["rule"] == rule and x["n"] == n and x["d"] == d), None)
            if r is None:
                cells.append("")
            elif r["ms"] is None:
                cells.append(f"- ({r['note']})" if r["note"] else "-")
            else:
                ratio = f"{r['ratio']:.1f}x" if r["ratio"] is not None else "?"
                cells.append(f"{ratio} ({r['ms']:.3g})")
        label = rule if impl == "byzlearn" else f"byzfl: {rule}"
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        meta = dict(
            device=str(device),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            repeats=args.repeats,
            cpu_count=os.cpu_count(),
            time=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        args.json.write_text(json.dumps(dict(meta=meta, results=results), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
