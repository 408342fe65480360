"""One synchronous round as named phases, composed by every engine.

::

    draw        roles (honest / Byzantine participants) and every worker's minibatches   Simulator.draw
    compute     the honest workers' messages: a gradient, a momentum or K local steps    engine.work
    attack      the coalition forges at most f rows of the message width                 forge (here)
    decode      DRACO only: exact sum from redundant code words                          coding.simulator
    aggregate   pre-aggregators then the rule, Tensor[m, d] -> Tensor[d]                 aggregators.Chain
    update      the server applies the aggregate                                         apply_update / sgd_step (here)
    metrics     honest training loss, test / validation evaluation                       experiments.runner

The simulator (``engine.simulator``), DRACO (``coding.simulator``), the heavy-tail study
(``experiments.heavy_tail``), the heterogeneous-model engine (``learned.heterogeneous``),
meta-training (``learned.meta_train``), the distributed server and workers and the decentralised peers
(``distributed``) all go through these functions: the attack contract and the server update are each
written once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ConfigError


class AttackContractError(ConfigError):
    """An attack returned something other than at most ``f`` rows of the message width."""


@dataclass
class RoundDraw:
    """The draw phase of one round.

    ``honest`` / ``byzantine``: the worker ids (sorted, on the engine's device) that take part this
    round honestly / as the coalition; ``batches``: every worker's minibatch sample indices (CPU),
    ``LongTensor[n, B]``, or ``[K, n, B]`` for K local steps; ``participants``: the clients sampled
    this round (robust FedAvg), ``None`` when every worker takes part.
    """

    round: int
    honest: Tensor
    byzantine: Tensor
    batches: Tensor
    participants: Tensor | None = None

    def rows_of(self, workers: Tensor) -> Tensor:
        """Positions of ``workers`` among this round's message rows (participants in worker order)."""
        if self.participants is None:
            return workers
        return torch.searchsorted(self.participants.to(workers.device), workers)


def forge(attack, ctx, width: int) -> Tensor:
    """The attack phase: the coalition's rows, checked against the attack contract (the one place it is).

    An attack returns ``Tensor[k, width]`` with ``k <= ctx.f`` (fewer rows: the other Byzantine workers
    send nothing). Anything else is a bug in the attack, reported as ``AttackContractError`` by every
    engine alike.
    """
    rows = attack.forge(ctx)
    ok = isinstance(rows, Tensor) and rows.dim() == 2 and rows.shape[0] <= ctx.f and (rows.shape[0] == 0 or rows.shape[1] == width)
    if not ok:
        shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
        raise AttackContractError(
            f"attack {attack.name!r} returned {shape}; an attack returns at most f = {ctx.f} rows of width {width} "
            "(Tensor[k <= f, width], see attacks/base.py)"
        )
    return rows


def place(G: Tensor, byzantine_rows: Tensor, forged: Tensor) -> Tensor:
    """Write the forged rows into the batch at the coalition's positions; drop the rows of those that sent nothing."""
    k = forged.shape[0]
    G.index_copy_(0, byzantine_rows[:k], forged.to(device=G.device, dtype=G.dtype))
    if k < byzantine_rows.numel():
        keep = torch.ones(G.shape[0], dtype=torch.bool, device=G.device)
        keep[byzantine_rows[k:]] = False
        G = G[keep]
    return G


def apply_update(theta: Tensor, optimizer: torch.optim.Optimizer, update: Tensor) -> None:
    """The update phase of an engine with a server optimiser: the aggregate is the gradient of ``theta``."""
    theta.grad = update.to(theta.dtype)
    optimizer.step()


def replace_weights(theta: Tensor, weights: Tensor) -> None:
    """The update phase of FedAvg with ``aggregate = "weights"`` (ByzFL): the aggregate replaces the model."""
    with torch.no_grad():
        theta.copy_(weights.to(theta.dtype))


def sgd_step(theta: Tensor, update: Tensor, lr: float) -> Tensor:
    """``theta - lr * update``: the plain, differentiable update of engines without an optimiser object."""
    return theta - lr * update.to(theta.dtype)
