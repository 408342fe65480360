"""Worst-case hyper-parameter selection on validation data (ByzFL 0.0.11's ``find_best_hyperparameters``).

A tune config is a matrix config (see ``matrix``) plus a ``[tune]`` section of lists::

    [tune]
    lr           = [0.1, 0.03]     # optimizer.lr
    momentum     = [0.0, 0.9]      # workers.momentum
    weight_decay = [0.0, 1e-4]     # optimizer.weight_decay

(a missing list means the base config's value). Every combination (grid order lr x momentum x
weight_decay, nested in that order) runs every matrix cell as an ordinary, resumable run folder,
``OUT/cells/<combination>/<cell>``. For each (rule, f, heterogeneity), with V[c, a] the validation
accuracy of combination c under attack a averaged over seeds element-wise over the evaluation
points, A[c, a] = max over points, the choice is c* = argmax_c min_a A[c, a] (the first combination
wins ties, as ByzFL's strict ``>``). Test accuracy is reported at c* only and never used to choose:
the worst case over attacks of the max over points of the seed-averaged test accuracy (ByzFL's test
heatmap), of the final test accuracy, and per attack the test accuracy at the evaluation point
best on validation. Needs ``data.validation_size > 0``.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import config as config_mod
from ..registry import ConfigError
from . import matrix as M

TUNE_KEYS = {"lr": ("optimizer", "lr"), "momentum": ("workers", "momentum"), "weight_decay": ("optimizer", "weight_decay")}


@dataclass
class TuneCell:
    combo: int  # index into the grid
    cell: M.Cell
    folder: Path


def _base_value(cfg: config_mod.Config, key: str) -> float:
    if key == "momentum":
        return cfg.workers.momentum
    if key in cfg.optimizer:
        return cfg.optimizer[key]
    from ..optim import OPTIMIZERS

    name = cfg.optimizer["name"]
    param = inspect.signature(OPTIMIZERS.get(name)).parameters.get(key)
    if param is None or param.default is inspect.Parameter.empty:
        raise ConfigError(f"optimizer.name = {name!r} has no {key} key, so tune.{key} cannot be tuned; choose sgd")
    return param.default


def grid(raw: dict[str, Any]) -> list[dict[str, float]]:
    """The combinations {lr, momentum, weight_decay} of ``raw['tune']`` in grid order."""
    tune = dict(raw.get("tune", {}))
    unknown = set(tune) - set(TUNE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) tune.{', tune.'.join(sorted(unknown))}; allowed: {', '.join(TUNE_KEYS)}")
    base = config_mod.from_dict({k: v for k, v in raw.items() if k not in ("matrix", "tune")})
    lists = []
    for key in TUNE_KEYS:
        values = tune.get(key, [_base_value(base, key)])
        if not (isinstance(values, list) and values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise ConfigError(f"tune.{key} = {values!r} must be a non-empty list of numbers, e.g. [0.1, 0.01]")
        if len(set(values)) != len(values):
            raise ConfigError(f"tune.{key} = {values!r} lists a value twice")
        lists.append(values)
    return [dict(zip(TUNE_KEYS, c)) for c in itertools.product(*lists)]


def _combo_slug(c: dict[str, float]) -> str:
    return f"lr{c['lr']}_mom{c['momentum']}_wd{c['weight_decay']}"


def expand(raw: dict[str, Any], out: Path) -> tuple[list[dict[str, float]], list[TuneCell]]:
    """The grid and every (combination x matrix cell) with its run folder (all configs checked)."""
    combos = grid(raw)
    tuned = set(raw.get("tune", {}))
    cells = []
    for i, c in enumerate(combos):
        sub = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items() if k != "tune"}
        for key in tuned:  # keys not tuned stay as written, so such runs equal plain matrix runs
            section, name = TUNE_KEYS[key]
            sub.setdefault(section, {})[name] = c[key]
        for cell in M.expand(sub):
            if config_mod.from_dict(cell.raw).data.validation_size <= 0:
                raise ConfigError(
                    f"byzlearn tune selects on validation data only, but cell {cell.slug} has data.validation_size = 0; "
                    "set data.validation_size > 0 (e.g. 200 training samples held out)"
                )
            cells.append(TuneCell(i, cell, out / "cells" / _combo_slug(c) / cell.slug))
    return combos, cells


def _curves(folder: Path) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(rounds, validation accuracy, test accuracy) at a run's evaluation points."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "validation_accuracy" in r]
    if not rows or any(r["validation_accuracy"] is None or r["test_accuracy"] is None for r in rows):
        raise ConfigError(
            f"{folder / 'metrics.jsonl'} has no validation accuracy at some evaluation; was it run with data.validation_size > 0?"
        )
    return (
        [r["round"] for r in rows],
        np.array([r["validation_accuracy"] for r in rows], float),
        np.array([r["test_accuracy"] for r in rows], float),
    )


def choose(worst_val: np.ndarray) -> int:
    """argmax_c of the worst-case validation accuracies, the first one on ties (ByzFL's strict ``>``)."""
    best = 0
    for c in range(1, len(worst_val)):
        if worst_val[c] > worst_val[best]:
            best = c
    return best


def _group_key(cell: M.Cell) -> tuple[str, int, str]:
    return cell.method, cell.setting["byzantine"], cell.setting["heterogeneity"]


def select(combos: list[dict[str, float]], cells: list[TuneCell]) -> list[dict[str, Any]]:
    """One result row per (rule, f, heterogeneity): the choice c* and its test accuracies."""
    curves: dict[tuple, list] = {}  # (group, attack, combo) -> [(rounds, val, test)] over seeds
    for tc in cells:
        key = (_group_key(tc.cell), tc.cell.attack, tc.combo)
        curves.setdefault(key, []).append(_curves(tc.folder))
    groups = list(dict.fromkeys(_group_key(tc.cell) for tc in cells))
    order = {k: list(dict.fromkeys(g[i] for g in groups)) for k, i in (("m", 0), ("h", 2))}
    groups.sort(key=lambda g: (order["m"].index(g[0]), g[1], order["h"].index(g[2])))  # rule, then f, then heterogeneity
    rows = []
    for g in groups:
        attacks = list(dict.fromkeys(tc.cell.attack for tc in cells if _group_key(tc.cell) == g))
        mean: dict[tuple[int, str], tuple[list[int], np.ndarray, np.ndarray]] = {}
        for c in range(len(combos)):
            for a in attacks:
                runs = curves[(g, a, c)]
                if any(r[0] != runs[0][0] for r in runs):
                    raise ConfigError(f"{g[0]} vs {a}: the seeds' runs were evaluated at different rounds")
                mean[(c, a)] = (runs[0][0], np.mean([r[1] for r in runs], 0), np.mean([r[2] for r in runs], 0))
        best_val = np.array([[mean[(c, a)][1].max() for a in attacks] for c in range(len(combos))])
        star = choose(best_val.min(1))
        per_attack = {}
        for a in attacks:
            rounds, val, test = mean[(star, a)]
            k = int(np.argmax(val))
            per_attack[a] = {
                "best_validation_accuracy": float(val[k]),
                "best_validation_round": rounds[k],
                "test_accuracy_at_best_validation": float(test[k]),
                "best_test_accuracy": float(test.max()),
                "final_test_accuracy": float(test[-1]),
            }
        first = next(tc.cell for tc in cells if _group_key(tc.cell) == g)
        setting = {k: v for k, v in first.setting.items() if k not in ("attack", "seed")}
        setting["attacks"] = attacks
        setting["seeds"] = sorted({tc.cell.setting["seed"] for tc in cells if _group_key(tc.cell) == g})
        worst_test = min(p["best_test_accuracy"] for p in per_attack.values())
        rows.append(
            {
                "method": g[0],
                "setting": setting,
                "final_test_accuracy": min(p["final_test_accuracy"] for p in per_attack.values()),
                "best_test_accuracy": worst_test,
                "chosen": dict(combos[star]),
                "worst_case_validation_accuracy": float(best_val[star].min()),
                "worst_case_test_accuracy": worst_test,
                "worst_case_test_accuracy_at_best_validation": min(p["test_accuracy_at_best_validation"] for p in per_attack.values()),
                "attacks": per_attack,
                "grid_worst_case_validation_accuracy": [float(v) for v in best_val.min(1)],
            }
        )
    return rows


def run_tune(
    raw: dict[str, Any], out: str | Path, jobs: int = 1, progress: bool | None = None, command: str | None = None
) -> list[dict[str, Any]]:
    """Run every (combination x cell) not finished yet, choose per (rule, f, heterogeneity), write results."""
    out = Path(out)
    t0 = time.perf_counter()
    combos, cells = run_grid(raw, out, jobs, progress)
    rows = select(combos, cells)
    write_results(rows, combos, out, len(cells), time.perf_counter() - t0, command)
    return rows


def run_grid(raw: dict[str, Any], out: Path, jobs: int = 1, progress: bool | None = None) -> tuple[list[dict[str, float]], list[TuneCell]]:
    """Write ``tune.toml`` and run every (combination x cell) not finished yet; the grid and its cells."""
    combos, cells = expand(raw, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.toml").write_text(__import__("tomli_w").dumps(raw))
    M.run_cells([(tc.cell.raw, tc.folder) for tc in cells], jobs, progress, "tune")
    return combos, cells


def _het_cols(rows: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    fs = sorted({r["setting"]["byzantine"] for r in rows})
    hets = list(dict.fromkeys(r["setting"]["heterogeneity"] for r in rows))
    return fs, hets


def write_results(
    rows: list[dict[str, Any]], combos: list[dict[str, float]], out: Path, n_runs: int, wall: float, command: str | None = None
) -> None:
    """``results.json``, ``results.md``, ``table.md`` and the heatmaps (``write_tables``)."""
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    table, figures = write_tables(rows, out)
    cell_time = sum(json.loads(p.read_text())["wall_time"] for p in out.glob("cells/*/*/summary.json"))
    meta = (
        f"{len(combos)} combinations x {n_runs // len(combos)} cells = {n_runs} runs; wall time of this invocation "
        f"{wall:.1f} s (finished runs are skipped), {cell_time:.0f} s of training summed over all runs; machine "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}."
    )
    cmd = f"Command: `{command}`\n\n" if command else ""
    pics = "\n".join(f"![{f}]({f})" for f in figures)
    (out / "results.md").write_text(
        "# Hyper-parameter selection (worst case over attacks, on validation data)\n\n"
        "Per rule, Byzantine count f and heterogeneity, the combination (lr, momentum, weight decay) maximising the "
        "worst case over attacks of the best seed-averaged validation accuracy (ByzFL's `find_best_hyperparameters`); "
        "test accuracies (%) of that choice only. The config is `tune.toml`, one run folder per combination and cell "
        f"under `cells/`.\n\n{cmd}{table}\n\n{meta}\n\n{pics}\n"
    )


def write_tables(rows: list[dict[str, Any]], out: Path) -> tuple[str, list[str]]:
    """``table.md`` (one row per choice) and the heatmaps ``heatmap_<rule>.png``, ``heatmap_best.png``; returns
    the table and the figures' file names."""
    fs, hets = _het_cols(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| rule | f | heterogeneity | lr | momentum | weight decay | worst-case validation | worst-case test "
        "| worst-case final test | test at best validation (per attack) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        s, c = r["setting"], r["chosen"]
        per = ", ".join(
            f"{a} {100 * p['test_accuracy_at_best_validation']:.1f} (round {p['best_validation_round']})" for a, p in r["attacks"].items()
        )
        lines.append(
            f"| {r['method']} | {s['byzantine']} | {s['heterogeneity']} | {c['lr']:g} | {c['momentum']:g} | "
            f"{c['weight_decay']:g} | {100 * r['worst_case_validation_accuracy']:.1f} | "
            f"{100 * r['worst_case_test_accuracy']:.1f} | {100 * r['final_test_accuracy']:.1f} | {per} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    f_rows = [f"f={f}" for f in fs]
    figures = []
    for m in methods:
        grid = {(f"f={r['setting']['byzantine']}", r["setting"]["heterogeneity"]): r for r in rows if r["method"] == m}
        name = f"heatmap_{m.replace('/', '-').replace(' ', '')}.png"
        M._heatmap(
            f_rows,
            hets,
            grid,
            out / name,
            key="worst_case_test_accuracy",
            label="worst-case test acc. (%)",
            title=f"{m}\nworst case over attacks",
            row_height=1.0,
        )
        figures.append(name)
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:  # rows are in rule order: the first rule wins ties
        k = (f"f={r['setting']['byzantine']}", r["setting"]["heterogeneity"])
        if k not in best or r["worst_case_test_accuracy"] > best[k]["worst_case_test_accuracy"]:
            best[k] = r
    texts = {k: f"{r['method']}\n{100 * r['worst_case_test_accuracy']:.0f}" for k, r in best.items()}
    M._heatmap(
        f_rows,
        hets,
        best,
        out / "heatmap_best.png",
        key="worst_case_test_accuracy",
        label="worst-case test acc. (%)",
        title="best rule per cell",
        texts=texts,
        row_height=1.0,
    )
    figures.append("heatmap_best.png")
    return table, figures
