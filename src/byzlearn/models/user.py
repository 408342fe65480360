"""A user's own model, passed straight to the engine: an ``nn.Module`` (deep-copied per run) or a factory
``(input_shape, num_classes) -> nn.Module`` (called per run, under ``train.seed``, like a registered model).

``check_model`` runs it once on two training samples, as the engine will (``torch.func.grad`` inside
``vmap``), so that a wrong output width or a layer the batched pass cannot take fails before training.
"""

from __future__ import annotations

import copy
from typing import Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from ..registry import ConfigError
from .flat import FlatModel

ModelSpec = Union[nn.Module, Callable[[tuple[int, ...], int], nn.Module]]


def model_label(model: ModelSpec) -> str:
    """A name for a user model in configs and summaries: the factory's or the module class's name."""
    name = type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__name__", "")
    return name if name and not name.startswith("<") else "custom"


def _what(model: ModelSpec) -> str:
    """How error messages name a user model (``<lambda>``, ``make_net``, ``Net``)."""
    return type(model).__name__ if isinstance(model, nn.Module) else getattr(model, "__qualname__", type(model).__name__)


def user_module(model: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A fresh module of ``model`` for one run (``ConfigError`` if it cannot be made or has nothing to train)."""
    if isinstance(model, nn.Module):
        try:
            module = copy.deepcopy(model)
        except Exception as e:  # a module holding something deepcopy refuses (locks, open files)
            raise ConfigError(
                f"the model {_what(model)} cannot be copied for the run (copy.deepcopy: {e}); "
                "pass a factory (input_shape, num_classes) -> nn.Module instead"
            ) from e
    elif callable(model):
        try:
            module = model(input_shape, num_classes)
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(
                f"the model factory {_what(model)}(input_shape={input_shape}, num_classes={num_classes}) failed: {type(e).__name__}: {e}"
            ) from e
        if not isinstance(module, nn.Module):
            raise ConfigError(f"the model factory {_what(model)} returned {type(module).__name__}, not an nn.Module")
    else:
        raise ConfigError(f"model must be an nn.Module or a factory (input_shape, num_classes) -> nn.Module, got {type(model).__name__}")
    params = list(module.parameters())
    if not params:
        raise ConfigError(f"the model {_what(model)} has no parameters to train")
    if any(not p.is_floating_point() for p in params):
        raise ConfigError(f"the model {_what(model)} has non-floating-point parameters; the engine trains float ones only")
    return module


def check_model(model: FlatModel, theta: Tensor, x: Tensor, y: Tensor, num_classes: int) -> None:
    """``ConfigError`` unless ``model`` maps two samples of ``x`` to ``Tensor[2, num_classes]`` logits and has a
    per-worker gradient under ``vmap`` (no random or in-place-buffer layers in training mode)."""
    xb, yb = x[:2], y[:2]
    shape = tuple(xb.shape)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # a check must not move the global random stream
        try:
            out = model(theta, xb)
        except Exception as e:
            raise ConfigError(f"the model fails on a batch of training inputs of shape {shape}: {type(e).__name__}: {e}") from e
    want = (xb.shape[0], num_classes)
    if not isinstance(out, Tensor) or tuple(out.shape) != want or not out.is_floating_point():
        got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"the model must return float logits Tensor[batch, num_classes] = {want} on inputs of shape {shape}, got {got}; "
            f"its last layer needs {num_classes} outputs (one per class)"
        )
    loss = lambda th, xs, ys: F.cross_entropy(model(th, xs), ys)  # noqa: E731 - the engine's loss
    try:
        with torch.random.fork_rng(devices=[]):
            vmap(grad(loss), in_dims=(None, 0, 0))(theta, xb.unsqueeze(0), yb.unsqueeze(0))
    except Exception as e:
        raise ConfigError(
            f"the model has no per-worker gradient under torch.func (grad inside vmap): {type(e).__name__}: {e}; "
            "use layers without randomness or in-place buffer updates in training mode (no Dropout or BatchNorm; "
            "LayerNorm and GroupNorm work)"
        ) from e
