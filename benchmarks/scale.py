r"""Cross-device scale: rounds per second and peak memory of the simulator from n = 10 to n = 1,000 workers (issue 19).

ByzFL's workload (MNIST, its ``fc_mnist`` 784-100-10 ReLU, d = 79,510, batch 32 per worker, SGD lr 0.1, no
momentum, no evaluation), ``f = n // 10`` Byzantine workers sending ``alie`` (its default ``z``, from n and f),
against two rules: ``trimmed_mean`` (one sort of ``G`` along the workers) and NNM + Krum
(``aggregator.pre = ["nnm"]``, ``krum``: both through the n x n Gram matrix, never an n x n x d tensor).
The memory per worker must stay flat (no n x n x d tensor anywhere); the time per worker stays flat for the
trimmed mean and grows with n for NNM + Krum, whose Gram matrices and mixing are O(n^2 d) operations.

Each (rule, n) cell runs in a fresh child process (this script with ``--child``), so its peak memory is its
own: the child builds the simulator as ``benchmarks/end_to_end.py`` does (``config.load`` with overrides,
``engine.make_simulator``), reads its RSS (``VmRSS``, the baseline: data, model, no round yet), runs 2
warm-up rounds and then ``--rounds`` timed rounds of ``Simulator.step`` (at n > 100: ``max(3, rounds * 100
// n)``), and reports rounds/s and the peak RSS (``getrusage`` ``ru_maxrss``, the whole process's life,
which at small n is the build's: loading MNIST). The rounds' own peak is ``VmHWM`` after a reset of it
(``/proc/self/clear_refs``) once the simulator is built; "over the baseline" is that peak minus the
baseline. A child that dies (out of memory, killed) is recorded and the grid goes on.

The rounds' peak is then fitted as ``a + b n`` (least squares over the measured n, per rule) and the largest
n whose predicted peak fits in ``--budget-gib`` (24) is printed: an extrapolation of the fit, not a
measurement. The n x n matrices of NNM + Krum (Gram, distances, sorts, top-k indices) grow as n^2, too
little at n <= 1000 for the fit to see: their peak (``NN_BYTES``, measured on the rule alone at larger n)
is added to the fit, and the sizes of ``G`` (n x d float32) and of one n x n matrix at that n are printed.

Usage (from the repository root)::

    .venv/bin/python benchmarks/scale.py --data-dir ../shared/data/mnist \
        --json benchmarks/results-scale-cpu.json --plot benchmarks/scale-cpu.png
    .venv/bin/python benchmarks/scale.py --quick           # n = 10, 30, 3 rounds: a smoke check
    .venv/bin/python benchmarks/scale.py --report benchmarks/results-scale-cpu.json --plot benchmarks/scale-cpu.png

Threads: ``--threads`` in every child (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RULES = {"trimmed_mean": {"name": "trimmed_mean"}, "nnm+krum": {"name": "krum", "pre": ["nnm"]}}
D = 79_510  # fc_mnist
WARMUP = 2
MIB = 1 << 20
# Peak bytes x n^2 of the rule's n x n matrices (Gram, distances, sorts, top-k indices), which the fit over
# n <= 1000 cannot see: VmHWM of the rule alone on Gaussian batches, n = 4000 and 6000, d = 100 (26 B x n^2).
NN_BYTES = {"trimmed_mean": 0.0, "nnm+krum": 26.0}


# ---------------------------------------------------------------------------------- child: one cell
def status_kib(key: str) -> int:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def child(rule: str, n: int, rounds: int, threads: int, data_dir: str) -> dict:
    import torch

    from byzlearn import config as C
    from byzlearn.engine import make_simulator
    from end_to_end import workload  # benchmarks/ is on sys.path

    torch.set_num_threads(threads)
    f = n // 10
    over = workload(n, f, data_dir) + [f"train.threads={threads}", 'attack.name="alie"']
    over += [f"aggregator.{k}={json.dumps(v)}" for k, v in RULES[rule].items()]  # TOML literals
    sim = make_simulator(C.load(None, over))
    base_kib, build_peak_kib = status_kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:  # reset VmHWM: the high-water mark of the rounds alone
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    for _ in range(WARMUP):
        sim.step()
    t0 = time.perf_counter()
    for _ in range(rounds):
        sim.step()
    dt = (time.perf_counter() - t0) / rounds
    peak_kib = max(build_peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    rounds_peak_kib = status_kib("VmHWM") if reset else peak_kib
    return {
        "rule": rule,
        "n": n,
        "f": f,
        "d": sim.d,
        "rounds": rounds,
        "rounds_per_s": 1.0 / dt,
        "ms_per_round": 1e3 * dt,
        "ms_per_round_per_worker": 1e3 * dt / n,
        "baseline_rss_mib": base_kib / 1024,
        "build_peak_rss_mib": build_peak_kib / 1024,
        "peak_rss_mib": peak_kib / 1024,
        "rounds_peak_rss_mib": rounds_peak_kib / 1024,
        "over_baseline_mib": max(0, rounds_peak_kib - base_kib) / 1024,
        "torch": torch.__version__,
    }


# --------------------------------------------------------------------------------- parent: the grid
def run_cell(rule: str, n: int, rounds: int, threads: int, data_dir: str, timeout: float | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", rule, str(n), str(rounds), str(threads), data_dir]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"rule": rule, "n": n, "error": f"timed out after {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        why = f"killed by signal {-p.returncode} (out of memory?)" if p.returncode < 0 else f"exit {p.returncode}"
        return {"rule": rule, "n": n, "error": why, "stderr": p.stderr[-2000:]}
    return dict(json.loads(lines[-1]), wall_s=time.perf_counter() - t0)


def fit(rows: list[dict], budget_gib: float) -> dict:
    """Per rule: the least-squares ``rounds' peak MiB = a + b n`` and the largest n it predicts within the budget,
    alone and with the rule's n x n matrices (``NN_BYTES`` x n^2) added."""
    out = {}
    for rule in RULES:
        pts = [(r["n"], r["rounds_peak_rss_mib"]) for r in rows if r["rule"] == rule and "error" not in r]
        if len(pts) < 2:
            continue
        k = len(pts)
        mx, my = sum(p[0] for p in pts) / k, sum(p[1] for p in pts) / k
        sxx = sum((p[0] - mx) ** 2 for p in pts)
        b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx > 0 else 0.0
        a, room, c = my - b * mx, budget_gib * 1024 - my + b * mx, NN_BYTES[rule] / MIB
        linear = int(room / b) if b > 0 else None
        quad = int((-b + (b * b + 4 * c * room) ** 0.5) / (2 * c)) if c > 0 else linear
        out[rule] = {"a_mib": a, "b_mib_per_worker": b, "nn_bytes": NN_BYTES[rule], "budget_gib": budget_gib}
        out[rule].update(n_max_linear=linear, n_max=quad)
    return out


