"""Byzantine-robust learning on your own model and data, from Python.

``simulate`` runs one experiment (what ``byzlearn run`` does) and ``grid`` a robustness matrix (``byzlearn
matrix``: rules x attacks x Byzantine counts) on an ``nn.Module`` and tensors or ``torch.utils.data`` data
sets of yours. Nothing is registered: the objects go straight to the engine (``make_simulator``), so calls
with different models or data never interfere. For your own training loop: ``byzlearn.aggregators.functional``
(the rules as functions ``Tensor[n, d] -> Tensor[d]``), ``build_aggregator`` (a rule with its
pre-aggregators, as a config section names it), ``build_attack`` and ``forge``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from . import config as config_mod
from .aggregators import build_aggregator
from .attacks import Attack, AttackContext, build_attack
from .config import Config, DataConfig, ModelConfig
from .data.base import Dataset
from .data.user import as_dataset
from .engine import make_simulator
from .engine.round import forge as _checked_forge
from .experiments.matrix import expand, run_matrix
from .experiments.runner import CHECKPOINT, Run, check_folder, preflight, saved_config
from .models.user import ModelSpec, model_label
from .registry import ConfigError

ConfigLike = Union[Config, dict, str, Path, None]
MATRIX_ARGS = ("aggregators", "attacks", "byzantine", "seeds")

__all__ = ["simulate", "grid", "as_dataset", "build_aggregator", "build_attack", "forge"]


def _raw(config: ConfigLike) -> dict[str, Any]:
    """``config`` as a raw dict of sections (a copy)."""
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.to_dict()
    if isinstance(config, (str, Path)):
        return config_mod.read_toml(config)
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a dict of sections, a byzlearn Config or a TOML file path, got {type(config).__name__}")
    for section, values in config.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config[{section!r}] must be a dict of keys (a [{section}] section), got {values!r}")
    return {k: dict(v) for k, v in config.items()}


def _label(raw: dict[str, Any], section: str, default: str) -> str | None:
    """The config's ``section.name`` when it is set to something other than the default, else ``None``."""
    name = raw.get(section, {}).get("name")
    return name if isinstance(name, str) and name != default else None


def _prepare(config: ConfigLike, model: ModelSpec | None, data: Any, num_classes: int | None) -> tuple[dict, dict, Dataset | None]:
    """The run config (raw, with ``data.name`` / ``model.name`` labelling the user's objects), its ``[matrix]``
    section and the checked data set; every problem a ``ConfigError``, before anything runs or is written."""
    raw = _raw(config)
    matrix = raw.pop("matrix", {})
    config_mod.from_dict(raw)  # sections, keys and types
    dataset = None
    if data is not None:
        dataset = as_dataset(data, num_classes, _label(raw, "data", DataConfig.name))
        raw["data"] = {**raw.get("data", {}), "name": dataset.name}
    elif num_classes is not None:
        raise ConfigError("num_classes applies to data passed in (data=...); a registered data set has its own")
    if model is not None:
        if not (isinstance(model, torch.nn.Module) or callable(model)):
            raise ConfigError(
                f"model must be an nn.Module or a factory (input_shape, num_classes) -> nn.Module, got {type(model).__name__} "
                "(a registered model is chosen by the config's model.name)"
            )
        raw["model"] = {**raw.get("model", {}), "name": _label(raw, "model", ModelConfig.name) or model_label(model)}
    return raw, matrix, dataset


