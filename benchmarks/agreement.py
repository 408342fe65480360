"""Messages, bytes and time per averaging-agreement round as n grows (n = 4 .. 31, f = (n-1)//3).

rb_trimmed_mean (Bracha reliable broadcast of every vector + the witness step's report broadcasts)
against the O(n^3 d) cost of reliable broadcast, and a plain all-to-all round (mda/gossip: n(n-1)
messages). d = 10 000 float32 (40 kB payload). Then one node's averaging rule on its q = n - f received
vectors (n = 7 .. 31, f = (n-1)//6, the n >= 6f + 1 of MDA and MVE): MVE against MDA and the plain mean,
on f random Byzantine rows and on f copies of one far row (the degenerate input MVE merges).
Run: .venv/bin/python benchmarks/agreement.py [results.json]
"""

import json
import sys
import time

import torch

from byzlearn.aggregators.functional import mda
from byzlearn.decentralized import averaging_agreement
from byzlearn.decentralized.mve import mve_average
from byzlearn.timing import median_time

torch.set_num_threads(1)
d = 10_000
rows = []
for n in (4, 7, 10, 13, 16, 19, 25, 31):
    f = (n - 1) // 3
    X = torch.randn(n - f, d, generator=torch.Generator().manual_seed(n))
    for method in ("rb_trimmed_mean", "gossip"):
        averaging_agreement(method, X, f, 1, "alie")  # warm-up
        t = time.perf_counter()
        r = averaging_agreement(method, X, f, 3, "alie", track=False)
        secs = (time.perf_counter() - t) / 3
        msgs, byts = r.messages / 3, r.bytes / 3
        rows.append(
            {
                "n": n,
                "f": f,
                "method": method,
                "messages_per_round": msgs,
                "MB_per_round": byts / 1e6,
                "ms_per_round": secs * 1e3,
                "bytes_over_n3d": byts / (n**3 * d * 4),
            }
        )
print("| n | f | method | messages / round | MB / round | bytes / (n^3 d 4B) | ms / round (simulation) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(
        f"| {r['n']} | {r['f']} | {r['method']} | {r['messages_per_round']:,.0f} | {r['MB_per_round']:,.1f} | "
        f"{r['bytes_over_n3d']:.2f} | {r['ms_per_round']:.1f} |"
    )

rule_rows = []
for n in (7, 13, 19, 25, 31):
    f = (n - 1) // 6
    g = torch.Generator().manual_seed(n)
    honest = torch.randn(n - 2 * f, d, generator=g)
    inputs = {
        "random": torch.cat([honest, torch.randn(f, d, generator=g)]),
        "copies": torch.cat([honest, (honest.mean(0) + 100 * torch.randn(d, generator=g)).expand(f, d)]),
    }
    for kind, G in inputs.items():
        ms = {
            name: 1e3 * median_time(lambda fn=fn, G=G, f=f: fn(G, f), 3)
            for name, fn in (("mean", lambda G, f: G.mean(0)), ("mda", mda), ("mve", mve_average))
        }
        rule_rows.append(
            {
                "n": n,
                "f": f,
                "q": n - f,
                "input": kind,
                **{f"{k}_ms": v for k, v in ms.items()},
                "mve_over_mda": ms["mve"] / ms["mda"],
                "mve_over_mean": ms["mve"] / ms["mean"],
            }
        )
print("\n| n | f | q received | Byzantine rows | mean ms | mda ms | mve ms | mve / mda | mve / mean |")
print("|---|---|---|---|---:|---:|---:|---:|---:|")
for r in rule_rows:
    print(
        f"| {r['n']} | {r['f']} | {r['q']} | {r['input']} | {r['mean_ms']:.2f} | {r['mda_ms']:.1f} | {r['mve_ms']:.1f} | "
        f"{r['mve_over_mda']:.1f} | {r['mve_over_mean']:,.0f} |"
    )
if len(sys.argv) > 1:
    open(sys.argv[1], "w").write(json.dumps({"rounds": rows, "rules": rule_rows}, indent=1) + "\n")
