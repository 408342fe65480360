"""``byzlearn reproduce byzfl-benchmark``: ByzFL 0.0.11's own default benchmark, and ByzFL itself beside it.

ByzFL's ``run_benchmark`` default (``byzfl/benchmark/benchmark.py``, ``default_config``), with its
``fc_mnist`` on CPU (its default is ``cnn_mnist``, for a GPU): D-SGD with worker momentum 0.9 (ema form),
server SGD lr 0.1 with weight decay 1e-4, batch 25, 800 steps, evaluation every 50 steps; 10 honest
workers and f in {1, 2, 3, 4} Byzantine (declared f = f); ``gamma_similarity_niid`` with gamma in {1, 0.66,
0.33, 0} over the 48,000 training samples left after a 12,000-sample validation split, shards for the
honest workers only (``data.shards = "honest"``); pre-aggregators Clipping (c = 2) then NNM in front of the
trimmed mean and the geometric median; attacks sign flip (the reversed honest mean), optimal IPM and
optimal ALIE (20-evaluation line search against the defender's chain); 3 training seeds. ByzFL's
hyper-parameter step has one grid point here, and its test heatmap is the worst case over attacks of the
best seed-averaged test accuracy, which ``byzlearn tune`` computes (``experiments.tune``).

Side by side: ``benchmarks/byzfl_side.py`` runs ByzFL's own training code (``start_training``) on a subset
of the same cells in its own environment (``benchmarks/byzfl_env.sh``); its results are committed in
``byzfl_runs.json`` and, when that environment exists (``BYZLEARN_BYZFL_PYTHON``, default
``/work/byzfl-venv/bin/python``), missing runs are run first. The table puts both libraries' final and best
test accuracy (mean and min-max over seeds) and wall time per run next to each other.

Where byzlearn differs from ByzFL (said in the results, with diagnostic runs under ``diagnostics/``):
byzlearn's geometric median iterates Weiszfeld to a tolerance from the mean (ByzFL: 3 iterations from 0,
``aggregator.init = "zero"``, ``max_iter = 3``, ``nu = 0.1``, ``eps = 0``); the optimal attacks' line
search contracts two-sided (ByzFL 0.0.11 probes only above its best point: ``attack.search = "byzfl"``);
ByzFL's initial model depends on its data seed only, so its three training seeds share one initial model,
byzlearn's seeds draw their own. The optimal ALIE runs in ByzFL's direction (``mu + z sigma``,
``attack.direction = "plus"``; byzlearn's default is Baruch et al.'s ``mu - z sigma``). The grid uses
byzlearn's defaults for the first two: the benchmark measures byzlearn's rules and attacks.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .reproduce import REPRODUCTIONS, machine, write_json

FS = [1, 2, 3, 4]
GAMMAS = [1.0, 0.66, 0.33, 0.0]
SEEDS = [0, 1, 2]
PRE = [{"name": "clipping", "c": 2.0}, "nnm"]
RULES = {"TrMean": {"name": "trimmed_mean", "pre": PRE}, "GeometricMedian": {"name": "geometric_median", "pre": PRE}}
ATTACKS = {
    "SignFlipping": {"name": "sign_flip", "reference": "mean"},
    "Optimal_InnerProductManipulation": {"name": "ipm_optimal"},
    "Optimal_ALittleIsEnough": {"name": "alie_optimal", "direction": "plus"},
}
METHOD = {"TrMean": "clipping+nnm+trimmed_mean", "GeometricMedian": "clipping+nnm+geometric_median"}
ATTACK_LABEL = {
    "SignFlipping": "sign_flip(reference=mean)",
    "Optimal_InnerProductManipulation": "ipm_optimal",
    "Optimal_ALittleIsEnough": "alie_optimal(direction=plus)",
}


def config(data_dir: str | None, quick: bool) -> dict[str, Any]:
    """The tune config of the benchmark (one grid point: lr 0.1, momentum 0.9, weight decay 1e-4)."""
    steps = 40 if quick else 800
    data = {"name": "mnist", "validation_size": 12000, "shards": "honest", "partition": "gamma_similarity"}
    if data_dir:
        data["data_dir"] = data_dir
    return {
        "data": data,
        "model": {"name": "fc_mnist"},
        "workers": {"batch_size": 25, "momentum": 0.9},
        "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4},
        "train": {"rounds": steps, "eval_every": 10 if quick else 50, "checkpoint_every": steps, "threads": 1},
        "matrix": {
            "honest": 10,
            "byzantine": [1, 4] if quick else FS,
            "seeds": [0] if quick else SEEDS,
            "aggregators": list(RULES.values()),
            "attacks": list(ATTACKS.values()),
            "data": [{"partition": "gamma_similarity", "gamma": g} for g in ([1.0, 0.0] if quick else GAMMAS)],
        },
        "tune": {"lr": [0.1], "momentum": [0.9], "weight_decay": [1e-4]},
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def _run_byzfl_side(out: Path, quick: bool) -> None:
    """ByzFL's missing sign-flip runs into ``byzfl_runs.json``, when its environment is here."""
    python = os.environ.get("BYZLEARN_BYZFL_PYTHON", "/work/byzfl-venv/bin/python")
    script = Path(__file__).resolve().parents[3] / "benchmarks" / "byzfl_side.py"
    if not quick and Path(python).exists() and script.exists() and os.environ.get("BYZLEARN_BYZFL_RUN", "1") != "0":
        cmd = [python, str(script), "--cells", "*-signflip-*", "--seeds", "0,1,2", "--out", str(out / "byzfl_runs.json")]
        subprocess.run(cmd, check=False)


