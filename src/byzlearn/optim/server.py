"""Server optimisers: how the aggregated gradient updates the flat parameter vector.

Each is a ``torch.optim.Optimizer`` over the one flat parameter ``theta``: the engine writes the
aggregate into ``theta.grad`` and calls ``step()``. Their state is checkpointed with ``state_dict``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(
    params: list[Tensor], lr: float = 0.1, momentum: float = 0.0, dampening: float = 0.0,
    weight_decay: float = 0.0, nesterov: bool = False,
) -> torch.optim.Optimizer:
    """Stochastic gradient descent (optionally with heavy-ball or Nesterov momentum)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("momentum")
def momentum(params: list[Tensor], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum at the server (0.9 by default)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@OPTIMIZERS.register("adam")
def adam(
    params: list[Tensor], lr: float = 1e-3, betas: list[float] = (0.9, 0.999), eps: float = 1e-8,  # type: ignore[assignment]
    weight_decay: float = 0.0, amsgrad: bool = False,
) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015) applied to the aggregated gradient."""
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
