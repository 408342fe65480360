"""Meta-training configs: the four sections (``[aggregator]`` network, ``[task]``, ``[byzantine]``,
``[meta]``), their checks, the run config of one trajectory, and the network and card they define."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import Config, _check_fixed, apply_overrides, from_dict, read_toml
from ..registry import ConfigError
from .network import CoordinatewiseRNN
from .preprocess import PREPROCESS_FEATURES


@dataclass
class NetworkConfig:
    cell: Literal["lstm", "gru"] = "lstm"
    encoder: Literal["concat", "set"] = "concat"  # concat: the paper's (fixed M); set: ours (any M)
    loss_info: bool = False  # ARNN: also read each worker's loss on the public batch
    loss_memory: bool = False  # ours: also a running mean of each worker's loss feature
    memory_decay: float = 0.9  # its decay per round
    loss_logit_scale: float = 20.0  # ours (set encoder): scale of the loss features' direct path to the attention
    hidden: int = 20
    layers: int = 2
    embed: int = 16
    preprocess: Literal["seed", "floor", "log_sign"] = "seed"
    p: float = 10.0
    output: Literal["gradient", "step"] = "gradient"
    step_scale: float = 0.1
    loss_scale: float = 10.0
    probe: Literal["step", "clipped"] = "clipped"  # ARNN's trial point: theta - probe_lr * g_m (clipped to the public gradient's norm)
    probe_lr: float = 0.0  # 0: the task's server_lr
    input_clip: bool = False  # ours (ARNN): clip every worker's vector to the public gradient's norm before pre-processing


@dataclass
class TaskConfig:
    data: str = "mnist"
    data_dir: str | None = None
    model: str = "mlp20"
    workers: int = 10
    batch_size: int = 32
    partition: Literal["iid", "dirichlet", "labels"] = "iid"
    public_size: int = 1000
    public_batch: int = 16
    server_lr: float = 0.5
    steps: int = 100
    unroll: int = 20
    meta_batch: int = 128


@dataclass
class ByzantineConfig:
    counts: list = field(default_factory=lambda: [0])
    attacks: list = field(default_factory=lambda: ["none"])


@dataclass
class MetaConfig:
    trajectories: int = 100
    lr: float = 0.003
    grad_clip: float = 1.0
    seed: int = 0
    validate_every: int = 10
    validate_steps: int = 0  # rounds per validation trajectory; 0: task.steps (longer ones see late collapses)
    patience: int = 5
    threads: int = 0
    init: str = ""  # start from the weights of a trained aggregator folder (fine-tuning / curriculum); "": fresh


@dataclass
class MetaTrainConfig:
    aggregator: NetworkConfig = field(default_factory=NetworkConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: dataclasses.asdict(getattr(self, k)) for k in ("aggregator", "task", "byzantine", "meta")}


SECTIONS = {"aggregator": NetworkConfig, "task": TaskConfig, "byzantine": ByzantineConfig, "meta": MetaConfig}


def method_name(net: NetworkConfig) -> str:
    """``rnn_lstm``, ``arnn_gru``, ... (the paper's); ``set_rnn_lstm``, ``set_arnn_lstm`` for ours."""
    base = f"{'arnn' if net.loss_info else 'rnn'}_{net.cell}"
    return base if net.encoder == "concat" else f"set_{base}"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> MetaTrainConfig:
    """Read a meta-training TOML (sections aggregator, task, byzantine, meta; every key defaulted)."""
    return from_sections(apply_overrides(read_toml(path), overrides or [], sections=tuple(SECTIONS), open_defaults={}))


def from_sections(raw: dict[str, Any]) -> MetaTrainConfig:
    """Check and build a config from nested dicts (``method`` optional: the default name follows the network)."""
    raw = dict(raw)
    method = raw.pop("method", None)
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}] in a meta-training config; sections: {', '.join(SECTIONS)}")
    cfg = MetaTrainConfig(**{s: _check_fixed(s, cls, raw.get(s, {})) for s, cls in SECTIONS.items()})
    cfg.method = method or method_name(cfg.aggregator)
    _validate(cfg)
    return cfg


