"""Reading checkpoints safely: ``torch.load(weights_only=True)``, so that loading one runs no code.

Every checkpoint byzlearn writes holds only tensors and plain values (numbers, strings, lists, tuples,
dicts, ``None``): the simulator's (generator states, optimiser state, aggregator and attack state,
worker momenta), the distributed server's (plus its counters), DRACO's and meta-training's.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .registry import ConfigError


def load_safely(path: Path, what: str, fix: str) -> Any:
    """The object saved in ``path`` (on the CPU); ``ConfigError`` naming ``what`` (e.g. "checkpoint 'r/checkpoint.pt'")
    and ``fix`` when it is not a file, cannot be read, or holds objects other than tensors and plain values."""
    if not path.is_file():
        raise ConfigError(f"{what} is {'a folder' if path.is_dir() else 'missing'}, not a checkpoint file; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise ConfigError(
                f"{what} refused: it holds Python objects besides tensors and plain values, which a byzlearn "
                f"checkpoint never does (unpickling them could run code); do not use this file: {fix}"
            ) from None
        raise ConfigError(f"{what} is corrupt ({e}); {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:
        why = f"{type(e).__name__}: {e}" if str(e) else f"{type(e).__name__}: the file ends early"
        raise ConfigError(f"{what} cannot be read ({why}): it is truncated, corrupt or not a byzlearn checkpoint; {fix}") from None


META_CHECKPOINT_KEYS = {
    "config": dict,
    "net": dict,
    "opt": dict,
    "best": dict,
    "history": list,
    "next": int,
    "stale": int,
    "meta_steps": int,
    "elapsed": (int, float),
    "rng": torch.Tensor,
}


def load_meta_checkpoint(path: Path) -> dict[str, Any]:
    """``meta_checkpoint.pt`` (read safely: ``load_safely``); ``ConfigError`` naming a missing key."""
    fix = "restore it or start again in a new --out"
    ck = load_safely(path, f"meta-training checkpoint {str(path)!r}", fix)
    bad = [k for k, kind in META_CHECKPOINT_KEYS.items() if not isinstance(ck, dict) or not isinstance(ck.get(k), kind)]
    if bad or not isinstance(ck["config"].get("meta"), dict) or not isinstance(ck["best"].get("weights"), dict):
        raise ConfigError(
            f"{str(path)!r} is not a byzlearn meta-training checkpoint (missing or invalid: "
            f"{', '.join(bad) or 'config.meta, best.weights'}); {fix}"
        )
    return ck
