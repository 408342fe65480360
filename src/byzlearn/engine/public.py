"""The server's own update on its public batch (FLTrust's root-set update, Cao et al., NDSS 2021).

The server computes its message as an honest worker computes its own: a gradient (through the
server's momentum when the workers use one) or FedAvg's local steps, on fresh public minibatches
drawn from the run's ``public`` stream, so a checkpoint resumes it bit-identically.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..registry import ConfigError


def server_update(sim: Any, gradients: Callable[..., tuple[Tensor, Tensor]]) -> Tensor:
    """``Tensor[d]``: the server's message at ``sim.theta``, a pseudo-gradient like the rows of ``G``.

    D-SGD: the gradient (``gradients(sim, idx)``, the base simulator's batched pass) on
    ``workers.batch_size`` public samples (FLTrust's server uses the clients' batch size;
    ``data.public_batch`` is the size of ``public_loss``'s batches), through ``sim.public_momentum``
    when the workers use momentum; FedAvg: ``fedavg.local_steps`` local SGD steps, one fresh public
    minibatch each, sending ``w_start - w_end``. Engine subclasses' per-worker effects
    (``heavy_tail``'s noise) do not apply.
    """
    if sim.public_idx.numel() == 0:
        raise ConfigError("this rule needs the server's root set: set data.public_size > 0")
    P, B = sim.public_idx.numel(), sim.batch_size
    steps = sim.cfg.fedavg.local_steps if sim.fedavg else 1
    idx = torch.stack([sim.public_idx[torch.randperm(P, generator=sim.gens["public"])[:B]] for _ in range(steps)])
    if sim.fedavg:
        return sim.local_updates(idx.unsqueeze(1))[0][0].detach()  # [K, 1, B]: one client
    g = gradients(sim, idx)[0].detach()  # [1, B]: one worker
    if sim.public_momentum is not None:
        g = sim.public_momentum.step(g, torch.zeros(1, dtype=torch.long, device=g.device))
    return g[0]


def once_per_round(compute: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``compute`` run at the first call and its result returned to later calls: an attack probing the
    rule and the rule itself see the same update, and the ``public`` stream moves once a round."""
    memo: list[Tensor] = []

    def once() -> Tensor:
        if not memo:
            memo.append(compute())
        return memo[0]

    return once
