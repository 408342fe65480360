"""Server optimisers: how the aggregated gradient updates the flat parameter vector.

Each is a ``torch.optim.Optimizer`` over the one flat parameter ``theta``: the engine writes the
aggregate into ``theta.grad`` and calls ``step()``. Their state is checkpointed with ``state_dict``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..registry import ConfigError, Registry, check_params

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # the parameters are float32: a larger hyper-parameter overflows


def check_optimizer(section: dict[str, Any]) -> None:
    """``ConfigError`` for an ``[optimizer]`` section the server cannot use: unknown name or keys, a learning
    rate that is not a finite number >= 0, a hyper-parameter that is NaN, infinite or negative, ``betas`` that
    are not two numbers in [0, 1), or a combination the optimiser refuses (built once on a dummy parameter)."""
    name = section["name"]
    params = {k: v for k, v in section.items() if k != "name"}
    check_params(OPTIMIZERS, name, params, "optimizer", skip=("params",))
    default = OPTIMIZERS.parameters(name).get("lr")
    lr = params.get("lr", default.default if default is not None else 1.0)
    if not 0 <= lr <= FLOAT32_MAX:  # 0 freezes the model (the tests inspect messages that way)
        raise ConfigError(f"optimizer.lr = {lr} must be a finite number >= 0 (e.g. 0.1)" + (" within float32's range" if lr > 0 else ""))
    for key, value in params.items():
        if key == "betas":
            if len(value) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value):
                raise ConfigError(f"optimizer.betas = {value!r} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and not 0 <= value <= FLOAT32_MAX:
            raise ConfigError(f"optimizer.{key} = {value} must be a finite number >= 0 (within float32's range)")
    try:
        OPTIMIZERS.get(name)(params=[torch.zeros(1, requires_grad=True)], **params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"optimizer {name!r}: {e}; fix the optimizer.* keys") from e


@OPTIMIZERS.register("sgd")
def sgd(
    params: list[Tensor], lr: float = 0.1, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False
) -> torch.optim.Optimizer:
    """Stochastic gradient descent (optionally with heavy-ball or Nesterov momentum)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("momentum")
def momentum(
    params: list[Tensor], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False
) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum at the server (0.9 by default)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("adam")
def adam(
    params: list[Tensor],
    lr: float = 1e-3,
    betas: list[float] = (0.9, 0.999),
    eps: float = 1e-8,  # type: ignore[assignment]
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) applied to the aggregated gradient."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
