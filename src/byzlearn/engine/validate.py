"""Checks of a whole config that need more than one key, run before any data is loaded."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from ..aggregators import build_aggregator
from ..attacks import ATTACKS, build_attack
from ..config import Config
from ..data import DATASETS
from ..models import MODELS
from ..optim import check_optimizer
from ..registry import ConfigError, check_params
from .work import client_count


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"train.device = {name!r} is not a device; use cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device = {name!r} but CUDA is not available here; use train.device=cpu (or auto)")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device = {name!r}: only cpu and cuda are supported")
    return dev


MAX_COUNT = 10**6  # workers and batch sizes: beyond any run here, and a typo cannot exhaust the memory
MAX_INDICES = 2**27  # minibatch indices per round (workers x batch x FedAvg local steps)
MAX_THREADS = 1024
MAX_SEED = 2**40  # train.seed * 1000 + stream must stay a valid generator seed


def _positive(value: int, key: str, minimum: int = 1, maximum: int | None = None) -> None:
    if value < minimum:
        raise ConfigError(f"{key} = {value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{key} = {value} is too large: at most {maximum}")


def _check_pre(pre: Any) -> None:
    """``aggregator.pre``: a list of names or tables with a name (the pre-aggregators' own keys are checked when built)."""
    if pre is None:
        return
    if not isinstance(pre, list):
        raise ConfigError(f'aggregator.pre = {pre!r} must be a list of pre-aggregators, e.g. ["nnm"] or [{{name = "bucketing", s = 2}}]')
    for i, spec in enumerate(pre):
        name = spec.get("name") if isinstance(spec, dict) else spec
        if not isinstance(name, str):
            raise ConfigError(
                f'aggregator.pre[{i}] = {spec!r} must be a name or a table with a name, e.g. "nnm" or {{name = "bucketing", s = 2}}'
            )


def validate(cfg: Config, own_data: bool = False, own_model: bool = False) -> None:
    """Raise ``ConfigError`` naming the key for any impossible setting. ``own_data`` / ``own_model``: the run gets a
    data set / model object, so ``data.name`` / ``model.name`` only label it and need not be registered."""
    w, t, d = cfg.workers, cfg.train, cfg.data
    _positive(w.n, "workers.n", maximum=MAX_COUNT)
    _positive(w.batch_size, "workers.batch_size", maximum=MAX_COUNT)
    steps = cfg.fedavg.local_steps if t.algorithm == "fedavg" else 1
    if w.n * w.batch_size * max(steps, 1) > MAX_INDICES:
        raise ConfigError(
            f"workers.n x workers.batch_size{' x fedavg.local_steps' if steps > 1 else ''} = "
            f"{w.n * w.batch_size * steps} minibatch samples per round is more than {MAX_INDICES}; use fewer"
        )
    if not 0 <= t.seed < MAX_SEED:
        raise ConfigError(f"train.seed = {t.seed} must be an integer in [0, 2^40)")
    if not 0 <= w.byzantine < w.n:
        raise ConfigError(
            f"workers.byzantine = {w.byzantine} is impossible with workers.n = {w.n}: it must be in [0, {w.n - 1}] "
            "(at least one worker must be honest)"
        )
    _positive(t.rounds, "train.rounds")
    _positive(t.eval_every, "train.eval_every")
    _positive(t.checkpoint_every, "train.checkpoint_every")
    _positive(t.eval_batch_size, "train.eval_batch_size")
    _positive(t.threads, "train.threads", 0, MAX_THREADS)
    _positive(d.public_size, "data.public_size", 0)
    _positive(d.public_batch, "data.public_batch", maximum=MAX_COUNT)
    _positive(d.labels_per_worker, "data.labels_per_worker")
    if not (math.isfinite(d.alpha) and d.alpha > 0):
        raise ConfigError(f"data.alpha = {d.alpha} must be a finite number > 0 (Dirichlet concentration)")
    if not own_data and d.name not in DATASETS:
        raise ConfigError(f"unknown data.name {d.name!r}; known: {', '.join(DATASETS.names())}")
    if not own_model and cfg.model.name not in MODELS:
        raise ConfigError(f"unknown model.name {cfg.model.name!r}; known: {', '.join(MODELS.names())}")
    resolve_device(t.device)
    dc = cfg.distributed
    _positive(dc.quorum, "distributed.quorum", 0)
    if dc.quorum > w.n:
        raise ConfigError(f"distributed.quorum = {dc.quorum} exceeds workers.n = {w.n}: the server waits for at most n gradients (0 = all)")
    for key in ("deadline", "timeout"):
        if not getattr(dc, key) > 0:
            raise ConfigError(f"distributed.{key} = {getattr(dc, key)} must be > 0 (seconds)")
    _positive(dc.grad_rounds, "distributed.grad_rounds", 0)
    _positive(dc.model_rounds, "distributed.model_rounds", 0)
    attack = {k: v for k, v in cfg.attack.items() if k != "name"}
    check_params(ATTACKS, cfg.attack["name"], attack, "attack")
    _built(lambda: build_attack(cfg.attack), f"attack {cfg.attack['name']!r}", "attack")
    check_optimizer(cfg.optimizer)
    _check_protocol(cfg)
    _check_pre(cfg.aggregator.get("pre"))
    agg = _built(lambda: build_aggregator(cfg.aggregator, f_default=w.byzantine), f"aggregator {cfg.aggregator['name']!r}", "aggregator")
    agg.check(client_count(cfg) if t.algorithm == "fedavg" else w.n)
    if agg.needs_public_update:  # FLTrust: the server's own update on its root set
        if d.public_size == 0:
            raise ConfigError(
                f"aggregator {agg.name!r} computes the server's own update on a root set of public samples: "
                "set data.public_size > 0 (the FLTrust paper uses about 100)"
            )
        if t.algorithm == "fedavg" and cfg.fedavg.aggregate == "weights":
            raise ConfigError(f"aggregator {agg.name!r} compares updates by their direction, not weights: set fedavg.aggregate = 'update'")
    if agg.needs_public_batch and d.public_size == 0:
        raise ConfigError(f"aggregator {agg.name!r} scores the workers on the server's public batch: set data.public_size > 0 (e.g. 1000)")


def _built(build: Callable[[], Any], what: str, section: str) -> Any:
    """``build()``, its ``ValueError``/``TypeError`` (a value its constructor refuses) as a ``ConfigError``."""
    try:
        return build()
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError) as e:
        raise ConfigError(f"{what}: {e}; fix the {section}.* keys (byzlearn list shows them)") from e