def _byzfl_recorded(out: Path) -> list[dict[str, Any]]:
    """The ByzFL runs recorded in ``out/byzfl_runs.json`` (none when it is absent)."""
    path = out / "byzfl_runs.json"
    return json.loads(path.read_text())["runs"] if path.exists() else []


def side_by_side(rows_cells: list[dict[str, Any]], byzfl: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One comparison per ByzFL cell: both libraries' accuracy spreads over seeds and wall times."""
    ours: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows_cells:
        s = r["setting"]
        ours.setdefault((r["method"], s["attack"], s["byzantine"], s["gamma"]), []).append(r)
    theirs: dict[tuple, list[dict[str, Any]]] = {}
    for run in byzfl:
        c = run["cell"]
        theirs.setdefault((METHOD[c["aggregator"]], ATTACK_LABEL[c["attack"]], c["f"], float(c["gamma"])), []).append(run)
    out = []
    for key, runs in theirs.items():
        mine = ours.get(key, [])
        if not mine:
            continue
        b_final = _spread([r["final_test_accuracy"] for r in mine])
        z_final = _spread([r["final_test_accuracy"] for r in runs])
        row = {
            "method": key[0],
            "attack": key[1],
            "byzantine": key[2],
            "gamma": key[3],
            "byzlearn": {
                "final": b_final,
                "best": _spread([r["best_test_accuracy"] for r in mine]),
                "wall_s": statistics.fmean(r["wall_time"] for r in mine),
                "seeds": len(mine),
            },
            "byzfl": {
                "final": z_final,
                "best": _spread([r["best_test_accuracy"] for r in runs]),
                "wall_s": statistics.fmean(r["train_time_s"] for r in runs),
                "seeds": len(runs),
            },
        }
        # within the seed spread: the ranges overlap, or the means differ by less than the wider range
        # (None: a side has one seed, so there is no spread to judge by)
        gap = abs(b_final["mean"] - z_final["mean"])
        row["overlap"] = (
            None
            if min(len(mine), len(runs)) < 2
            else (b_final["min"] <= z_final["max"] and z_final["min"] <= b_final["max"])
            or gap <= max(b_final["max"] - b_final["min"], z_final["max"] - z_final["min"])
        )
        row["difference"] = b_final["mean"] - z_final["mean"]
        row["speedup"] = row["byzfl"]["wall_s"] / row["byzlearn"]["wall_s"]
        out.append(row)
    return out


def _judged(overlap: bool | None) -> str:
    return "n/a (one seed)" if overlap is None else "yes" if overlap else "NO"


def _fmt(sp: dict[str, float]) -> str:
    return f"{100 * sp['mean']:.1f} [{100 * sp['min']:.1f}, {100 * sp['max']:.1f}]"


def _cell_rows(out: Path, folders: list[Path]) -> list[dict[str, Any]]:
    """One row per finished run (rule, attack, f, gamma, seed), read from its folder."""
    import tomllib

    from .matrix import _label

    rows = []
    for folder in folders:
        s = json.loads((folder / "summary.json").read_text())
        cfg = tomllib.loads((folder / "config.toml").read_text())
        rows.append(
            {
                "method": _label({k: v for k, v in cfg["aggregator"].items() if k in ("name", "pre")}),
                "setting": {
                    "attack": _label(cfg["attack"]),
                    "byzantine": cfg["workers"]["byzantine"],
                    "gamma": float(cfg["data"]["gamma"]),
                    "seed": cfg["train"]["seed"],
                },
                "final_test_accuracy": s["final_test_accuracy"],
                "best_test_accuracy": s["best_test_accuracy"],
                "wall_time": s["wall_time"],
                "run": str(folder.relative_to(out)),
            }
        )
    return rows


def _per_attack_table(cells: list[dict[str, Any]], attacks: list[str]) -> str:
    """byzlearn's final test accuracy per (rule, f, gamma) and each of the grid's ``attacks``: mean [min, max]
    over the seeds present ("not run" where none is)."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for c in cells:
        s = c["setting"]
        groups.setdefault((c["method"], s["byzantine"], s["gamma"]), {}).setdefault(s["attack"], []).append(c["final_test_accuracy"])
    lines = ["| rule | f | gamma | " + " | ".join(attacks) + " |", "|---|---:|---:|" + "---:|" * len(attacks)]
    for (m, f, g), per in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        vals = [f"{_fmt(_spread(per[a]))} ({len(per[a])})" if a in per else "not run" for a in attacks]
        lines.append(f"| {m} | {f} | {g} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def report(out: Path, raw: dict[str, Any], command: str, wall: float | None = None) -> list[dict[str, Any]]:
    """Write results.md / results.json / comparison.json / heatmaps from the runs present in ``out``.

    Every run of the grid that has finished is used; a run not finished yet is listed as missing, and
    the worst case of a cell is then over the attacks it has (the tables say which and how many seeds).
    ``wall``: the seconds the invocation took, said in the header when given.
    """
    import tomli_w

    from .tune import expand, select, write_tables

    combos, tcells = expand(raw, out)
    finished = [(tc.folder / "summary.json").exists() for tc in tcells]
    done = [tc for tc, ok in zip(tcells, finished) if ok]
    (out / "tune.toml").write_text(tomli_w.dumps(raw))
    tune_rows = select(combos, done) if done else []
    table, figures = write_tables(tune_rows, out) if tune_rows else ("", [])
    cells = _cell_rows(out, [tc.folder for tc in done])
    comparison = side_by_side(cells, _byzfl_recorded(out))
    write_json(tune_rows + cells, out)
    (out / "comparison.json").write_text(json.dumps(comparison, indent=1) + "\n")
    total: dict[str, int] = {}
    present: dict[str, int] = {}
    for tc, ok in zip(tcells, finished):
        a = tc.cell.attack
        total[a] = total.get(a, 0) + 1
        present[a] = present.get(a, 0) + ok
    coverage = ", ".join(f"{a} {present[a]} of {total[a]}" for a in total)
    complete = len(done) == len(tcells)
    status = (
        f"All {len(tcells)} runs of the grid are here."
        if complete
        else f"**Partial: {len(done)} of the grid's {len(tcells)} runs are here** ({coverage}); the others have not been run "
        "yet (the command runs only the missing ones). Tables below use the runs present: a cell's worst case is over the "
        "attacks it has."
    )
    lines = [
        "| rule | attack | f | gamma | byzlearn final | ByzFL final | byzlearn best | ByzFL best | within spread | "
        "byzlearn s/run | ByzFL s/run | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for c in comparison:
        b, z = c["byzlearn"], c["byzfl"]
        lines.append(
            f"| {c['method']} | {c['attack']} | {c['byzantine']} | {c['gamma']} | {_fmt(b['final'])} ({b['seeds']}) | "
            f"{_fmt(z['final'])} ({z['seeds']}) | {_fmt(b['best'])} | {_fmt(z['best'])} | {_judged(c['overlap'])} | "
            f"{b['wall_s']:.0f} | {z['wall_s']:.0f} | {c['speedup']:.1f}x |"
        )
    notes = (out / "notes.md").read_text() if (out / "notes.md").exists() else ""
    pics = "\n".join(f"![{name}]({name})" for name in sorted(figures))
    (out / "results.md").write_text(
        "# ByzFL's default benchmark, byzlearn and ByzFL side by side\n\n"
        f"Command: `{command}`; machine {machine()}"
        + ("" if wall is None else f"; wall time of this invocation {wall:.0f} s")
        + f".\n\n{status}\n\n"
        "## Side by side (final and best test accuracy %, mean [min, max] over seeds, number of seeds)\n\n"
        + ("\n".join(lines) if comparison else "No ByzFL runs in this folder (`benchmarks/byzfl_side.py` writes `byzfl_runs.json`).")
        + "\n\n"
        + notes
        + "\n## byzlearn, every run present: final test accuracy % per attack (mean [min, max], seeds)\n\n"
        + _per_attack_table(cells, list(total))
        + "\n\n## byzlearn: worst case over the attacks present (ByzFL's test heatmap)\n\n"
        + table
        + "\n\n"
        + pics
        + "\n"
    )
    print(f"byzfl-benchmark: {len(cells)} of {len(tcells)} runs, {len(comparison)} cells beside ByzFL", file=sys.stderr)
    return tune_rows + cells


@REPRODUCTIONS.register("byzfl-benchmark")
def reproduce(out: Path, quick: bool = False, data_dir: str | None = None) -> None:
    """ByzFL's default benchmark (fc_mnist, momentum 0.9, gamma-similarity, Clipping+NNM+TrMean/GM), with ByzFL beside it."""
    from .tune import run_grid

    t0 = time.perf_counter()
    raw = config(data_dir, quick)
    run_grid(raw, out, jobs=2, progress=None)
    _run_byzfl_side(out, quick)
    command = f"byzlearn reproduce byzfl-benchmark{' --quick' if quick else ''}{' --data-dir ' + data_dir if data_dir else ''}"
    report(out, raw, command, time.perf_counter() - t0)
