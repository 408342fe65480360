"""Distributed runtime speed: per-round time of ``byzlearn launch`` jobs against the simulator.

For each n (workers), the same config runs in the single-process simulator (one intra-op thread,
rounds timed in-process) and as a distributed job of n + 1 processes on this machine (rank 0 the
server, ranks 1..n the workers, gloo over loopback; each process one thread). The distributed
round is split with the server's own timers (summary ``dist_*_ms``): server work (the rule, the
optimiser, framing), the slowest arrived worker's gradient computation (each worker reports its
compute time in its message), and the rest of the round: communication, i.e. moving the
parameters and gradients through gloo, the sender/receiver threads and the operating system
scheduling n + 1 processes on the machine's cores. Medians of ``--repeats`` jobs / timings.

    .venv/bin/python benchmarks/distributed.py [--data-dir ../shared/data/mnist] [--workers 4 8 16] [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from byzlearn import config as C
from byzlearn.distributed.launcher import launch
from byzlearn.engine import Simulator


def simulator_ms(overrides: list[str], rounds: int, repeats: int) -> float:
    sim = Simulator(C.load(None, overrides + ["train.threads=1"]))
    for _ in range(5):
        sim.step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(rounds):
            sim.step()
        times.append(1e3 * (time.perf_counter() - t0) / rounds)
    return statistics.median(times)


def distributed_round(overrides: list[str], rounds: int, folder: Path) -> dict[str, float]:
    code = launch(
        None,
        None,
        overrides + [f"train.eval_every={rounds}", f"train.checkpoint_every={rounds}"],
        str(folder),
        quiet=True,
        rank0_log=True,
        grace=5.0,
    )
    if code != 0:
        raise RuntimeError((folder / "logs" / "rank0.log").read_text()[-2000:])
    s = json.loads((folder / "summary.json").read_text())
    return {k: s[f"dist_{k}_ms"] for k in ("round", "wait", "worker_compute", "server")} | {"missing": s["missing_gradients"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    ap.add_argument("--data-dir", default=os.environ.get("BYZLEARN_DATA", str(default_dir)))
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(Path(__file__).with_name("results-distributed-cpu.json")))
    args = ap.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"machine: {machine}; MNIST mlp20 (d = 15,910), batch 32 per worker, mean rule, {args.rounds} rounds, median of {args.repeats}\n")
    print(
        "| workers | processes | simulator ms/round | distributed ms/round | distributed / simulator | server ms | "
        "worker compute ms | communication ms | communication share |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            overrides = [
                "data.name=mnist",
                f"data.data_dir={json.dumps(args.data_dir)}",
                "data.download=false",
                "model.name=mlp20",
                f"workers.n={n}",
                "workers.batch_size=32",
                f"train.rounds={args.rounds}",
            ]
            sim = simulator_ms(overrides, args.rounds, args.repeats)
            runs = [distributed_round(overrides, args.rounds, Path(tmp) / f"n{n}-{i}") for i in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            comm = med["round"] - med["server"] - med["worker_compute"]
            row = {
                "workers": n,
                "processes": n + 1,
                "simulator_ms": sim,
                "distributed_ms": med["round"],
                "server_ms": med["server"],
                "worker_compute_ms": med["worker_compute"],
                "communication_ms": comm,
                "communication_share": comm / med["round"],
                "wait_ms": med["wait"],
                "missing": med["missing"],
                "runs": runs,
            }
            rows.append(row)
            print(
                f"| {n} | {n + 1} | {sim:.2f} | {med['round']:.2f} | {med['round'] / sim:.1f}x | {med['server']:.2f} | "
                f"{med['worker_compute']:.2f} | {comm:.2f} | {100 * comm / med['round']:.0f}% |",
                flush=True,
            )
    Path(args.json).write_text(
        json.dumps(
            {"machine": machine, "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "repeats": args.repeats, "rows": rows}, indent=2
        )
        + "\n"
    )
    print(f"\nresults: {args.json}")


if __name__ == "__main__":
    main()