def _check_protocol(cfg: Config) -> None:
    """Worker momentum, robust FedAvg and the data splits of the standard protocols."""
    w, t, d, fa = cfg.workers, cfg.train, cfg.data, cfg.fedavg
    if not (math.isfinite(w.momentum) and 0.0 <= w.momentum < 1.0):
        raise ConfigError(f"workers.momentum = {w.momentum} must be in [0, 1) (0: workers send raw gradients; 0.9 is the usual beta)")
    if not (math.isfinite(d.gamma) and 0.0 <= d.gamma <= 1.0):
        raise ConfigError(f"data.gamma = {d.gamma} must be in [0, 1] (the iid fraction of gamma_similarity: 1 iid, 0 extreme)")
    _positive(d.validation_size, "data.validation_size", 0)
    if d.shards == "honest" and w.byzantine_set != "fixed":
        raise ConfigError(
            "data.shards = 'honest' gives shards to the honest workers only, which needs a fixed Byzantine set: "
            "set workers.byzantine_set = 'fixed' or data.shards = 'all'"
        )
    draco = str(cfg.aggregator.get("name", "")).startswith("draco_")
    if t.algorithm != "fedavg":
        return
    _positive(fa.local_steps, "fedavg.local_steps")
    if not (math.isfinite(fa.local_lr) and fa.local_lr > 0):
        raise ConfigError(f"fedavg.local_lr = {fa.local_lr} must be a finite number > 0")
    if not (math.isfinite(fa.local_weight_decay) and fa.local_weight_decay >= 0):
        raise ConfigError(f"fedavg.local_weight_decay = {fa.local_weight_decay} must be a finite number >= 0")
    if not (math.isfinite(fa.fraction) and 0.0 < fa.fraction <= 1.0):
        raise ConfigError(f"fedavg.fraction = {fa.fraction} must be in (0, 1] (the fraction of clients sampled per round)")
    if w.momentum > 0:
        raise ConfigError(
            "workers.momentum applies to train.algorithm = 'dsgd'; FedAvg clients run plain local SGD "
            "(ByzFL's FedAvg): set workers.momentum = 0, or use server momentum (optimizer.momentum)"
        )
    if draco:
        raise ConfigError(
            "DRACO decodes redundant gradients of one model, which K local steps per client break: "
            "use train.algorithm = 'dsgd' with a draco_* aggregator"
        )
    if cfg.distributed.mode == "decentralized":
        raise ConfigError("robust FedAvg needs a server: use distributed.mode = 'server' (decentralised peers run LEARN)")
