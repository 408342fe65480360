"""Aggregation rules: ``functional`` holds the maths, the registered objects wrap it."""

from . import functional
from .base import (
    AGGREGATORS,
    PREAGGREGATORS,
    AggregationContext,
    Aggregator,
    Chain,
    PreAggregator,
    build_aggregator,
)
from . import rules as _rules  # noqa: F401  (registers the rules)

__all__ = [
    "AGGREGATORS",
    "PREAGGREGATORS",
    "AggregationContext",
    "Aggregator",
    "Chain",
    "PreAggregator",
    "build_aggregator",
    "functional",
]
