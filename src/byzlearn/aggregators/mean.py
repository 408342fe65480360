"""The arithmetic mean: the non-robust baseline every robust rule is compared with."""

from __future__ import annotations

from torch import Tensor

from ._finite import check_batch, mean_rows
from .base import AGGREGATORS, AggregationContext, Aggregator

__all__ = ["mean", "Mean"]


def mean(G: Tensor) -> Tensor:
    """Arithmetic mean of the rows (the non-robust baseline); a sum that overflows the dtype although
    the rows are finite is recomputed without overflow (``_finite.mean_rows``)."""
    check_batch(G, "mean")
    return mean_rows(G)


@AGGREGATORS.register("mean")
class Mean(Aggregator):
    """Arithmetic mean; not robust (one Byzantine row moves it arbitrarily)."""

    name = "mean"

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return mean(G)