def report(res: dict) -> None:
    print(f"machine: {res['machine']}\n")
    print("| rule | n | f | rounds/s | ms/round | ms per worker | peak RSS MiB | RSS over the baseline MiB | MiB per worker |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        if "error" in r:
            print(f"| {r['rule']} | {r['n']} | {r['n'] // 10} | {r['error']} | | | | | |")
            continue
        print(
            f"| {r['rule']} | {r['n']} | {r['f']} | {r['rounds_per_s']:.2f} | {r['ms_per_round']:.1f} | "
            f"{r['ms_per_round_per_worker']:.2f} | {r['peak_rss_mib']:.0f} | {r['over_baseline_mib']:.0f} | "
            f"{r['over_baseline_mib'] / r['n']:.2f} |"
        )
    print()
    for rule, ft in res["fit"].items():
        a, b, n_max = ft["a_mib"], ft["b_mib_per_worker"], ft["n_max"]
        print(f"{rule}: peak RSS of the rounds ~ {a:.0f} MiB + {b:.3f} MiB x n (least squares over the measured n)")
        if n_max is None:
            print("  no growth with n measured: no bound on n from this fit")
            continue
        nn, size = "", f"G (n x d float32) is {n_max * D * 4 / 2**30:.1f} GiB"
        if ft["nn_bytes"]:
            nn = f" + {ft['nn_bytes']:g} B x n^2 (its n x n matrices, NN_BYTES; the linear fit alone: ~{ft['n_max_linear']:,})"
            size += f", one n x n float32 matrix {n_max * n_max * 4 / 2**30:.2f} GiB"
        print(f"  largest n within {ft['budget_gib']:g} GiB: ~{n_max:,}, an EXTRAPOLATION of the fit{nn}, not measured; there {size}")


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for rule in RULES:
        rows = [r for r in res["rows"] if r["rule"] == rule and "error" not in r]
        ns = [r["n"] for r in rows]
        (line,) = left.plot(ns, [r["ms_per_round_per_worker"] for r in rows], "o-", label=rule)
        right.plot(ns, [r["rounds_peak_rss_mib"] for r in rows], "o-", color=line.get_color(), label=f"{rule}: peak")
        right.plot(ns, [max(r["over_baseline_mib"], 1) for r in rows], "s--", color=line.get_color(), label=f"{rule}: over the baseline")
    left.set(xscale="log", xlabel="workers n", ylabel="ms per round per worker", title=f"time per worker (d = {D:,})")
    right.set(xscale="log", yscale="log", xlabel="workers n", ylabel="RSS (MiB)", title="peak RSS of the rounds")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(res["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        rule, n, rounds, threads, data_dir = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        print(json.dumps(child(rule, n, rounds, threads, data_dir)), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    ap.add_argument("--data-dir", default=os.environ.get("BYZLEARN_DATA", str(default_dir)))
    ap.add_argument("--n", type=int, nargs="+", default=[10, 30, 100, 300, 1000], help="worker counts")
    ap.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES))
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds per cell (n > 100: max(3, rounds * 100 // n))")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-gib", type=float, default=24.0)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per cell (default: none)")
    ap.add_argument("--quick", action="store_true", help="n = 10, 30, 3 rounds: a smoke check")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="write a PNG here (time per worker and peak RSS against n)")
    ap.add_argument("--report", metavar="JSON", help="print (and plot) saved results instead of measuring")
    args = ap.parse_args()
    if args.report:
        res = json.loads(Path(args.report).read_text())
    else:
        import torch

        if args.quick:
            args.n, args.rounds = [10, 30], 3
        data_dir = str(Path(args.data_dir).resolve())
        res = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads per process",
            "command": "python " + " ".join(sys.argv),
            "rows": [],
        }
        for rule in args.rules:
            for n in args.n:
                rounds = args.rounds if n <= 100 else max(3, args.rounds * 100 // n)
                row = run_cell(rule, n, rounds, args.threads, data_dir, args.timeout)
                res["rows"].append(row)
                shown = row.get("error") or f"{row['rounds_per_s']:.2f} rounds/s, peak {row['peak_rss_mib']:.0f} MiB"
                print(f"[{rule} n={n}] {shown}", file=sys.stderr, flush=True)
        res["fit"] = fit(res["rows"], args.budget_gib)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    report(res)
    if args.plot:
        plot(res, args.plot)


if __name__ == "__main__":
    main()