def _validate(cfg: MetaTrainConfig) -> None:
    t, b, m = cfg.task, cfg.byzantine, cfg.meta
    for key, value in [
        ("task.workers", t.workers),
        ("task.steps", t.steps),
        ("task.unroll", t.unroll),
        ("task.batch_size", t.batch_size),
        ("task.meta_batch", t.meta_batch),
        ("meta.trajectories", m.trajectories),
        ("meta.validate_every", m.validate_every),
    ]:
        if value < 1:
            raise ConfigError(f"{key} = {value} must be >= 1")
    a = cfg.aggregator
    for key, value in [("aggregator.hidden", a.hidden), ("aggregator.layers", a.layers), ("aggregator.embed", a.embed)]:
        if not 1 <= value <= 4096:
            raise ConfigError(f"{key} = {value} must be in [1, 4096]")
    for key, value, low in [
        ("meta.lr", m.lr, 0.0),
        ("task.server_lr", t.server_lr, 0.0),
        ("aggregator.p", a.p, 0.0),
        ("aggregator.loss_scale", a.loss_scale, 0.0),
        ("aggregator.step_scale", a.step_scale, 0.0),
        ("meta.grad_clip", m.grad_clip, None),
        ("aggregator.probe_lr", a.probe_lr, None),
        ("aggregator.loss_logit_scale", a.loss_logit_scale, None),
    ]:
        if not math.isfinite(value) or value < 0 or (low is not None and value <= low):
            raise ConfigError(f"{key} = {value} must be a finite number {'> 0' if low is not None else '>= 0'}")
    if not 0.0 <= a.memory_decay <= 1.0:
        raise ConfigError(f"aggregator.memory_decay = {a.memory_decay} must be in [0, 1]")
    if not 0 <= m.seed < 2**24 or m.patience < 0 or not 0 <= m.threads <= 1024:
        raise ConfigError(
            f"meta.seed = {m.seed} must be in [0, 2^24), meta.patience = {m.patience} >= 0 and meta.threads = {m.threads} in [0, 1024]"
        )
    if m.validate_steps < 0:
        raise ConfigError(f"meta.validate_steps = {m.validate_steps} must be >= 0 (0: task.steps)")
    if not b.counts or any(not isinstance(c, int) or not 0 <= c < t.workers for c in b.counts):
        raise ConfigError(f"byzantine.counts = {b.counts!r}: each must be an integer in [0, {t.workers - 1}]")
    if not b.attacks:
        raise ConfigError("byzantine.attacks must list at least one attack (a name or a table {name = ..., ...})")
    if cfg.aggregator.input_clip and not cfg.aggregator.loss_info:
        raise ConfigError(
            "aggregator.input_clip = true clips to the public gradient's norm, which only ARNN computes: "
            "set aggregator.loss_info = true or input_clip = false"
        )
    if cfg.aggregator.loss_info and t.public_size < 1:
        raise ConfigError("an ARNN aggregator (aggregator.loss_info = true) needs a public batch: set task.public_size > 0")
    for cfg_run in _run_configs(cfg, 0):  # every (count, attack) pair must be a valid run
        from ..engine.validate import validate

        validate(cfg_run)


def _attack_table(a: Any) -> dict[str, Any]:
    return {"name": a} if isinstance(a, str) else dict(a)


def _run_configs(cfg: MetaTrainConfig, seed: int) -> list[Config]:
    """The run config of every (Byzantine count, attack) pair the trajectories draw from."""
    out, seen = [], set()
    for count, attack in itertools.product(cfg.byzantine.counts, cfg.byzantine.attacks):
        table = _attack_table(attack) if count else {"name": "none"}
        key = (count, json.dumps(table, sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(run_config(cfg, count, table, seed))
    return out


def run_config(cfg: MetaTrainConfig, byzantine: int, attack: dict[str, Any], seed: int) -> Config:
    """The simulator config of one trajectory."""
    t = cfg.task
    return from_dict(
        {
            "data": {
                "name": t.data,
                "partition": t.partition,
                "public_size": t.public_size,
                "public_batch": t.public_batch,
                **({"data_dir": t.data_dir} if t.data_dir else {}),
            },
            "model": {"name": t.model},
            "workers": {"n": t.workers, "byzantine": byzantine, "batch_size": t.batch_size},
            "attack": attack,
            "aggregator": {"name": "mean", "f": 0},
            "optimizer": {"name": "sgd", "lr": t.server_lr},
            "train": {"seed": seed, "rounds": t.steps, "threads": cfg.meta.threads},
        }
    )


def build_network(cfg: MetaTrainConfig) -> CoordinatewiseRNN:
    a = cfg.aggregator
    return CoordinatewiseRNN(
        cell=a.cell,
        encoder=a.encoder,
        workers=cfg.task.workers,
        features=PREPROCESS_FEATURES[a.preprocess],
        loss_info=a.loss_info,
        hidden=a.hidden,
        layers=a.layers,
        embed=a.embed,
        loss_memory=a.loss_memory,
        loss_logit_scale=a.loss_logit_scale,
        memory_decay=a.memory_decay,
    )


def card_of(cfg: MetaTrainConfig) -> dict[str, Any]:
    a = cfg.aggregator
    return {
        "method": cfg.method,
        "preprocess": a.preprocess,
        "p": a.p,
        "output": a.output,
        "step_scale": a.step_scale,
        "loss_scale": a.loss_scale,
        "probe": a.probe,
        "input_clip": a.input_clip,
        "probe_lr": a.probe_lr or cfg.task.server_lr,
        "server_lr": cfg.task.server_lr,
    }
