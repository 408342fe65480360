"""Aggregation rules: ``functional`` holds the maths, the registered objects wrap it."""

from . import functional
from .base import AGGREGATORS, PREAGGREGATORS, AggregationContext, Aggregator, Chain, PreAggregator, build_aggregator

# isort: split
# registration: importing a family module registers its rules; the learned rule last (it imports the base)
from . import coordinatewise, distance, iterative, preaggregation, rules, validation  # noqa: F401

# isort: split
from ..learned import aggregator as _learned  # noqa: F401  (registers "learned")

__all__ = ["AGGREGATORS", "PREAGGREGATORS", "AggregationContext", "Aggregator", "Chain", "PreAggregator", "build_aggregator", "functional"]
