"""Aggregation rules: one module per rule or small family (``mean``, ``coordinatewise``, ``krum``, ...),
each with its maths and its registered object; ``functional`` gathers the maths. The catalogue
(``byzlearn.catalogue``) lists every rule module; the registries load it on first use."""

from .base import AGGREGATORS, PREAGGREGATORS, AggregationContext, Aggregator, Chain, PreAggregator, build_aggregator


def __getattr__(name: str):
    if name == "functional":  # imported on use: it reads the catalogue, which imports every rule
        import importlib

        return importlib.import_module(f"{__name__}.functional")
    raise AttributeError(f"module 'byzlearn.aggregators' has no attribute {name!r}")


__all__ = ["AGGREGATORS", "PREAGGREGATORS", "AggregationContext", "Aggregator", "Chain", "PreAggregator", "build_aggregator", "functional"]
