"""byzlearn inside Flower (``pip install 'byzlearn[flower]'``, Flower 1.42).

- ``RobustStrategy``: a Message-API strategy aggregating the clients' replies with any byzlearn
  rule or chain (``ClassicRobustStrategy`` for the classic ``Strategy`` API);
- ``aggregate_records(records, aggregator, f)``: that aggregation step, for a user's own strategy;
- ``byzantine_mod`` + ``Adversary``: Byzantine clients running any byzlearn attack in a simulation
  (``poisoned_labels`` for the data-level ones).

See the README section "Use with Flower" and ``examples/flower/``.
"""

from importlib import import_module
from typing import Any

try:
    import flwr  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("byzlearn.flower needs Flower: pip install 'byzlearn[flower]' (flwr 1.42)") from e

# Imported on first use: a ClientApp (a fresh process every round) that needs only the mod does not
# pay for the server side.
_WHERE = {
    "Adversary": "adversary",
    "ClassicRobustStrategy": "classic",
    "Layout": "records",
    "RobustStrategy": "strategy",
    "aggregate_records": "records",
    "byzantine_mod": "mods",
    "poisoned_labels": "mods",
    "read_record": "records",
    "to_record": "records",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'byzlearn.flower' has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
