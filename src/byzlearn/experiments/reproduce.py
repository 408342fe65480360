"""Reproductions of the source papers' experiments: ``byzlearn reproduce NAME``.

A reproduction is a function ``(out: Path, quick: bool, data_dir: str | None) -> None`` registered
in ``REPRODUCTIONS`` from a module ``byzlearn/experiments/repro_*.py`` (found automatically). It
writes to ``out`` (default ``docs/reproductions/NAME``): ``results.md`` (table, command, machine,
wall time, comparison with the paper), ``results.json`` (a list of rows, each with ``method``,
``setting`` (a dict), ``final_test_accuracy``, ``best_test_accuracy`` and time figures where
relevant; a learned method's rows add ``"check": "spread"``), PNG figures, and ``numerics.json`` (whether the
portable kernels of ``numerics`` held, and the probe's hash). ``quick`` runs a reduced version (for smoke
tests), never committed. ``byzlearn reproduce NAME --check`` compares a re-run with the committed rows (``check``).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import platform
from pathlib import Path
from typing import Any, Callable

import torch

from ..registry import Registry
from . import numerics

REPRODUCTIONS: Registry[None] = Registry("reproduction")


def load_all() -> None:
    """Import every ``repro_*`` module of this package so that their reproductions register."""
    from .. import experiments

    for mod in pkgutil.iter_modules(experiments.__path__):
        if mod.name.startswith("repro_"):
            importlib.import_module(f"{experiments.__name__}.{mod.name}")


def machine() -> str:
    dev = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{dev}"


def write_json(rows: list[dict[str, Any]], out: Path) -> None:
    """``results.json``: one row per method and setting (checked for the required keys)."""
    for r in rows:
        missing = {"method", "setting", "final_test_accuracy", "best_test_accuracy"} - set(r)
        if missing:
            raise ValueError(f"results.json row {r!r} lacks {sorted(missing)}")
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")


def folder(name: str) -> Path:
    """Where reproduction ``name`` is committed (relative to the repository root): ``docs/reproductions/NAME``."""
    return Path("docs") / "reproductions" / name


def run(name: str, out: Path | None = None, quick: bool = False, data_dir: str | None = None) -> Path:
    """Run reproduction ``name`` into ``out`` under the portable kernels (``numerics.json`` says whether they held)."""
    saved = {k: os.environ.get(k) for k in numerics.PORTABLE}
    threads = torch.get_num_threads()
    try:
        pinned = numerics.pin()
        load_all()
        fn: Callable[..., None] = REPRODUCTIONS.get(name)
        out = out or folder(name)
        out.mkdir(parents=True, exist_ok=True)
        fn(out=out, quick=quick, data_dir=data_dir)
        (out / "numerics.json").write_text(json.dumps({**pinned, "machine": machine()}, indent=1) + "\n")
    finally:  # a caller in the same process (a test) keeps its own environment and threads
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(threads)
    return out
