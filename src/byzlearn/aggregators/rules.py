"""Registered aggregator objects around ``functional``."""

from __future__ import annotations

from torch import Tensor

from . import functional as F
from .base import AGGREGATORS, AggregationContext, Aggregator


@AGGREGATORS.register("mean")
class Mean(Aggregator):
    """Arithmetic mean; not robust (one Byzantine row moves it arbitrarily)."""

    name = "mean"

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return F.mean(G)
