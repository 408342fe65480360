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

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm import tqdm

from .. import config as config_mod
from ..checkpoints import load_safely
from ..config import Config
from ..data import Dataset
from ..engine import Simulator, make_simulator
from ..models.user import ModelSpec
from ..plots import plot_run
from ..registry import ConfigError

CONFIG, METRICS, CHECKPOINT, SUMMARY, PLOT = "config.toml", "metrics.jsonl", "checkpoint.pt", "summary.json", "curves.png"


def _clean(x: float) -> float | None:
    """JSON has no NaN/Inf: a diverged value is written as null."""
    return x if math.isfinite(x) else None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (``ConfigError`` naming the line if one is not a metrics row)."""
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r} cannot be read ({e}); delete it (the evaluations are lost) or restore it") from e
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{str(path)!r} line {i} is not JSON ({e}); delete that line or restore the file") from e
        if not isinstance(row, dict) or not isinstance(row.get("round"), int):
            raise ConfigError(
                f"{str(path)!r} line {i} is not a metrics row (a JSON object with an integer round); delete that line or restore the file"
            )
        rows.append(row)
    return rows


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _save_checkpoint(path: Path, sim: Simulator, extra: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"simulator": sim.state_dict(), **extra}, tmp)
    os.replace(tmp, path)  # atomic: a kill never leaves a half-written checkpoint


def check_folder(out: str | Path, flag: str = "--out") -> Path:
    """``out`` as a folder that can be created or written (``ConfigError`` naming ``flag`` if it is a file, or
    lies in one, or cannot be written)."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"lies in {str(p)!r}, which is a file"
                raise ConfigError(f"{flag} {str(out)!r} {what}, not a folder; choose another {flag}")
            if not os.access(p, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {str(out)!r}: {str(p)!r} is not writable; choose another {flag}")
            break
    return out


def check_new(out: Path) -> None:
    """A new run must not overwrite a run folder (or a file)."""
    check_folder(out)
    if (out / CHECKPOINT).exists() or (out / SUMMARY).exists():
        raise ConfigError(f"run folder {str(out)!r} already holds a run; resume it with --resume {out} or choose another --out")


def saved_config(out: Path, device: str | None = None) -> Config:
    """The config saved in a run folder (``device`` overrides ``train.device``)."""
    if not out.is_dir():
        raise ConfigError(
            f"--resume {str(out)!r}: {'no such folder' if not out.exists() else 'not a folder'}; give a run folder written by byzlearn run"
        )
    if not (out / CONFIG).is_file():
        raise ConfigError(f"{str(out)!r} is not a run folder (no {CONFIG}); start a run with byzlearn run")
    try:
        return config_mod.load(out / CONFIG, [f"train.device={device}"] if device else [])
    except ConfigError as e:
        raise ConfigError(f"{e} (in the run folder's {str(out / CONFIG)!r})") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A run's checkpoint (read safely: ``checkpoints.load_safely``); ``ConfigError`` naming the file if it is missing,
    unreadable, holds objects other than tensors and plain values, or is not a run checkpoint."""
    if not path.exists():
        raise ConfigError(
            f"{str(path.parent)!r} has no {path.name} (the run stopped before its first checkpoint, or it "
            f"was deleted): start the run again with byzlearn run {path.parent / CONFIG} --out NEW_FOLDER"
        )
    ckpt = load_safely(path, f"checkpoint {str(path)!r}", "restore it or start the run again")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("simulator"), dict) or not isinstance(ckpt["simulator"].get("round"), int):
        raise ConfigError(
            f"checkpoint {str(path)!r} is not a byzlearn run checkpoint (no simulator state); restore it or start the run again"
        )
    for key, kind in (("elapsed", (int, float)), ("loss_sum", (int, float)), ("loss_count", int)):
        if not isinstance(ckpt.get(key), kind) or isinstance(ckpt.get(key), bool):
            raise ConfigError(f"checkpoint {str(path)!r} lacks a valid {key!r}; restore it or start the run again")
    return ckpt


def finished(out: str | Path) -> dict[str, Any] | None:
    """The summary of a finished run folder (``summary.json`` for every round of its config), else ``None``."""
    out = Path(out)
    try:
        summary = json.loads((out / SUMMARY).read_text())
        return summary if summary["rounds"] >= saved_config(out).train.rounds else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Run:
    """One experiment in its folder. ``execute`` trains until ``train.rounds`` (or ``stop_after`` rounds)."""

    def __init__(self, cfg: Config, out: str | Path, sim: Simulator | None = None, engine: Callable[[Config], Any] | None = None):
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
        check_attack(cfg, run.sim)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG).write_text(cfg.to_toml())
        (out / METRICS).write_text("")
        return run

    @classmethod
    def resume(cls, out: str | Path, device: str | None = None, engine: Callable[[Config], Any] | None = None) -> "Run":
        out = Path(out)
        run = cls._restored(out, device, engine, need_checkpoint=False)
        _write_metrics(out / METRICS, run.rows)
        return run

    @classmethod
    def _restored(cls, out: Path, device: str | None, engine: Callable[[Config], Any] | None, need_checkpoint: bool) -> "Run":
        """The run of folder ``out`` at its checkpoint (from round 0 without one, unless ``need_checkpoint``); writes nothing."""
        cfg = saved_config(out, device)
        path = out / CHECKPOINT
        ckpt = load_checkpoint(path) if need_checkpoint or path.exists() else None
        rows = _read_metrics(out / METRICS)
        if ckpt is not None and not 0 <= ckpt["simulator"]["round"] <= cfg.train.rounds:
            raise ConfigError(
                f"checkpoint {str(path)!r} is at round {ckpt['simulator']['round']}, outside this run's "
                f"[0, train.rounds = {cfg.train.rounds}]; restore it or start the run again"
            )
        run = cls(cfg, out, engine=engine)
        if ckpt is not None:
            try:
                run.sim.load_state_dict(ckpt["simulator"])
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
                raise ConfigError(
                    f"checkpoint {str(path)!r} does not fit this run's config ({type(e).__name__}: {e}); restore it or start the run again"
                ) from None
            run.elapsed = ckpt["elapsed"]
            run.loss_sum, run.loss_count = ckpt["loss_sum"], ckpt["loss_count"]
        # metrics written after the checkpoint belong to rounds that will be computed again
        run.rows = [r for r in rows if r["round"] <= run.sim.round]
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
        bar = tqdm(
            total=t.rounds,
            initial=sim.round,
            disable=None if progress is None else not progress,
            desc=f"{self.cfg.aggregator['name']} vs {self.cfg.attack['name']}",
            unit="round",
            leave=False,
        )
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
        title = (
            f"{self.cfg.data.name}/{self.cfg.model.name}: {summary['aggregator']} vs {summary['attack']} "
            f"(f={summary['byzantine']}/{summary['workers']})"
        )
        plot_run(self.rows, self.out / PLOT, title)
        return summary


def check_attack(cfg: Config, engine: Any) -> None:
    """What an attack checks only when it first forges, checked on the built run instead: ALIE's default z exists for
    (n, f), and ``learned_whitebox`` faces a learned aggregator (``ConfigError`` otherwise)."""
    sim = getattr(engine, "sim", engine)  # the distributed server wraps a simulator
    attack, aggregator = getattr(sim, "attack", None), getattr(sim, "aggregator", None)
    if cfg.workers.byzantine == 0 or attack is None:
        return
    if cfg.train.algorithm != "fedavg" and hasattr(attack, "strength"):
        attack.strength(cfg.workers.n, cfg.workers.byzantine)
    if cfg.attack["name"] == "learned_whitebox":
        from ..attacks.whitebox import learned_defender

        learned_defender(aggregator)


def check_resumable(out: str | Path, device: str | None = None) -> Config:
    """What ``byzlearn run/launch --resume`` checks before anything is written: the folder's config, its checkpoint
    (required) and metrics, and that the checkpoint loads into the run's simulator (built on the CPU). Its config."""
    out = Path(out)
    cpu = lambda cfg: make_simulator(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu")))  # noqa: E731
    return Run._restored(out, device, cpu, need_checkpoint=True).cfg


def preflight(runs: Iterable[tuple[Config, Path | None]], dataset: Dataset | None = None, model: ModelSpec | None = None) -> None:
    """Build the simulator of every run whose folder (``None``: not known yet) holds no summary yet, on the CPU with
    each data set loaded once, so that a config or data error stops a matrix or a launch before anything is written.
    ``dataset`` / ``model``: the user's objects every run gets (``make_simulator``)."""
    from ..data import load_dataset
    from ..engine.validate import validate

    data: dict[tuple[Any, ...], Any] = {}
    for cfg, folder in runs:
        if folder is not None and (folder / SUMMARY).exists():
            continue
        validate(cfg, own_data=dataset is not None, own_model=model is not None)  # with its own device (built on the CPU below)
        if folder is not None:
            check_folder(folder)
        key = (cfg.data.name, cfg.data.data_dir, cfg.data.download)
        if dataset is None and key not in data:
            data[key] = load_dataset(*key)
        cpu = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device="cpu"))
        check_attack(cfg, make_simulator(cpu, dataset=data[key] if dataset is None else dataset, model=model))


def run(cfg: Config, out: str | Path, progress: bool | None = None) -> dict[str, Any]:
    """Start a run in ``out`` and train it to the end; returns the summary."""
    summary = Run.create(cfg, out).execute(progress)
    assert summary is not None
    return summary