def simulate(
    config: ConfigLike = None,
    model: ModelSpec | None = None,
    data: Any = None,
    *,
    out: str | Path | None = None,
    num_classes: int | None = None,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Train one run with the simulator (as ``byzlearn run``) and return its summary.

    ``config``: a dict of sections (``{"workers": {"n": 10, "byzantine": 2}, "aggregator": {"name":
    "trimmed_mean"}, ...}``, the TOML config's), a ``Config`` or a TOML path; unset keys take their defaults.
    ``model``: an ``nn.Module`` (deep-copied; its current weights are the initial model) or a factory
    ``(input_shape, num_classes) -> nn.Module`` (called under ``torch.manual_seed(train.seed)``, like a
    registered model); it must return logits ``Tensor[B, num_classes]`` and work under ``torch.func.vmap``
    (no Dropout / BatchNorm). ``None``: the registered ``model.name``. ``data``: ``(x_train, y_train,
    x_test, y_test)`` tensors or arrays, ``((x_train, y_train), (x_test, y_test))``, ``(train_dataset,
    test_dataset)`` of ``torch.utils.data`` data sets of ``(x, y)`` samples (read once into memory), or a
    ``byzlearn.data.Dataset``; float inputs used as given, integer labels in ``[0, num_classes)``
    (``num_classes`` default: largest label + 1). ``None``: the registered ``data.name``. A ``model.name`` /
    ``data.name`` set in the config (not the default) labels the objects in the summary; else the factory's or
    class's name and ``"custom"`` (or the ``Dataset``'s name).

    ``out``: the run folder (config.toml, metrics.jsonl, checkpoint.pt, summary.json, curves.png, as
    ``byzlearn run --out``); ``None``: a temporary one, deleted after. ``resume=True`` continues the run in
    ``out`` from its checkpoint (or starts it if there is none) on the same trajectory, provided the same
    config, model and data are passed again: only the config is checked (against the folder's), so
    objects that differ give a different run; ``byzlearn run --resume`` cannot resume it (it knows only
    registered names). Bad input raises ``ConfigError`` before training starts or anything is written.

    Returns the summary (``final_test_accuracy``, ``best_test_accuracy``, ``config_hash``, ...) plus
    ``metrics`` (the evaluation rows) and ``module`` (the trained model, on the run's device; ``model`` is its label).
    """
    raw, matrix, dataset = _prepare(config, model, data, num_classes)
    if matrix:
        raise ConfigError("config has a [matrix] section: use byzlearn.grid for a matrix of runs")
    cfg = config_mod.from_dict(raw)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="byzlearn-") as tmp:
            return _simulate(cfg, Path(tmp) / "run", dataset, model, False, progress)
    return _simulate(cfg, check_folder(out, "out"), dataset, model, resume, progress)


def _simulate(cfg: Config, out: Path, dataset: Dataset | None, model: ModelSpec | None, resume: bool, progress: bool) -> dict[str, Any]:
    engine = lambda c: make_simulator(c, dataset, model)  # noqa: E731 - the user's objects straight to the engine
    if resume and (out / CHECKPOINT).exists():
        saved = saved_config(out).hash()
        if saved != cfg.hash():
            raise ConfigError(
                f"run folder {str(out)!r} holds another experiment (config hash {saved}, this config {cfg.hash()}); "
                "pass the config it was started with, or another out"
            )
        run = Run.resume(out, cfg.train.device, engine)
    else:
        run = Run.create(cfg, out, engine)
    summary = run.execute(progress)
    assert summary is not None
    sim = run.sim
    sim.model.load_into_module(sim.theta)
    return {**summary, "metrics": list(run.rows), "module": sim.model.module}


def grid(
    config: ConfigLike = None,
    model: ModelSpec | None = None,
    data: Any = None,
    *,
    aggregators: list | None = None,
    attacks: list | None = None,
    byzantine: list[int] | None = None,
    seeds: list[int] | None = None,
    out: str | Path | None = None,
    num_classes: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run a robustness matrix (as ``byzlearn matrix``) on the same ``model`` and ``data``; one row per cell.

    ``config``, ``model``, ``data``, ``num_classes``: as ``simulate`` (every cell gets a fresh model: a copy
    of the module, or a factory call under the cell's seed). The cells are ``aggregators`` (names or
    sections such as ``{"name": "krum", "pre": ["nnm"]}``) x ``attacks`` x ``byzantine`` (f values; f = 0
    runs without attack) x ``seeds``; unset ones come from the config, which may also hold a ``"matrix"``
    section with the other ``byzlearn matrix`` keys (``data`` heterogeneity levels, ``momentum``,
    ``honest``); the keyword arguments take precedence over it.

    With ``out`` the matrix folder of ``byzlearn matrix --out`` is written (``results.csv``/``.json``/``.md``,
    ``heatmap.png``, one run folder per cell under ``cells/``); a second call with the same config, model and
    data skips finished cells and resumes killed ones. ``None``: a temporary folder, deleted after. The cells
    run one after another in this process (the simulator batches the workers in each round and uses torch's
    threads), so models and data need not be picklable; for parallel cells register them and use
    ``byzlearn matrix --jobs``. Bad input raises ``ConfigError`` before any cell runs or anything is written.

    Each row: ``method`` (the rule), ``setting`` (attack, byzantine, workers, heterogeneity, seed, ...),
    ``final_test_accuracy``, ``best_test_accuracy``, ``wall_time``, ``rounds`` and, with ``out``, ``run``
    (the cell's folder under ``out``).
    """
    from .cli import _check_matrix

    raw, matrix, dataset = _prepare(config, model, data, num_classes)
    if not isinstance(matrix, dict):
        raise ConfigError(f"config['matrix'] must be a dict of matrix keys, got {matrix!r}")
    for key, value in zip(MATRIX_ARGS, (aggregators, attacks, byzantine, seeds)):
        if value is not None:
            matrix = {**matrix, key: list(value) if isinstance(value, (list, tuple)) else [value]}
    raw["matrix"] = matrix
    _check_matrix(raw)
    cells = expand(raw, own_data=dataset is not None, own_model=model is not None)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="byzlearn-grid-") as tmp:
            rows = _grid(raw, cells, Path(tmp), dataset, model, progress)
        return [{k: v for k, v in r.items() if k != "run"} for r in rows]
    return _grid(raw, cells, check_folder(out, "out"), dataset, model, progress)


def _grid(raw: dict, cells: list, out: Path, dataset: Dataset | None, model: ModelSpec | None, progress: bool) -> list[dict[str, Any]]:
    preflight([(config_mod.from_dict(c.raw), out / "cells" / c.slug) for c in cells], dataset, model)
    return run_matrix(raw, out, progress=progress, dataset=dataset, model=model)


# -- pieces for your own training loop ------------------------------------------------------------------


def forge(
    attack: str | dict[str, Any] | Attack,
    honest: Tensor,
    f: int,
    *,
    own: Tensor | None = None,
    params: Tensor | None = None,
    aggregator: Any = None,
    generator: torch.Generator | None = None,
    round: int = 0,
) -> Tensor:
    """The rows ``Tensor[k <= f, d]`` the ``f`` Byzantine workers send, given the honest ones ``honest: Tensor[n - f, d]``.

    ``attack``: a name, a section dict or a built ``Attack`` (keep one across rounds for stateful attacks).
    ``own``: the Byzantine workers' true gradients ``Tensor[f, d]`` (needed by ``sign_flip``, ``none``,
    ...); ``params``: the current flat model (default zeros); ``aggregator``: the defence, for adaptive
    attacks; ``generator``: the random stream of noisy attacks (default torch's global one).
    """
    atk = attack if isinstance(attack, Attack) else build_attack(attack)
    if not isinstance(honest, Tensor) or honest.dim() != 2:
        raise ConfigError(f"honest must be the honest rows Tensor[n - f, d], got {getattr(honest, 'shape', type(honest).__name__)}")
    if not isinstance(f, int) or isinstance(f, bool) or f < 0:
        raise ConfigError(f"f = {f!r} must be an integer >= 0")
    d = honest.shape[1]
    if atk.needs_own_gradients and own is None:
        raise ConfigError(f"attack {atk.name!r} transforms the Byzantine workers' own gradients: pass own = Tensor[f, d]")
    if own is not None and tuple(own.shape) != (f, d):
        raise ConfigError(f"own must be Tensor[f, d] = {(f, d)}, got {tuple(own.shape)}")
    ctx = AttackContext(
        n=honest.shape[0] + f,
        f=f,
        round=round,
        honest=honest,
        own=own,
        params=params if params is not None else honest.new_zeros(d),
        aggregator=aggregator,
        generator=generator if generator is not None else torch.default_generator,
    )
    return _checked_forge(atk, ctx, d)
