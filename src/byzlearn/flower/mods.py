"""The client side of a simulated coalition: the ClientApp mod that enrols a node, and its poisoned labels.

See ``adversary.py`` for the whole design. Importing this module is cheap (no torch work, no
server code): Flower starts a fresh ``flwr-clientapp`` process for every message, so everything a
ClientApp imports is paid every round.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from flwr.app import Context, Message, MessageType, MetricRecord

MARK = "byzlearn-byzantine"  # in a reply's metrics: sent by an enrolled node
ATTACK_KEY = "byzlearn-attack"  # in the train config: a data-poisoning attack's spec (JSON), for poisoned_labels


def _enrolled(nodes: Iterable[int] | Callable[[Context], bool], key: str) -> Callable[[Context], bool]:
    if callable(nodes):
        return nodes
    chosen = {int(i) for i in nodes}
    return lambda context: int(context.node_config.get(key, -1)) in chosen


def byzantine_mod(nodes: Iterable[int] | Callable[[Context], bool], key: str = "partition-id") -> Callable[..., Message]:
    """A Flower mod (``ClientApp(mods=[byzantine_mod([0, 1, 2])])``) enrolling the nodes whose
    ``node_config[key]`` is in ``nodes`` (or for which ``nodes(context)`` is true) in the coalition."""
    is_byzantine = _enrolled(nodes, key)

    def mod(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not is_byzantine(context):
            return call_next(msg, context)
        for record in msg.content.config_records.values():
            record[MARK] = 1
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        metrics = reply.content.metric_records
        if metrics:
            next(iter(metrics.values()))[MARK] = 1
        else:
            reply.content["byzlearn"] = MetricRecord({MARK: 1})
        return reply

    return mod


def poisoned_labels(msg: Message, y: Any, num_classes: int) -> Any:
    """The labels this client trains on: ``y`` on honest nodes, the data-poisoning attack's on enrolled ones."""
    for record in msg.content.config_records.values():
        if record.get(MARK) == 1 and ATTACK_KEY in record:
            from ..attacks import build_attack  # only on an enrolled node of a data-poisoning run

            return build_attack(json.loads(str(record[ATTACK_KEY]))).poison_labels(y, num_classes)
    return y
