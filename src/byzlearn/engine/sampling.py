"""Vectorised minibatch sampling: every worker draws its own minibatch from its own shard at once."""

from __future__ import annotations

import torch
from torch import Tensor


class ShardSampler:
    """Draws, for each of n workers, ``batch_size`` distinct indices of its shard (with replacement
    only for a shard smaller than the batch). One ``rand`` and one ``topk`` for all workers: the
    ``batch_size`` smallest of i.i.d. uniform keys are a uniform random subset.
    """

    def __init__(self, shard_index: Tensor, shard_sizes: Tensor, batch_size: int):
        self.index = shard_index  # LongTensor[n, max_size], padded
        self.sizes = shard_sizes  # LongTensor[n]
        self.batch_size = batch_size
        n, max_size = shard_index.shape
        self.k = min(batch_size, max_size)
        self.pad = torch.arange(max_size).unsqueeze(0) >= shard_sizes.unsqueeze(1)  # BoolTensor[n, max_size]
        self.small = bool((shard_sizes < batch_size).any())

    def sample(self, generator: torch.Generator) -> Tensor:
        """Global sample indices, ``LongTensor[n, batch_size]``."""
        n = self.index.shape[0]
        keys = torch.rand(self.index.shape, generator=generator).masked_fill_(self.pad, float("inf"))
        pos = keys.topk(self.k, dim=1, largest=False).indices
        if self.k < self.batch_size:
            pos = torch.cat([pos, torch.zeros(n, self.batch_size - self.k, dtype=torch.long)], dim=1)
        if self.small:  # positions past a short shard's end: draw uniformly from the shard instead
            fill = (torch.rand(n, self.batch_size, generator=generator) * self.sizes.unsqueeze(1)).long()
            invalid = pos >= self.sizes.unsqueeze(1)
            invalid[:, self.k:] = True
            pos = torch.where(invalid, fill, pos)
        return self.index.gather(1, pos)
