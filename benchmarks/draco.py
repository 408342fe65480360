"""Time DRACO's decoders against ``mean`` and ``geometric_median`` on the same machine, same run.

n = 45 workers, s = 5 adversaries (constant vector 240, at random workers), d = 1e6 by default.
Inputs: the robust rules get ``G: Tensor[n, d]`` float32 Gaussian gradients (what the workers send
without coding); the repetition decoder gets the group sums (float32, groups of 11, the last of 12);
the cyclic decoder gets the encoded messages ``Tensor[n, 2d]`` float64 (real and imaginary parts),
decoded in complex128/float64 with two random projections. One warm-up call, then the median of
``--repeats`` calls; the table gives each time as a ratio to ``mean`` and to ``geometric_median``.
Encoding (a worker-side cost) is timed too, for all n workers together.

Usage::

    .venv/bin/python benchmarks/draco.py                 # n=45, s=5, d=1e6
    .venv/bin/python benchmarks/draco.py --d 100000 --repeats 3 --json out.json
"""

import argparse
import json
import sys
from pathlib import Path

import torch

try:
    from byzlearn.aggregators import build_aggregator
    from byzlearn.coding import CyclicCode, repetition_groups
    from byzlearn.coding import repetition as rep
    from byzlearn.timing import median_time
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from byzlearn.aggregators import build_aggregator
    from byzlearn.coding import CyclicCode, repetition_groups
    from byzlearn.coding import repetition as rep
    from byzlearn.timing import median_time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=45)
    ap.add_argument("--s", type=int, default=5)
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=str, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    n, s, d = a.n, a.s, a.d
    g = torch.Generator().manual_seed(0)
    G = torch.randn(n, d, generator=g)
    bad = torch.randperm(n, generator=g)[:s]
    res = {}
    res["mean"] = median_time(lambda: build_aggregator({"name": "mean"}, s)(G), a.repeats)
    gm = build_aggregator({"name": "geometric_median"}, s)
    Gb = G.clone()
    Gb[bad] = 240.0
    res["geometric_median"] = median_time(lambda: gm(Gb), a.repeats)
    groups = repetition_groups(n, s)
    R = rep.encode(G, groups)
    R[bad] = 240.0
    res["draco_repetition decode"] = median_time(lambda R=R: rep.decode(R, groups, s), a.repeats)
    code = CyclicCode(n, s)
    del R
    res["draco_cyclic encode (all n workers)"] = median_time(lambda: code.encode(G), max(1, a.repeats // 2))
    M = code.encode(G)
    M[bad] = 240.0
    total, status, _ = code.decode(M, g)
    assert status.located == s, status
    err = float((total - G.double().sum(0)).abs().max() / G.double().sum(0).abs().max())
    res["draco_cyclic decode"] = median_time(lambda: code.decode(M, g), a.repeats)
    rows = []
    print(f"n={n}, s={s}, d={d:.0e}, torch {torch.__version__}, {torch.get_num_threads()} threads; cyclic decode max rel. error {err:.1e}")
    print("| operation | time (ms) | / mean | / geometric_median |")
    print("|---|---|---|---|")
    for k, v in res.items():
        rows.append({"op": k, "ms": 1e3 * v, "vs_mean": v / res["mean"], "vs_gm": v / res["geometric_median"]})
        print(f"| {k} | {1e3 * v:.1f} | {v / res['mean']:.2f} | {v / res['geometric_median']:.3f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"n": n, "s": s, "d": d, "rel_error": err, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
