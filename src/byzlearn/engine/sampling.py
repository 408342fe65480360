"""Vectorised minibatch sampling: every worker draws its own minibatch from its own shard at once."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class ShardSampler:
    """Epochs over each worker's shard, for all workers at once.

    Each worker walks through a random permutation of its shard ``batch_size`` samples at a time
    and reshuffles when fewer than ``batch_size`` unseen samples remain (an epoch with drop-last,
    as a ``DataLoader(shuffle=True, drop_last=True)`` per worker would do). A shard smaller than
    one batch is sampled with replacement. Per round this costs one ``gather``; a reshuffle (one
    ``rand`` + ``argsort`` over the workers whose epoch ended) happens once per epoch.
    """

    def __init__(self, shard_index: Tensor, shard_sizes: Tensor, batch_size: int):
        self.index = shard_index  # LongTensor[n, max_size], padded
        self.sizes = shard_sizes  # LongTensor[n]
        self.batch_size = batch_size
        n, max_size = shard_index.shape
        self.pad = torch.arange(max_size).unsqueeze(0) >= shard_sizes.unsqueeze(1)
        self.small = shard_sizes < batch_size
        self.any_small = bool(self.small.any())
        self.steps = torch.arange(batch_size).unsqueeze(0)
        self.order = torch.zeros(n, max_size, dtype=torch.long)
        self.cursor = shard_sizes.clone()  # every epoch "ended": the first call shuffles

    def _shuffle(self, rows: Tensor, generator: torch.Generator) -> None:
        keys = torch.rand(rows.numel(), self.index.shape[1], generator=generator).masked_fill_(self.pad[rows], float("inf"))
        self.order[rows] = keys.argsort(dim=1)
        self.cursor[rows] = 0

    def sample(self, generator: torch.Generator) -> Tensor:
        """Global sample indices, ``LongTensor[n, batch_size]``."""
        ended = (self.cursor + self.batch_size > self.sizes) & ~self.small
        if bool(ended.any()):
            self._shuffle(ended.nonzero().squeeze(1), generator)
        cols = (self.cursor.unsqueeze(1) + self.steps).clamp_max_(self.index.shape[1] - 1)
        pos = self.order.gather(1, cols)
        if self.any_small:
            fill = (torch.rand(pos.shape, generator=generator) * self.sizes.unsqueeze(1)).long()
            pos = torch.where(self.small.unsqueeze(1), fill, pos)
        self.cursor += self.batch_size
        return self.index.gather(1, pos)

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order.clone(), "cursor": self.cursor.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.copy_(state["order"])
        self.cursor.copy_(state["cursor"])
