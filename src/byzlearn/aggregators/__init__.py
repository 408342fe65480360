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
from . import coordinatewise as _cw, preaggregation as _pre, validation as _val  # noqa: F401
from . import distance as _distance, iterative as _iterative  # noqa: F401
from ..learned import aggregator as _learned  # noqa: F401,E402  (registers "learned")

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
