"""The ByzFL anchor of ``benchmarks/aggregators.py``: ``run_byzfl`` (in this process) runs the script
itself as ``aggregators.py --byzfl-worker`` under ByzFL's venv python for one ``(n, d)``, reads back the
rows the worker wrote to a temporary JSON and checks that the worker rebuilt the same batch (the float64
sum of ``G``); ``byzfl_worker`` (inside that venv, where byzlearn, safetensors and scikit-learn are not
importable: this module imports only the standard library, torch, ``aggregators_common`` and
``byzfl_side`` (for its torchvision stub), and byzfl on call) installs an inert ``torchvision`` stub,
builds ByzFL 0.0.11's versions of byzlearn's rules and pre-aggregator chains (``byzfl_candidates``: SMEA
only where its enumeration is predicted to finish within ``--smea-budget``, NNM skipped above
``--byzfl-nnm-gib``) and times them on the same batch.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from aggregators_common import MDA_MAX_N, ROOT, checksum, default_f, make_batch, time_call
from byzfl_side import install_torchvision_stub  # the side environment's stub, shared with the byzfl-benchmark runner

SCRIPT = Path(__file__).resolve().with_name("aggregators.py")  # the worker is this benchmark's script


def byzfl_candidates(n: int, f: int, d: int, G, args):
    """(label, callable or None, in-place?, note) for ByzFL's versions of byzlearn's rules."""
    import byzfl

    avg = byzfl.Average()
    rules = {
        "median": lambda: byzfl.Median(),
        "trimmed_mean": lambda: byzfl.TrMean(f=f),
        "geometric_median": lambda: byzfl.GeometricMedian(nu=0.1, T=3),
        "krum": lambda: byzfl.Krum(f=f),
        "multi_krum": lambda: byzfl.MultiKrum(f=f),
        "centered_clipping": lambda: byzfl.CenteredClipping(L=1, tau=100.0),
        "mda": lambda: byzfl.MDA(f=f),
        "monna": lambda: byzfl.MoNNA(f=f, idx=0),
        "meamed": lambda: byzfl.Meamed(f=f),
        "caf": lambda: byzfl.CAF(f=f),
        "smea": lambda: byzfl.SMEA(f=f),
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
        if label == "smea" and 2 * f < n:
            subsets = math.comb(n, f)
            m = n - f  # one subset's rows; SMEA(1) on m + 1 rows enumerates m + 1 subsets of m rows
            with torch.no_grad():
                t0 = time.perf_counter()
                byzfl.SMEA(f=1)(G[: m + 1])
                per_subset = (time.perf_counter() - t0) / (m + 1)
            est = subsets * per_subset
            say = f"estimate {subsets:,} subsets x {per_subset * 1e3:.3g} ms = {est:.3g} s"
            print(f"  n={n:4d} d={d:>9d} f={f:3d} byzfl:smea {say}", file=sys.stderr)
            if est > args.smea_budget:
                note = f"C({n},{f}) = {subsets:,} subsets x {per_subset * 1e3:.3g} ms: est. {est:.3g} s > {args.smea_budget:g} s"
                out.append((label, None, False, note))
                continue
        out.append((label, make(), False, ""))
    nnm_gib = n * n * d * G.element_size() / 2**30
    for label, (make, inplace) in pres.items():
        if label == "nnm+mean" and nnm_gib > args.byzfl_nnm_gib:
            out.append((label, None, False, f"skipped: ByzFL's NNM materialises n x n x d ({nnm_gib:.1f} GiB)"))
            continue
        pre = make()
        out.append((label, (lambda p: lambda X: avg(p(X)))(pre), inplace, ""))
    return out


def byzfl_worker(args) -> int:
    """Inside the ByzFL venv: time ByzFL's rules on the batch of each (n, d); write the rows to ``--json``."""
    install_torchvision_stub()
    import byzfl

    torch.manual_seed(args.seed)  # ByzFL's CAF / SMEA draw their power-iteration start from the global stream
    only = set(args.rules) if args.rules else None
    device = torch.device("cpu")
    rows, sums = [], {}
    for n in args.n:
        f = default_f(n)
        for d in [int(x) for x in args.d]:
            G = make_batch(n, d, args.seed)
            sums[f"{n},{d}"] = checksum(G)
            for label, fn, inplace, note in byzfl_candidates(n, f, d, G, args):
                if only and label not in only:
                    continue
                row = dict(impl="byzfl", rule=label, n=n, d=d, f=f, ms=None, ratio=None, calls=0, note=note)
                if fn is not None:
                    try:
                        with torch.no_grad():
                            prep = (lambda G=G: G.clone()) if inplace else (lambda G=G: G)
                            sec, calls = time_call(fn, device, args.repeats, prep, args.long)
                        row.update(ms=sec * 1e3, calls=calls)
                        print(f"  n={n:4d} d={d:>9d} f={f:3d} byzfl:{label:<16s} {sec * 1e3:10.2f} ms", file=sys.stderr, flush=True)
                    except Exception as e:
                        row["note"] = f"error: {type(e).__name__}: {str(e)[:300]}"
                        print(f"  n={n:4d} d={d:>9d} f={f:3d} byzfl:{label:<16s} {row['note']}", file=sys.stderr, flush=True)
                rows.append(row)
            del G
    version = getattr(byzfl, "__version__", None) or _dist_version("byzfl")
    meta = dict(byzfl=version, torch=torch.__version__, threads=torch.get_num_threads())
    args.json.write_text(json.dumps(dict(meta=meta, checksums=sums, results=rows)))
    return 0


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def run_byzfl(n: int, d: int, G, args, rules: list[str] | None) -> tuple[list[dict], dict]:
    """Run the ByzFL worker for one (n, d) in the ByzFL venv; its rows, tagged, and its meta."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "byzfl.json"
        cmd = [args.byzfl_python, str(SCRIPT), "--byzfl-worker", "--n", str(n), "--d", str(d)]
        cmd += ["--seed", str(args.seed), "--repeats", str(args.repeats), "--long", str(args.long), "--json", str(out)]
        cmd += ["--smea-budget", str(args.smea_budget), "--byzfl-nnm-gib", str(args.byzfl_nnm_gib)]
        if rules:
            cmd += ["--rules", *rules]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(cmd, env=env, cwd=str(ROOT))
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"ByzFL worker failed (exit {proc.returncode}): {' '.join(cmd)}")
        data = json.loads(out.read_text())
    theirs, mine = data["checksums"][f"{n},{d}"], checksum(G)
    if theirs != mine:
        raise RuntimeError(f"ByzFL worker built a different batch (sum {theirs!r} != {mine!r}): not the same torch?")
    return data["results"], data["meta"]
