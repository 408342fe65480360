"""``RobustStrategy``: Flower's Message-API FedAvg with the average replaced by any byzlearn rule or chain.

Configured with the keys of a byzlearn config's ``aggregator`` table
(``RobustStrategy({"name": "trimmed_mean", "pre": ["nnm"]}, f=3)``; a learned aggregator by
``path``). Sampling, messages, evaluation and ``start`` are FedAvg's; ``aggregate_train`` reads
each reply as hostile input against the arrays this round sent (``records.py``) and aggregates
through ``core.RobustAggregation`` (missing, malformed and non-finite replies counted and logged,
never an exception from a reply). Flower's own reply check (``validate_message_reply_consistency``)
is not used: it raises on one inconsistent reply, which would let one client stop the ServerApp.
Federated evaluation metrics are aggregated by the median over the replies, per key.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from .core import Reply, RobustMixin
from .mods import MARK
from .records import Layout, decode_record, read_record, to_record


def _metrics(content: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for record in content.metric_records.values():
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    return out


class RobustStrategy(RobustMixin, FedAvg):
    """Message-API FedAvg whose aggregation is a byzlearn rule (``aggregator``) tolerating ``f``
    Byzantine replies; the arguments are ``core.RobustMixin``'s."""

    def summary(self) -> None:
        super().summary()
        adv = self.robust.adversary
        log(20, "\t└──> byzlearn: rule %r, f = %d, aggregating %s%s", self.robust.rule.name, self.robust.f, self.robust.aggregate,
            f", simulated attack {adv.name!r}" if adv else "")  # fmt: skip

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        layout = Layout.of_record(arrays)
        self._begin(layout, read_record(arrays, layout))
        if self.robust.adversary is not None:
            for k, v in self.robust.adversary.train_config().items():
                config[k] = v
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._expected = len(messages)
        return messages

    def _reply(self, msg: Message) -> Reply:
        node = int(msg.metadata.src_node_id)
        content = msg.content
        arrays = content.array_records
        record = arrays.get(self.arrayrecord_key) if self.arrayrecord_key in arrays else None
        if record is None and len(arrays) == 1:
            record = next(iter(arrays.values()))
        if record is None:
            return Reply(node, f"carries {len(arrays)} ArrayRecords and none named {self.arrayrecord_key!r}")
        metrics = _metrics(content)
        return Reply(node, decode_record(record, self.robust.layout), byzantine=metrics.pop(MARK, 0.0) == 1.0, metrics=metrics)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        ok = []
        for msg in replies:
            try:
                if not msg.has_error():
                    ok.append(self._reply(msg))
            except Exception as e:  # noqa: BLE001 - a reply Flower itself cannot read is malformed, not fatal
                ok.append(Reply(-1, f"unreadable reply ({type(e).__name__}: {e})"))
        new, metrics = self.robust.step(server_round, ok, max(self._expected, len(replies)))
        # a skipped round keeps the model: the arrays sent, returned unchanged (Result.arrays stays the model)
        return to_record(self.robust.sent if new is None else new, self.robust.layout), MetricRecord(metrics)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Per metric key, the median over the replies that carry it as a finite number (robust to a minority of liars)."""
        values: dict[str, list[float]] = {}
        for msg in replies:
            try:
                if msg.has_error():
                    continue
                for k, v in _metrics(msg.content).items():
                    if np.isfinite(v):
                        values.setdefault(k, []).append(v)
            except Exception:  # noqa: BLE001 - an unreadable evaluation reply is ignored
                continue
        return MetricRecord({k: float(np.median(v)) for k, v in sorted(values.items())}) if values else None
