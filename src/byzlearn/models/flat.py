"""A model seen as a function of ONE flat parameter vector ``theta: Tensor[d]``.

The engine, the rules and the attacks all work on flat vectors; ``FlatModel`` converts between
``theta`` and the module's named parameters (views, no copies) and evaluates the module with
``torch.func.functional_call`` so that ``torch.func.grad``/``vmap`` can differentiate and batch it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call


class FlatModel:
    """Wraps ``module``; ``d`` is the number of parameters, ``init()`` a flat copy of its weights."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.d = sum(self.sizes)
        self.buffers = dict(module.named_buffers())

    def init(self) -> Tensor:
        """The module's current parameters as one detached flat vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        if theta.shape != (self.d,):
            raise ValueError(f"expected a flat parameter vector of shape ({self.d},), got {tuple(theta.shape)}")
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits of the module with parameters ``theta`` on inputs ``x``."""
        return functional_call(self.module, (self.unflatten(theta), self.buffers), (x,))

    def call_parts(self, params: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """Logits with the parameters given one tensor per layer (in ``names`` order)."""
        return functional_call(self.module, (dict(zip(self.names, params)), self.buffers), (x,))

    @torch.no_grad()
    def load_into_module(self, theta: Tensor) -> None:
        """Copy ``theta`` into the module's own parameters (for code that calls the module directly)."""
        for p, v in zip(self.module.parameters(), self.unflatten(theta).values()):
            p.copy_(v)

    def to(self, device: torch.device | str) -> "FlatModel":
        self.module.to(device)
        self.buffers = dict(self.module.named_buffers())
        return self
