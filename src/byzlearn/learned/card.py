"""Checks of a learned-aggregator folder read from disk (``load_aggregator``): its card and its weights.

A folder is input like any other: every card key the code reads later is checked here, with its type
and range, and the weights must be the network's tensors (names, shapes, floating dtype) and finite,
so that a corrupted folder stops before any run folder is written, with the key or file named.
"""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path
from typing import Any

import torch

from ..registry import ConfigError, _type_name, _type_ok
from .network import CoordinatewiseRNN
from .preprocess import PREPROCESS_FEATURES

MAX_SIZE = 4096  # hidden units, layers, embedding width, workers: far beyond any trained network
POSITIVE_INTS = ("workers", "features", "hidden", "layers", "embed")


def _number(card: dict[str, Any], key: str, where: str, low: float | None = 0.0, required: bool = True) -> None:
    if key not in card and not required:
        return
    v = card.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (low is None or v > low)
    if not ok:
        raise ConfigError(
            f"{where}: {key} = {v!r} must be a finite number{f' > {low:g}' if low is not None else ''}"
            f"{' (the key is missing)' if key not in card else ''}; restore the card or train again"
        )


def read_card(path: Path) -> dict[str, Any]:
    """The card of folder ``path`` as a dict (``ConfigError`` if it is not a JSON object)."""
    try:
        card = json.loads((path / "card.json").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ConfigError(
            f"{str(path / 'card.json')!r} is not a readable JSON card ({type(e).__name__}: {e}); restore it "
            "or train again with byzlearn meta-train"
        ) from None
    if not isinstance(card, dict):
        raise ConfigError(
            f"{str(path / 'card.json')!r} must hold a JSON object (a learned-aggregator card), got "
            f"{type(card).__name__}; restore it or train again"
        )
    return card


def check_card(card: dict[str, Any], where: str) -> None:
    """``ConfigError`` for a card whose network or use options the code could not run with."""
    net = card.get("network")
    if not isinstance(net, dict):
        raise ConfigError(f"{where}: network = {net!r} must be a table of the network's hyper-parameters; restore the card")
    hints = typing.get_type_hints(CoordinatewiseRNN.__init__)
    for key, value in net.items():
        if key not in hints or key == "return":
            raise ConfigError(f"{where}: unknown network key {key!r}; known: {', '.join(k for k in hints if k != 'return')}")
        if not _type_ok(value, hints[key]):
            raise ConfigError(f"{where}: network.{key} = {value!r} must be {_type_name(hints[key])}")
        if key in POSITIVE_INTS and not 1 <= value <= MAX_SIZE:
            raise ConfigError(f"{where}: network.{key} = {value} must be in [1, {MAX_SIZE}]")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: network.{key} = {value} must be finite")
    if not 0.0 <= net.get("memory_decay", 0.9) <= 1.0:
        raise ConfigError(f"{where}: network.memory_decay = {net['memory_decay']} must be in [0, 1]")
    pre = card.get("preprocess")
    if pre not in PREPROCESS_FEATURES:
        raise ConfigError(f"{where}: preprocess = {pre!r} must be one of {', '.join(PREPROCESS_FEATURES)}")
    if net.get("features", 1) != PREPROCESS_FEATURES[pre]:
        raise ConfigError(
            f"{where}: network.features = {net.get('features', 1)} does not match preprocess = {pre!r} "
            f"({PREPROCESS_FEATURES[pre]} feature(s)); restore the card"
        )
    if card.get("output") not in ("gradient", "step"):
        raise ConfigError(f"{where}: output = {card.get('output')!r} must be 'gradient' or 'step'")
    if card.get("probe", "step") not in ("step", "clipped"):
        raise ConfigError(f"{where}: probe = {card.get('probe')!r} must be 'step' or 'clipped'")
    if not isinstance(card.get("input_clip", False), bool):
        raise ConfigError(f"{where}: input_clip = {card.get('input_clip')!r} must be true or false")
    if not isinstance(card.get("method", ""), str):
        raise ConfigError(f"{where}: method = {card.get('method')!r} must be a string")
    if not isinstance(card.get("training_config", {}), dict):
        raise ConfigError(f"{where}: training_config = {card.get('training_config')!r} must be a table")
    _number(card, "p", where)
    _number(card, "probe_lr", where, low=None)
    if card["probe_lr"] < 0:
        raise ConfigError(f"{where}: probe_lr = {card['probe_lr']} must be >= 0")
    _number(card, "step_scale", where, required=card["output"] == "step")
    _number(card, "loss_scale", where, required=bool(net.get("loss_info", False)))
    _number(card, "server_lr", where, required=False)


def check_weights(net: CoordinatewiseRNN, weights: dict[str, torch.Tensor], where: str) -> None:
    """``ConfigError`` unless ``weights`` are exactly the network's tensors (names, shapes), floating and finite."""
    expected = net.state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        raise ConfigError(
            f"{where} does not hold this card's network: missing {missing or 'none'}, unexpected {extra or 'none'}; "
            "the weights and card.json come from different trainings: restore the folder or train again"
        )
    for name, t in weights.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise ConfigError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, the card's network needs "
                f"{tuple(expected[name].shape)}; restore the folder or train again"
            )
        if not t.is_floating_point():
            raise ConfigError(f"{where}: tensor {name!r} is {t.dtype}, not floating point; restore the folder or train again")
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(
                f"{where}: tensor {name!r} has NaN or infinite weights (a diverged or corrupted training); "
                "use another aggregator or train again"
            )
