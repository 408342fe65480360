"""The standard protocols' cost: robust FedAvg's batched local steps against a loop over clients, and
worker momentum against plain D-SGD, per round (end to end, ``Simulator.step``).

1. FedAvg, K local steps of every sampled client: byzlearn's ``Simulator.local_updates`` (one ``vmap``
   pass over the ``[k, d]`` parameter batch per local step) against the plain PyTorch way, a Python loop
   over clients, each loading the global weights into an ``nn.Module`` and running K steps of
   ``torch.optim.SGD`` (the same minibatches). Both produce the clients' updates ``w_start - w_end``;
   their agreement is checked (max abs difference printed). Also the whole FedAvg round (``step``:
   local steps, attack, rule, server update).
2. Worker momentum: rounds per second of ``Simulator.step`` with ``workers.momentum = 0.9`` against 0,
   same settings otherwise, interleaved in one run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/protocols.py --data-dir ../shared/data/mnist          # MNIST, fc_mnist (d = 79,510)
    .venv/bin/python benchmarks/protocols.py --quick                                  # digits, seconds
    .venv/bin/python benchmarks/protocols.py --json benchmarks/results-protocols-cpu.json

Timings are medians of ``--repeats`` calls after one warm-up, on ``torch.get_num_threads()`` threads.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from byzlearn import config as C
except ImportError:  # a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from byzlearn import config as C
from byzlearn.engine import make_simulator


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loop_over_clients(sim, idx: torch.Tensor, lr: float) -> torch.Tensor:
    """The plain PyTorch FedAvg client loop: per client, load the global model, K steps of SGD, its update."""
    module = sim.model.module
    out = []
    for c in range(idx.shape[1]):
        sim.model.load_into_module(sim.theta)
        opt = torch.optim.SGD(module.parameters(), lr=lr)
        for s in range(idx.shape[0]):
            b = idx[s, c]
            opt.zero_grad()
            F.cross_entropy(module(sim.x_train[b]), sim.y_train[b]).backward()
            opt.step()
        out.append(sim.theta - torch.cat([p.detach().reshape(-1) for p in module.parameters()]))
    return torch.stack(out)


def fedavg(base: list[str], n: int, K: int, repeats: int) -> dict:
    sim = make_simulator(
        C.load(None, base + [f"workers.n={n}", "train.algorithm=fedavg", f"fedavg.local_steps={K}", "fedavg.local_lr=0.1"])
    )
    idx = sim.draw().batches
    batched = lambda: sim.local_updates(idx)[0]  # noqa: E731
    loop = lambda: loop_over_clients(sim, idx, 0.1)  # noqa: E731
    diff = float((batched() - loop()).abs().max())
    tb, tl = [], []
    for _ in range(repeats):  # interleaved
        tb.append(median_time(batched, 1))
        tl.append(median_time(loop, 1))
    step = median_time(sim.step, repeats)
    b, lo = statistics.median(tb), statistics.median(tl)
    return {
        "n": n,
        "K": K,
        "d": sim.d,
        "batched_ms": 1e3 * b,
        "loop_ms": 1e3 * lo,
        "speedup": lo / b,
        "round_ms": 1e3 * step,
        "max_abs_diff": diff,
    }


def momentum(base: list[str], n: int, extra: list[str], repeats: int, rounds: int) -> dict:
    sims = {beta: make_simulator(C.load(None, base + [f"workers.n={n}", f"workers.momentum={beta}"] + extra)) for beta in (0.0, 0.9)}
    times: dict[float, list[float]] = {0.0: [], 0.9: []}

    def block(s):
        for _ in range(rounds):
            s.step()

    for s in sims.values():
        block(s)  # warm-up
    for _ in range(repeats):
        for beta, s in sims.items():
            t0 = time.perf_counter()
            block(s)
            times[beta].append((time.perf_counter() - t0) / rounds)
    plain, mom = statistics.median(times[0.0]), statistics.median(times[0.9])
    return {
        "n": n,
        "setting": " ".join(extra) or "mean, no attack",
        "d": sims[0.0].d,
        "plain_ms": 1e3 * plain,
        "momentum_ms": 1e3 * mom,
        "ratio": mom / plain,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--quick", action="store_true", help="digits and a small model: a smoke check")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        base, sizes, K = ["data.name=digits", "model.name=mlp20"], [10], 2
    else:
        base, sizes, K = ["data.name=mnist", f"data.data_dir={json.dumps(args.data_dir)}", "model.name=fc_mnist"], [13, 45], 5
    base = base + ["workers.batch_size=32", "train.eval_every=1000"]
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "command": "python " + " ".join(sys.argv),
        "fedavg": [],
        "momentum": [],
    }
    for n in sizes:
        r = fedavg(base, n, K, args.repeats)
        res["fedavg"].append(r)
        print(
            f"fedavg n={n} K={K} d={r['d']}: batched {r['batched_ms']:.1f} ms, loop {r['loop_ms']:.1f} ms, "
            f"{r['speedup']:.1f}x; whole round {r['round_ms']:.1f} ms (max |diff| {r['max_abs_diff']:.1e})",
            flush=True,
        )
    attacks = [[], ["workers.byzantine=3", "attack.name=alie", "aggregator.name=trimmed_mean"]]
    for n in sizes:
        for extra in attacks:
            r = momentum(base, n, extra, args.repeats, 5 if args.quick else 10)
            res["momentum"].append(r)
            print(
                f"momentum n={n} [{r['setting']}]: plain {r['plain_ms']:.2f} ms/round, momentum {r['momentum_ms']:.2f} ms/round, "
                f"{r['ratio']:.2f}x",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
