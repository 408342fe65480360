"""Shared helpers of ``benchmarks/aggregators.py`` and its anchor modules (``aggregators_flower``,
``aggregators_byzfl``): the benchmark's constants, the default number of Byzantine workers
``f = max(1, floor((n - 3) / 4))``, the timing loop (one warm-up, then the median of the repeats, CUDA
synchronised), the machine-load snapshots that tell how many cores other processes kept busy, the
seeded batch with its float64 checksum (the same bits in this process and in the ByzFL worker) and the
byzlearn ``AggregationContext`` the rules are called with. It imports only the standard library and
torch at module level, so that the ByzFL worker, which runs in ByzFL's venv where byzlearn is not
importable, can use it; ``_byzlearn()`` (and so ``make_context``) imports byzlearn on call.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PRE_NAMES = ("nnm", "bucketing", "clipping", "arc")
# chains whose pre-aggregator overwrites a batch it is handed (ctx.owns_batch, as the engine does);
# they are timed on a fresh copy made outside the timed region, like ByzFL's in-place Clipping/ARC
INPLACE_PRE = ("clipping+mean", "arc+mean")
MDA_MAX_N = 25
BYZFL_PYTHON = "/work/byzfl-venv/bin/python"
TARGET_N, TARGET_D = 45, 1_000_000
SPEEDUP_5X = ("caf", "smea")  # issue 16: at least 5x ByzFL


def default_f(n: int) -> int:
    return max(1, (n - 3) // 4)


def run_meta(script: str, argv, args, t0: float, load0, versions: dict | None = None, **extra) -> dict:
    """The run's metadata the benchmarks write beside their results: the command (``script`` and its
    arguments), machine, versions (default: Python, torch, byzlearn), threads, repeats, seed, time, duration
    since ``t0``, the load averages at ``load0`` and now, then ``extra``."""
    if versions is None:
        _byzlearn()  # byzlearn importable from a checkout too
        import byzlearn

        versions = dict(python=platform.python_version(), torch=torch.__version__, byzlearn=byzlearn.__version__)
    return dict(
        command=f".venv/bin/python benchmarks/{script}" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        machine=dict(arch=platform.machine(), cpu_count=os.cpu_count(), system=platform.system()),
        versions=versions,
        threads=torch.get_num_threads(),
        repeats=args.repeats,
        seed=args.seed,
        time=time.strftime("%Y-%m-%d %H:%M:%S"),
        seconds=round(time.perf_counter() - t0, 1),
        load_average_start=[round(x, 2) for x in load0],
        load_average_end=[round(x, 2) for x in os.getloadavg()],
        **extra,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, repeats: int, prepare=None, long_s: float = 5.0) -> tuple[float, int]:
    """``(median seconds, calls)`` of ``fn(arg)`` after one warm-up; ``prepare()`` makes ``arg`` untimed.

    A warm-up longer than ``long_s`` is the measurement (``calls = 1``)."""
    arg = prepare() if prepare else None
    sync(device)
    t0 = time.perf_counter()
    fn(arg)
    sync(device)
    first = time.perf_counter() - t0
    if first > long_s:
        return first, 1
    times = []
    for _ in range(repeats):
        arg = prepare() if prepare else None
        sync(device)
        t0 = time.perf_counter()
        fn(arg)
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), repeats


def cpu_snapshot() -> tuple[float, float, float] | None:
    """``(busy CPU seconds of the whole machine, CPU seconds of this process and its waited-for children, wall)``."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # all but idle and iowait
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system, time.monotonic()


def foreign_cores(start, end) -> float | None:
    """Average number of cores other processes kept busy between two ``cpu_snapshot``s (the contention)."""
    if start is None or end is None or end[2] - start[2] < 0.5:  # /proc/stat counts 10 ms ticks: too coarse below
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


def make_batch(n: int, d: int, seed: int) -> torch.Tensor:
    """The benchmark batch: the same bits in this process and in the ByzFL worker (same torch)."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def checksum(G: torch.Tensor) -> float:
    return float(G.double().sum())


def _byzlearn():
    try:
        from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS, AggregationContext, build_aggregator
    except ImportError:  # run from a checkout without the package installed
        sys.path.insert(0, str(ROOT / "src"))
        from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS, AggregationContext, build_aggregator
    return AGGREGATORS, PREAGGREGATORS, AggregationContext, build_aggregator


def make_context(d: int, device: torch.device, seed: int = 0):
    AggregationContext = _byzlearn()[2]
    target = torch.ones(d, device=device)
    g0 = torch.randn(d, generator=torch.Generator().manual_seed(seed + 1)).to(device)  # FLTrust's server update

    def public_loss(P):
        return 0.5 * ((P - target) ** 2).sum(dim=1)

    return AggregationContext(
        params=torch.zeros(d, device=device),
        lr=0.1,
        public_loss=public_loss,
        public_update=lambda: g0,
        generator=torch.Generator(device=device).manual_seed(seed),
    )
