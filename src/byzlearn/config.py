"""Run configuration: TOML sections with every key defaulted, ``--set`` overrides, validation.

Sections ``data``, ``model``, ``workers``, ``train`` have a fixed schema (the dataclasses below).
Sections ``attack``, ``aggregator`` and ``optimizer`` hold a ``name`` plus the keyword arguments of
the registered component of that name; those keys are checked against its signature. Every problem
is a ``ConfigError`` raised before training, naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import tomli_w

from .registry import ConfigError, _type_name, _type_ok, check_value


@dataclass
class DataConfig:
    name: str = "digits"
    data_dir: str | None = None
    download: bool = True
    partition: Literal["iid", "dirichlet", "labels", "gamma_similarity", "extreme"] = "iid"
    alpha: float = 0.5
    labels_per_worker: int = 2
    public_size: int = 0
    public_batch: int = 16
    gamma: float = 0.5  # gamma_similarity: the iid fraction of the training set (1: iid, 0: extreme), ByzFL's
    validation_size: int = 0  # training samples held out of every shard for model selection (byzlearn tune)
    shards: Literal["all", "honest"] = "all"  # who holds a shard: every worker, or only the honest ones (ByzFL)


@dataclass
class ModelConfig:
    name: str = "mlp20"


@dataclass
class WorkersConfig:
    n: int = 10
    byzantine: int = 0
    batch_size: int = 32
    byzantine_set: Literal["fixed", "redraw"] = "fixed"
    momentum: float = 0.0  # worker momentum beta (0: workers send raw gradients)
    momentum_form: Literal["ema", "sum"] = "ema"  # ema: m <- beta m + (1 - beta) g (ByzFL); sum: m <- beta m + g, m_0 = g


@dataclass
class TrainConfig:
    rounds: int = 300
    eval_every: int = 25
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100
    eval_batch_size: int = 10000
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    compile: bool = False  # torch.compile the batched gradient pass
    algorithm: Literal["dsgd", "fedavg"] = "dsgd"  # D-SGD (one gradient or momentum per worker) or robust FedAvg ([fedavg])


@dataclass
class DistributedConfig:
    """Settings of the torch.distributed runtime (``byzlearn run --engine distributed``, ``byzlearn launch``).

    The simulator ignores them. Left at their defaults the section is not written to a resolved
    config and does not enter ``Config.hash``, so configs from before the runtime keep their hash.
    """

    mode: Literal["server", "decentralized"] = "server"  # parameter server (rank 0) or peers without a server
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: gloo (nccl only when asked for, with CUDA)
    quorum: int = 0  # the server proceeds once q gradients of the round arrived; 0: all live workers
    deadline: float = 10.0  # seconds the server waits for a round's gradients before it proceeds without the rest
    timeout: float = 120.0  # seconds for start-up (all processes joining) and for a stalled decentralised round
    agreement: Literal["rb_trimmed_mean", "mda", "gossip"] = "rb_trimmed_mean"  # decentralised averaging agreement
    grad_rounds: int = 0  # decentralised: cap on LEARN's 1 + ceil(log2 t) gradient-agreement rounds (0: no cap)
    model_rounds: int = 1  # decentralised: model-agreement rounds per step
    byzantine_peers: Literal["attack", "equivocate", "silent"] = "attack"  # decentralised Byzantine behaviour


@dataclass
class FedAvgConfig:
    """Robust FedAvg (``train.algorithm = "fedavg"``): sampled clients run K local SGD steps from the global model."""

    local_steps: int = 1  # K
    local_lr: float = 0.1
    local_weight_decay: float = 0.0
    fraction: float = 1.0  # clients sampled per round: max(1, int(fraction * workers.n)), honest and Byzantine alike
    aggregate: Literal["update", "weights"] = "update"  # update: w_start - w_end to the server optimiser; weights: replace (ByzFL)


FIXED_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "workers": WorkersConfig,
    "train": TrainConfig,
    "distributed": DistributedConfig,
    "fedavg": FedAvgConfig,
}
OPTIONAL_SECTIONS = ("distributed", "fedavg")  # written (and hashed) only when some key differs from its default
# keys added after configs and run folders were first committed: written (and hashed) only when set,
# so every older config keeps its resolved file and its hash
OPTIONAL_KEYS = {"data": ("gamma", "validation_size", "shards"), "workers": ("momentum", "momentum_form"), "train": ("algorithm",)}
OPEN_DEFAULTS: dict[str, dict[str, Any]] = {
    "attack": {"name": "none"},
    "aggregator": {"name": "mean"},
    "optimizer": {"name": "sgd", "lr": 0.1},
}
SECTIONS = [*FIXED_SECTIONS, *OPEN_DEFAULTS]


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    fedavg: FedAvgConfig = field(default_factory=FedAvgConfig)
    attack: dict[str, Any] = field(default_factory=lambda: dict(OPEN_DEFAULTS["attack"]))
    aggregator: dict[str, Any] = field(default_factory=lambda: dict(OPEN_DEFAULTS["aggregator"]))
    optimizer: dict[str, Any] = field(default_factory=lambda: dict(OPEN_DEFAULTS["optimizer"]))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SECTIONS:
            sec = getattr(self, name)
            d = dataclasses.asdict(sec) if dataclasses.is_dataclass(sec) else dict(sec)
            if name in OPTIONAL_SECTIONS and d == dataclasses.asdict(type(sec)()):
                continue
            if name in OPTIONAL_KEYS:
                default = type(sec)()
                for key in OPTIONAL_KEYS[name]:
                    if d[key] == getattr(default, key):
                        del d[key]
            out[name] = {k: v for k, v in d.items() if v is not None}  # TOML has no null: absent = None
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def hash(self) -> str:
        """Hash of the experiment's definition (the data location and device do not change it)."""
        d = self.to_dict()
        d["data"].pop("data_dir", None)
        d["train"].pop("device", None)
        # the transport (backend) and the start-up timeout do not change the experiment either
        dist = dataclasses.replace(self.distributed, backend="auto", timeout=DistributedConfig.timeout)
        d.pop("distributed", None)
        if dist != DistributedConfig():
            d["distributed"] = dataclasses.asdict(dist)
        # the partition parameter of another scheme does not change the experiment
        if self.data.partition != "gamma_similarity":
            d["data"].pop("gamma", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _check_fixed(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            allowed = ", ".join(f"{k} ({_type_name(hints[k])})" for k in hints)
            raise ConfigError(f"unknown key {section}.{key}; allowed keys in [{section}]: {allowed}")
        check_value(value, f"{section}.{key}")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{section}.{key} = {value!r} has the wrong type: expected {_type_name(hints[key])}")
    return cls(**{k: (float(v) if hints[k] is float else v) for k, v in values.items()})


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a ``Config`` from nested dicts (a parsed TOML file), checking section and key names and types."""
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}]; sections: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {values!r}")
    kwargs: dict[str, Any] = {}
    for section, cls in FIXED_SECTIONS.items():
        kwargs[section] = _check_fixed(section, cls, raw.get(section, {}))
    for section, default in OPEN_DEFAULTS.items():
        values = dict(raw.get(section, {}))
        if "name" not in values:
            # a new name without keys starts from that component's defaults, not the default component's
            values = {**default, **values}
        if not isinstance(values["name"], str):
            raise ConfigError(f"{section}.name must be a string, got {values['name']!r}")
        for key, value in values.items():
            check_value(value, f"{section}.{key}")
        kwargs[section] = values
    return Config(**kwargs)


def parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``0.1``, ``true``, ``[1, 2]``, ``"x"``) or else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(f"--set value {text[:40]!r}... nests arrays or tables too deeply; flatten it") from None


def apply_overrides(
    raw: dict[str, Any],
    overrides: list[str],
    sections: Sequence[str] = tuple(SECTIONS),
    open_defaults: dict[str, dict[str, Any]] = OPEN_DEFAULTS,
) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a raw config dict (a new dict is returned).

    ``sections`` and ``open_defaults`` (sections whose ``name`` picks a component) default to a run
    config's; other config kinds (meta-training) pass their own.
    """
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    set_here: set[tuple[str, str]] = set()
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set expects section.key=value (e.g. aggregator.name=krum), got {item!r}")
        path, text = item.split("=", 1)
        section, key = path.strip().split(".", 1)
        if section not in sections:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; sections: {', '.join(sections)}")
        key, value = key.strip(), parse_value(text.strip())
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {raw[section]!r}; fix the config file")
        if section in open_defaults and key == "name":
            current = raw.get(section, {}).get("name", open_defaults[section]["name"])
            if current != value:  # switching component: the file's keys for the old one do not apply
                kept = {k: v for k, v in raw.get(section, {}).items() if (section, k) in set_here}
                raw[section] = kept
        raw.setdefault(section, {})[key] = value
        set_here.add((section, key))
    return raw


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (or start from the defaults), apply overrides and check it."""
    return from_dict(apply_overrides(read_toml(path), overrides or []))


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """The parsed TOML file ``path`` (``{}`` for none); ``ConfigError`` if it is missing or not valid TOML."""
    if path is None:
        return {}
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {str(p)!r} is a folder; give a TOML file (or --resume {str(p)!r} for a run folder)")
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read ({e.strerror or e}); check its permissions") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8 TOML") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}; fix that line") from e
    except RecursionError as e:
        raise ConfigError(f"config file {str(p)!r} nests arrays or tables too deeply to read; flatten it") from e
