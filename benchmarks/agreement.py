"""Messages, bytes and time per averaging-agreement round as n grows (n = 4 .. 31, f = (n-1)//3).

rb_trimmed_mean (Bracha reliable broadcast of every vector + the witness step's report broadcasts)
against the O(n^3 d) cost of reliable broadcast, and a plain all-to-all round (mda/gossip: n(n-1)
messages). d = 10 000 float32 (40 kB payload). Run: .venv/bin/python benchmarks/agreement.py
"""

import json
import sys
import time

import torch

from byzlearn.decentralized import averaging_agreement

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
        rows.append({"n": n, "f": f, "method": method, "messages_per_round": msgs, "MB_per_round": byts / 1e6,
                     "ms_per_round": secs * 1e3, "bytes_over_n3d": byts / (n**3 * d * 4)})
print("| n | f | method | messages / round | MB / round | bytes / (n^3 d 4B) | ms / round (simulation) |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['n']} | {r['f']} | {r['method']} | {r['messages_per_round']:,.0f} | {r['MB_per_round']:,.1f} | {r['bytes_over_n3d']:.2f} | {r['ms_per_round']:.1f} |")
if len(sys.argv) > 1:
    open(sys.argv[1], "w").write(json.dumps(rows, indent=1) + "\n")
