"""The robustness matrix: rules x attacks x Byzantine counts x heterogeneity, one run per cell.

A matrix config is a run config (the base of every cell) plus a ``[matrix]`` section::

    [matrix]
    aggregators = ["mean", "median", {name = "krum", pre = ["nnm"]}]
    attacks     = ["none", "sign_flip", {name = "alie"}]
    byzantine   = [3]                                   # workers.byzantine values
    data        = [{partition = "iid"}, {partition = "dirichlet", alpha = 0.3}]   # heterogeneity levels
    seeds       = [0]
    momentum    = [0.0, 0.9]                            # workers.momentum levels (optional)
    honest      = 10                                    # optional: workers.n = honest + f in every cell

Each cell is an ordinary run folder under ``OUT/cells/``; a cell whose ``summary.json`` exists is not
run again, so an interrupted matrix resumes where it stopped (and a killed cell resumes from its
checkpoint). Results: ``results.csv``, ``results.json`` (one row per cell), ``results.md`` and
``heatmap.png`` (final test accuracy).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import config as config_mod
from ..registry import ConfigError

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models.user import ModelSpec

MATRIX_KEYS = {"aggregators", "attacks", "byzantine", "data", "seeds", "momentum", "honest"}


@dataclass
class Cell:
    method: str
    attack: str
    setting: dict[str, Any]
    raw: dict[str, Any]  # the cell's full raw config

    @property
    def slug(self) -> str:
        s = self.setting
        parts = [self.method, self.attack, f"f{s['byzantine']}", s["heterogeneity"], f"seed{s['seed']}"]
        if s.get("momentum"):  # worker momentum (folders without it are the momentum-free cells)
            parts.append(f"m{s['momentum']}")
        return "__".join(p.replace("/", "-").replace(" ", "") for p in parts)


def _spec(item: Any, what: str) -> dict[str, Any]:
    if isinstance(item, str):
        return {"name": item}
    if isinstance(item, dict) and "name" in item:
        return dict(item)
    raise ConfigError(f"matrix.{what} entries are names or tables with a name, got {item!r}")


def _label(spec: dict[str, Any]) -> str:
    pre = [p if isinstance(p, str) else p["name"] for p in spec.get("pre", [])]
    extra = [f"{k}={v}" for k, v in spec.items() if k not in ("name", "pre")]
    return "+".join(pre + [spec["name"]]) + (f"({','.join(extra)})" if extra else "")


def _het_label(d: dict[str, Any]) -> str:
    if not d:
        return "base"
    p = d.get("partition", "iid")
    if p == "dirichlet" and "alpha" in d:
        return f"dirichlet{d['alpha']}"
    if p == "labels" and "labels_per_worker" in d:
        return f"labels{d['labels_per_worker']}"
    if p == "gamma_similarity" and "gamma" in d:
        return f"gamma{d['gamma']}"
    return p


def expand(raw: dict[str, Any], own_data: bool = False, own_model: bool = False) -> list[Cell]:
    """The cells of a matrix config (checked: every cell's config must be valid; ``own_data`` / ``own_model``: the
    cells get a data set / model object, ``engine.validate``)."""
    from ..engine.validate import validate

    raw = {k: dict(v) for k, v in raw.items()}
    m = raw.pop("matrix", {})
    unknown = set(m) - MATRIX_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) matrix.{', matrix.'.join(sorted(unknown))}; allowed: {', '.join(sorted(MATRIX_KEYS))}")
    base = config_mod.from_dict(raw)
    aggs = [_spec(a, "aggregators") for a in m.get("aggregators", [base.aggregator])]
    attacks = [_spec(a, "attacks") for a in m.get("attacks", [base.attack])]
    fs = m.get("byzantine", [base.workers.byzantine])
    hets = m.get("data", [{}])
    seeds = m.get("seeds", [base.train.seed])
    honest = m.get("honest")  # a fixed number of honest workers: workers.n = honest + f (ByzFL's benchmark)
    if honest is not None and (not isinstance(honest, int) or isinstance(honest, bool) or honest < 1):
        raise ConfigError(f"matrix.honest must be a positive integer (workers.n = honest + f in each cell), got {honest!r}")
    moms = m.get("momentum", [None])  # worker momentum levels (None: the base config's)
    if not isinstance(moms, list) or not moms or any(b is not None and not isinstance(b, (int, float)) for b in moms):
        raise ConfigError(f"matrix.momentum must be a list of workers.momentum values, e.g. [0.0, 0.9]; got {moms!r}")
    cells = []
    for het, mom in ((h, b) for h in hets for b in moms):
        for f in fs:
            for attack in attacks if f > 0 else [{"name": "none"}]:  # with no Byzantine worker, no attack
                for agg in aggs:
                    for seed in seeds:
                        cell_raw = {k: dict(v) for k, v in raw.items()}
                        cell_raw["aggregator"] = dict(agg)
                        cell_raw["attack"] = dict(attack)
                        cell_raw.setdefault("workers", {})["byzantine"] = f
                        if honest is not None:
                            cell_raw["workers"]["n"] = honest + f
                        cell_raw.setdefault("data", {}).update(het)
                        cell_raw.setdefault("train", {})["seed"] = seed
                        if mom is not None:
                            cell_raw.setdefault("workers", {})["momentum"] = float(mom)
                        cfg = config_mod.from_dict(cell_raw)
                        validate(cfg, own_data=own_data, own_model=own_model)
                        setting = {
                            "attack": _label(attack),
                            "byzantine": f,
                            "workers": cfg.workers.n,
                            "heterogeneity": _het_label(het),
                            "partition": cfg.data.partition,
                            "data": cfg.data.name,
                            "model": cfg.model.name,
                            "seed": seed,
                        }
                        if cfg.data.partition == "dirichlet":
                            setting["alpha"] = cfg.data.alpha
                        if cfg.data.partition == "gamma_similarity":
                            setting["gamma"] = cfg.data.gamma
                        if mom is not None:
                            setting["momentum"] = cfg.workers.momentum
                        cells.append(Cell(_label(agg), _label(attack), setting, cell_raw))
    return cells


_DATA_CACHE: dict[tuple, Any] = {}


def _run_cell(
    cell_raw: dict[str, Any], out: str, threads: int, dataset: Dataset | None = None, model: ModelSpec | None = None
) -> dict[str, Any]:
    from ..data import load_dataset
    from ..engine import make_simulator
    from .runner import CHECKPOINT, Run

    if threads:
        torch.set_num_threads(threads)
    cfg = config_mod.from_dict(cell_raw)
    if dataset is None:
        key = (cfg.data.name, cfg.data.data_dir)
        if key not in _DATA_CACHE:
            _DATA_CACHE[key] = load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download)
    own = dataset is not None or model is not None
    if (Path(out) / CHECKPOINT).exists():
        run = Run.resume(out, engine=(lambda c: make_simulator(c, dataset, model)) if own else None)
    else:
        Path(out).mkdir(parents=True, exist_ok=True)
        run = Run(cfg, out, make_simulator(cfg, dataset=_DATA_CACHE[key] if dataset is None else dataset, model=model))
        (Path(out) / "config.toml").write_text(cfg.to_toml())
        (Path(out) / "metrics.jsonl").write_text("")
    summary = run.execute(progress=False)
    assert summary is not None
    return summary


def run_cells(
    cells: list[tuple[dict[str, Any], Path]],
    jobs: int = 1,
    progress: bool | None = None,
    desc: str = "matrix",
    dataset: Dataset | None = None,
    model: ModelSpec | None = None,
) -> None:
    """Run every (raw config, run folder) pair whose folder has no ``summary.json`` yet (``jobs``
    single-threaded processes at once); a killed cell resumes from its checkpoint. With a user's
    ``dataset`` / ``model`` object (``make_simulator``) the cells run one by one in this process."""
    from tqdm import tqdm

    todo = [(r, d) for r, d in cells if not (Path(d) / "summary.json").exists()]
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), disable=None if progress is None else not progress, unit="cell", desc=desc)
    own = dataset is not None or model is not None
    threads = 1 if jobs > 1 and not own else 0
    try:
        if jobs > 1 and len(todo) > 1 and not own:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(_run_cell, r, str(d), threads) for r, d in todo]
                for fut in futures:
                    fut.result()
                    bar.update(1)
        else:
            extra = (dataset, model) if own else ()  # registered cells keep the three-argument call
            for r, d in todo:
                _run_cell(r, str(d), threads, *extra)
                bar.update(1)
    finally:
        bar.close()


def run_matrix(
    raw: dict[str, Any],
    out: str | Path,
    jobs: int = 1,
    progress: bool | None = None,
    command: str | None = None,
    dataset: Dataset | None = None,
    model: ModelSpec | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not finished yet (``jobs`` processes at once; in this process with a user's ``dataset`` /
    ``model`` object, ``run_cells``) and write the result files."""
    out = Path(out)
    cells = expand(raw, own_data=dataset is not None, own_model=model is not None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.toml").write_text(__import__("tomli_w").dumps(raw))
    t0 = time.perf_counter()
    run_cells([(c.raw, out / "cells" / c.slug) for c in cells], jobs, progress, "matrix", dataset, model)
    rows = []
    for c in cells:
        s = json.loads((out / "cells" / c.slug / "summary.json").read_text())
        rows.append(
            {
                "method": c.method,
                "setting": c.setting,
                "final_test_accuracy": s["final_test_accuracy"],
                "best_test_accuracy": s["best_test_accuracy"],
                "wall_time": s["wall_time"],
                "rounds": s["rounds"],
                "run": f"cells/{c.slug}",
            }
        )
    write_results(rows, out, time.perf_counter() - t0, command)
    return rows


def _column_labels(rows: list[dict[str, Any]]) -> list[str]:
    """A column label per row: attack and f, plus heterogeneity and seed when they vary."""
    hets = len({r["setting"]["heterogeneity"] for r in rows}) > 1
    seeds = len({r["setting"]["seed"] for r in rows}) > 1
    moms = len({r["setting"].get("momentum", 0.0) for r in rows}) > 1
    labels = []
    for r in rows:
        s = r["setting"]
        labels.append(
            f"{s['attack']} f={s['byzantine']}"
            + (f" {s['heterogeneity']}" if hets else "")
            + (f" m={s.get('momentum', 0.0)}" if moms else "")
            + (f" s{s['seed']}" if seeds else "")
        )
    return labels


def write_results(rows: list[dict[str, Any]], out: Path, wall: float, command: str | None = None) -> None:
    """``results.csv``, ``results.json``, ``results.md`` and ``heatmap.png`` of final test accuracy."""
    labels = _column_labels(rows)
    cols = list(dict.fromkeys(labels))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    grid = {(r["method"], c): r for r, c in zip(rows, labels)}
    clean = rows
    (out / "results.json").write_text(json.dumps(clean, indent=1) + "\n")
    with open(out / "results.csv", "w", newline="") as fh:
        keys = sorted({k for r in clean for k in r["setting"]})
        w = csv.writer(fh)
        w.writerow(["method", *keys, "final_test_accuracy", "best_test_accuracy", "wall_time"])
        for r in clean:
            w.writerow(
                [r["method"], *[r["setting"].get(k, "") for k in keys], r["final_test_accuracy"], r["best_test_accuracy"], r["wall_time"]]
            )
    lines = ["| rule | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in methods:
        cells = [f"{100 * grid[(m, c)]['final_test_accuracy']:.1f}" if (m, c) in grid else "" for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    _heatmap(methods, cols, grid, out / "heatmap.png")
    cell_time = sum(r["wall_time"] for r in rows)
    meta = (
        f"{len(rows)} cells; wall time of this invocation {wall:.1f} s (cells run now; finished cells are "
        f"skipped), {cell_time:.0f} s of training summed over all cells; machine {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}."
    )
    cmd = f"Command: `{command}`\n\n" if command else ""
    worst = worst_attack_table(rows)
    (out / "results.md").write_text(
        "# Robustness matrix\n\nFinal test accuracy (%) per rule (rows) and attack / Byzantine count (columns); "
        f"the config is `matrix.toml`, one run folder per cell under `cells/`.\n\n{cmd}{worst}{table}\n\n{meta}\n\n"
        "![heatmap](heatmap.png)\n"
    )


def _setting_key(s: dict[str, Any]) -> str:
    return f"{s['heterogeneity']}, m={s.get('momentum', 0.0)}, f={s['byzantine']}, seed {s['seed']}"


def worst_attacks(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, str]]:
    """``{(rule, setting): (lowest final accuracy, attack)}`` over the attacks of each setting (heterogeneity,
    momentum, Byzantine count, seed), ``none`` excluded: the number a user looks for."""
    worst: dict[tuple[str, str], tuple[float, str]] = {}
    for r in rows:
        s = r["setting"]
        if s["attack"] == "none" or s["byzantine"] == 0:
            continue
        key = (r["method"], _setting_key(s))
        acc = r["final_test_accuracy"]
        if key not in worst or acc < worst[key][0]:
            worst[key] = (acc, s["attack"])
    return worst


def worst_attack_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per rule, its worst attack in each setting (final test accuracy %, the attack in brackets), and
    its accuracy without attack beside it (``/ none``) when the matrix has that cell; empty without attacks."""
    worst = worst_attacks(rows)
    if not worst:
        return ""
    clean = {(r["method"], _setting_key(r["setting"])): r["final_test_accuracy"] for r in rows if r["setting"]["attack"] == "none"}
    settings = list(dict.fromkeys(k[1] for k in worst))
    methods = list(dict.fromkeys(k[0] for k in worst))
    lines = ["| rule | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        cells = []
        for st in settings:
            if (m, st) not in worst:
                cells.append("")
                continue
            acc, attack = worst[(m, st)]
            base = f" / {100 * clean[(m, st)]:.1f}" if (m, st) in clean else ""
            cells.append(f"{100 * acc:.1f} ({attack}){base}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    head = (
        "## Worst attack per rule\n\nFinal test accuracy (%) under the strongest attack of each setting, which is named"
        ", then (after the slash) the same rule without attack.\n\n"
    )
    return head + "\n".join(lines) + "\n\n## Every cell\n\n"


def _heatmap(
    methods: list[str],
    cols: list[str],
    grid: dict,
    path: Path,
    key: str = "final_test_accuracy",
    label: str = "final test accuracy (%)",
    title: str = "robustness matrix",
    texts: dict | None = None,
    row_height: float = 0.45,
) -> None:
    """Rows ``methods`` x columns ``cols`` of ``100 * grid[(row, col)][key]``; ``texts[(row, col)]``
    replaces a cell's printed number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    vals = np.full((len(methods), len(cols)), np.nan)
    for i, m in enumerate(methods):
        for j, c in enumerate(cols):
            if (m, c) in grid:
                vals[i, j] = 100 * grid[(m, c)][key]
    fig, ax = plt.subplots(figsize=(1.3 + 1.15 * len(cols), 1.0 + row_height * len(methods)))
    im = ax.imshow(vals, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    for i in range(len(methods)):
        for j in range(len(cols)):
            if texts and (methods[i], cols[j]) in texts:
                ax.text(j, i, texts[(methods[i], cols[j])], ha="center", va="center", fontsize=7)
            elif not np.isnan(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_matrix_config(path: str | Path | None, overrides: list[str], sections: tuple[str, ...] = ("matrix",)) -> dict[str, Any]:
    """A matrix config's raw dict; ``sections`` (``[matrix]``, and ``[tune]`` for byzlearn tune) are
    kept apart from the run config and take ``--set SECTION.KEY=VALUE`` overrides too."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        raw = tomllib.loads(Path(path).read_text())
    extra = {name: raw.pop(name, {}) for name in sections}
    raw = config_mod.apply_overrides(raw, [o for o in overrides if o.split(".", 1)[0] not in sections])
    for o in overrides:
        name = o.split(".", 1)[0]
        if name in sections:
            if "=" not in o:
                raise ConfigError(f"--set expects section.key=value (e.g. matrix.seeds=[0, 1]), got {o!r}")
            key, text = o[len(name) + 1 :].split("=", 1)
            extra[name][key] = config_mod.parse_value(text)
    raw.update(extra)
    return raw
