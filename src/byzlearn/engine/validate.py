"""Checks of a whole config that need more than one key, run before any data is loaded."""

from __future__ import annotations

import math

import torch

from ..aggregators import build_aggregator
from ..attacks import ATTACKS
from ..config import Config
from ..data import DATASETS
from ..models import MODELS
from ..optim import OPTIMIZERS
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


def _positive(value: int, key: str, minimum: int = 1) -> None:
    if value < minimum:
        raise ConfigError(f"{key} = {value} must be >= {minimum}")


def validate(cfg: Config) -> None:
    """Raise ``ConfigError`` naming the key for any impossible setting."""
    w, t, d = cfg.workers, cfg.train, cfg.data
    _positive(w.n, "workers.n")
    _positive(w.batch_size, "workers.batch_size")
    if not 0 <= w.byzantine < w.n:
        raise ConfigError(
            f"workers.byzantine = {w.byzantine} is impossible with workers.n = {w.n}: it must be in [0, {w.n - 1}] "
            "(at least one worker must be honest)"
        )
    _positive(t.rounds, "train.rounds")
    _positive(t.eval_every, "train.eval_every")
    _positive(t.checkpoint_every, "train.checkpoint_every")
    _positive(t.eval_batch_size, "train.eval_batch_size")
    _positive(t.threads, "train.threads", 0)
    _positive(d.public_size, "data.public_size", 0)
    _positive(d.public_batch, "data.public_batch")
    if d.alpha <= 0:
        raise ConfigError(f"data.alpha = {d.alpha} must be > 0 (Dirichlet concentration)")
    if d.name not in DATASETS:
        raise ConfigError(f"unknown data.name {d.name!r}; known: {', '.join(DATASETS.names())}")
    if cfg.model.name not in MODELS:
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
    check_params(ATTACKS, cfg.attack["name"], {k: v for k, v in cfg.attack.items() if k != "name"}, "attack")
    check_params(OPTIMIZERS, cfg.optimizer["name"], {k: v for k, v in cfg.optimizer.items() if k != "name"}, "optimizer", skip=("params",))
    _check_protocol(cfg)
    agg = build_aggregator(cfg.aggregator, f_default=w.byzantine)
    agg.check(client_count(cfg) if t.algorithm == "fedavg" else w.n)
    if getattr(agg, "rule", agg).needs_public_batch and d.public_size == 0:
        raise ConfigError(f"aggregator {agg.name!r} scores the workers on the server's public batch: set data.public_size > 0 (e.g. 1000)")


def _check_protocol(cfg: Config) -> None:
    """Worker momentum, robust FedAvg and the data splits of the standard protocols."""
    w, t, d, fa = cfg.workers, cfg.train, cfg.data, cfg.fedavg
    if not (math.isfinite(w.momentum) and 0.0 <= w.momentum < 1.0):
        raise ConfigError(f"workers.momentum = {w.momentum} must be in [0, 1) (0: workers send raw gradients; 0.9 is the usual beta)")
    if not (math.isfinite(d.gamma) and 0.0 <= d.gamma <= 1.0):
        raise ConfigError(f"data.gamma = {d.gamma} must be in [0, 1] (the iid fraction of gamma_similarity: 1 iid, 0 extreme)")
    _positive(d.validation_size, "data.validation_size", 0)
    if d.shards == "honest" and w.byzantine_set != "fixed":
        raise ConfigError("data.shards = 'honest' gives shards to the honest workers only, which needs a fixed Byzantine set: "
                          "set workers.byzantine_set = 'fixed' or data.shards = 'all'")
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
        raise ConfigError("workers.momentum applies to train.algorithm = 'dsgd'; FedAvg clients run plain local SGD "
                          "(ByzFL's FedAvg): set workers.momentum = 0, or use server momentum (optimizer.momentum)")
    if draco:
        raise ConfigError("DRACO decodes redundant gradients of one model, which K local steps per client break: "
                          "use train.algorithm = 'dsgd' with a draco_* aggregator")
    if cfg.distributed.mode == "decentralized":
        raise ConfigError("robust FedAvg needs a server: use distributed.mode = 'server' (decentralised peers run LEARN)")
