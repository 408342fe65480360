"""A run on disk: resolved config, metrics as they come, checkpoints, summary and plot.

Run folder layout::

    config.toml       the resolved config (every key, defaults included)
    metrics.jsonl     one line per evaluation: round, train_loss, test_loss, test_accuracy, wall_time
                      (and validation_loss, validation_accuracy with data.validation_size > 0)
    checkpoint.pt     the latest checkpoint (written atomically every train.checkpoint_every rounds)
    summary.json      final_test_accuracy, best_test_accuracy, rounds, wall_time, config_hash, ...
    curves.png        test accuracy and training loss against rounds

``run(cfg, out)`` starts a run; ``resume(out)`` continues a killed one from its checkpoint and
follows the same trajectory (every random stream is in the checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from .. import config as config_mod
from ..config import Config
from ..engine import Simulator, make_simulator
from ..registry import ConfigError
from .plots import plot_run

CONFIG, METRICS, CHECKPOINT, SUMMARY, PLOT = "config.toml", "metrics.jsonl", "checkpoint.pt", "summary.json", "curves.png"


def _clean(x: float) -> float | None:
    """JSON has no NaN/Inf: a diverged value is written as null."""
    return x if math.isfinite(x) else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _save_checkpoint(path: Path, sim: Simulator, extra: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"simulator": sim.state_dict(), **extra}, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def check_new(out: Path) -> None:
    """A new run must not overwrite a run folder."""
    if (out / CHECKPOINT).exists() or (out / SUMMARY).exists():
        raise ConfigError(f"run folder {str(out)!r} already holds a run; resume it with --resume {out} or choose another --out")


def saved_config(out: Path, device: str | None = None) -> Config:
    """The config saved in a run folder (``device`` overrides ``train.device``)."""
    if not (out / CONFIG).exists():
        raise ConfigError(f"{str(out)!r} is not a run folder (no {CONFIG}); start a run with byzlearn run")
    return config_mod.load(out / CONFIG, [f"train.device={device}"] if device else [])


class Run:
    """One experiment in its folder. ``execute`` trains until ``train.rounds`` (or ``stop_after`` rounds)."""

    def __init__(self, cfg: Config, out: str | Path, sim: Simulator | None = None,
                 engine: Callable[[Config], Any] | None = None):
        """``engine(cfg)`` builds the object that runs the rounds (default ``make_simulator``; the
        distributed runtime's server passes its own, with the same interface)."""
        self.cfg = cfg
        self.out = Path(out)
        self.sim = sim if sim is not None else (engine or make_simulator)(cfg)
        self.rows: list[dict[str, Any]] = []
        self.elapsed = 0.0  # wall time of previous sessions of this run
        self.loss_sum, self.loss_count = 0.0, 0

    @classmethod
    def create(cls, cfg: Config, out: str | Path, engine: Callable[[Config], Any] | None = None) -> "Run":
        out = Path(out)
        check_new(out)
        run = cls(cfg, out, engine=engine)  # builds (and validates) everything before the folder is written
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(cfg.to_toml())
        (out / METRICS).write_text("")
        return run

    @classmethod
    def resume(cls, out: str | Path, device: str | None = None, engine: Callable[[Config], Any] | None = None) -> "Run":
        out = Path(out)
        cfg = saved_config(out, device)
        run = cls(cfg, out, engine=engine)
        if (out / CHECKPOINT).exists():
            ckpt = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
            run.sim.load_state_dict(ckpt["simulator"])
            run.elapsed = ckpt["elapsed"]
            run.loss_sum, run.loss_count = ckpt["loss_sum"], ckpt["loss_count"]
        # metrics written after the checkpoint belong to rounds that will be computed again
        run.rows = [r for r in _read_metrics(out / METRICS) if r["round"] <= run.sim.round]
        _write_metrics(out / METRICS, run.rows)
        return run

    # ------------------------------------------------------------------------------------------------
    def _evaluate(self, wall: float) -> dict[str, Any]:
        test_loss, test_acc = self.sim.evaluate()
        row = {
            "round": self.sim.round,
            "train_loss": _clean(self.loss_sum / self.loss_count) if self.loss_count else None,
            "test_loss": _clean(test_loss),
            "test_accuracy": test_acc,
            "wall_time": round(wall, 4),
        }
        if getattr(self.sim, "has_validation", False):  # data.validation_size > 0: for model selection (byzlearn tune)
            val_loss, val_acc = self.sim.evaluate_validation()
            row["validation_loss"], row["validation_accuracy"] = _clean(val_loss), val_acc
        row.update(self.sim.extra_metrics())  # engine-specific metrics (DRACO decode status counters)
        self.loss_sum, self.loss_count = 0.0, 0
        self.rows.append(row)
        with open(self.out / METRICS, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        return row

    def execute(self, progress: bool | None = None, stop_after: int | None = None) -> dict[str, Any] | None:
        """Train to the end and return the summary (``None`` if stopped early by ``stop_after`` rounds).

        ``progress``: ``None`` shows a bar only on a terminal, ``False`` never.
        """
        t = self.cfg.train
        sim = self.sim
        start = time.perf_counter() - self.elapsed
        if sim.round == 0 and not self.rows:
            self._evaluate(0.0)
        bar = tqdm(total=t.rounds, initial=sim.round, disable=None if progress is None else not progress,
                   desc=f"{self.cfg.aggregator['name']} vs {self.cfg.attack['name']}", unit="round", leave=False)
        done_here = 0
        try:
            while sim.round < t.rounds:
                loss = sim.step()
                self.loss_sum += loss
                self.loss_count += 1
                bar.update(1)
                r = sim.round
                if r % t.eval_every == 0 or r == t.rounds:
                    row = self._evaluate(time.perf_counter() - start)
                    bar.set_postfix(acc=f"{100 * row['test_accuracy']:.1f}%")
                if r % t.checkpoint_every == 0 or r == t.rounds:
                    extra = {"elapsed": time.perf_counter() - start, "loss_sum": self.loss_sum, "loss_count": self.loss_count}
                    _save_checkpoint(self.out / CHECKPOINT, sim, extra)
                done_here += 1
                if stop_after is not None and done_here >= stop_after and sim.round < t.rounds:
                    return None
        finally:
            bar.close()
        return self._finish(time.perf_counter() - start)

    def _finish(self, wall: float) -> dict[str, Any]:
        accs = [r["test_accuracy"] for r in self.rows]
        summary = {
            "final_test_accuracy": accs[-1],
            "best_test_accuracy": max(accs),
            "final_test_loss": self.rows[-1]["test_loss"],
            "rounds": self.sim.round,
            "wall_time": round(wall, 3),
            "config_hash": self.cfg.hash(),
            "data": self.cfg.data.name,
            "model": self.cfg.model.name,
            "parameters": self.sim.d,
            "workers": self.cfg.workers.n,
            "byzantine": self.cfg.workers.byzantine,
            "attack": self.cfg.attack["name"],
            "aggregator": self.sim.aggregator.name,
            "device": str(self.sim.device),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        }
        if "validation_accuracy" in self.rows[-1]:
            vals = [r["validation_accuracy"] for r in self.rows]
            summary.update(final_validation_accuracy=vals[-1], best_validation_accuracy=max(vals))
        summary.update(self.sim.extra_metrics())
        (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        title = f"{self.cfg.data.name}/{self.cfg.model.name}: {summary['aggregator']} vs {summary['attack']} (f={summary['byzantine']}/{summary['workers']})"
        plot_run(self.rows, self.out / PLOT, title)
        return summary


def run(cfg: Config, out: str | Path, progress: bool | None = None) -> dict[str, Any]:
    """Start a run in ``out`` and train it to the end; returns the summary."""
    summary = Run.create(cfg, out).execute(progress)
    assert summary is not None
    return summary
