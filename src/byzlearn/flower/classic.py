"""``ClassicRobustStrategy``: the same robust step for Flower's classic ``Strategy`` API (``server_fn`` apps).

A thin adapter over ``core.RobustAggregation``: ``configure_fit`` records the parameters sent (the
layout replies must have: ``Parameters.tensors``, one ``.npy`` blob per array, positional), and
``aggregate_fit`` reads each ``FitRes`` as hostile input (``records.read_blobs``). A result whose
metrics carry ``byzlearn-byzantine = 1`` is a coalition member's when an ``Adversary`` is set (the
classic ``NumPyClient`` puts it in the metrics it returns). Evaluation losses are aggregated by
their median.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg

from .core import Reply, RobustMixin
from .mods import MARK
from .records import Layout, decode_blobs, read_blobs, unflatten


class ClassicRobustStrategy(RobustMixin, FedAvg):
    """Classic-API FedAvg whose aggregation is a byzlearn rule; the arguments are ``core.RobustMixin``'s."""

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        layout = Layout.of_ndarrays(parameters_to_ndarrays(parameters))
        self._begin(layout, read_blobs(parameters.tensors, layout))
        pairs = super().configure_fit(server_round, parameters, client_manager)
        self._expected = len(pairs)
        return pairs

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        order = {cid: i for i, cid in enumerate(sorted(str(getattr(p, "cid", i)) for i, (p, _) in enumerate(results)))}
        replies = []
        for i, (proxy, res) in enumerate(results):
            node = order[str(getattr(proxy, "cid", i))]
            try:
                if not isinstance(res, FitRes):
                    raise TypeError(f"a {type(res).__name__}, not a FitRes")
                metrics = {k: float(v) for k, v in (res.metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                byz = metrics.pop(MARK, 0.0) == 1.0
                replies.append(Reply(node, decode_blobs(res.parameters.tensors, self.robust.layout), byz, metrics))
            except Exception as e:  # noqa: BLE001 - an unreadable result is malformed, not fatal
                replies.append(Reply(node, f"unreadable result ({type(e).__name__}: {e})"))
        new, metrics = self.robust.step(server_round, replies, max(self._expected, len(results) + len(failures)))
        # a skipped round keeps the model (the parameters sent, unchanged)
        return ndarrays_to_parameters(unflatten(self.robust.sent if new is None else new, self.robust.layout)), metrics

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict[str, Scalar]]:
        losses = [float(r.loss) for _, r in results if isinstance(getattr(r, "loss", None), (int, float)) and np.isfinite(r.loss)]
        return (float(np.median(losses)) if losses else None), {}
