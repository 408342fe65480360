"""An in-process Flower Grid for the strategy tests: each message goes to a Python client function.

Flower's real transport is tested end to end in ``test_flower_e2e.py``; this grid lets the unit
tests drive ``Strategy.start`` round by round without processes (node ids 101, 102, ...).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

Client = Callable[[Message, Context], "Message | None"]


class LocalGrid(Grid):
    """``n`` nodes; ``client(msg, context)`` answers (``None``: the node does not reply)."""

    def __init__(self, n: int, client: Client, run_config: dict | None = None):
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1  # what a ServerApp process has
        self.n, self.client = n, client
        self.contexts = {
            101 + i: Context(
                run_id=1,
                node_id=101 + i,
                node_config={"partition-id": i, "num-partitions": n},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )  # fmt: skip
            for i in range(n)
        }
        self.sent: list[Message] = []

    @property
    def run(self):  # noqa: D401 - Grid's abstract property
        return None

    def set_run(self, run) -> None:
        pass

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for msg in messages:
            self.sent.append(msg)
            reply = self.client(msg, self.contexts[msg.metadata.dst_node_id])
            if reply is not None:
                out.append(reply)
        return out


def reply(msg: Message, arrays: dict[str, np.ndarray] | ArrayRecord, **metrics: float) -> Message:
    record = arrays if isinstance(arrays, ArrayRecord) else ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": record, "metrics": MetricRecord({"num-examples": 10, **metrics})}), reply_to=msg)


def record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})
