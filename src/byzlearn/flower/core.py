"""One robust aggregation step, shared by the Message-API and the classic strategy.

The strategies turn Flower's replies into ``Reply`` objects (the sender, the flat row or the
reason it is malformed, whether the simulated adversary controls it); ``RobustAggregation.step``
then does what byzlearn's parameter server does with the messages of a round
(``distributed/server.py``): malformed replies are counted and dropped, non-finite ones are counted
and passed to the rule (which tolerates up to ``f`` of them), a round with fewer replies than the
rule needs is skipped (no update), and every counter is logged and returned with the round's
metrics. The declared ``f`` is the rule's, whatever number of replies arrived.

``aggregate = "updates"`` (default) aggregates each reply's difference to the arrays the server
sent (so norm-based pre-aggregators such as clipping and stateful rules such as centered clipping
see updates, as in the simulator) and adds the result back; ``"weights"`` aggregates the weights
themselves (Flower's built-in strategies; the same result for translation-equivariant rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Callable, Literal

import torch
from flwr.common.logger import log
from torch import Tensor

from ..aggregators import AggregationContext, Aggregator
from ..registry import ConfigError
from .adversary import Adversary
from .records import Layout, Row, as_aggregator, stack

COUNTERS = ("replies", "missing", "malformed", "nonfinite", "byzantine", "skipped_rounds")


@dataclass
class Reply:
    node: int
    row: Row | str  # the decoded arrays (records.decode_*), or why the reply is malformed
    byzantine: bool = False  # controlled by the simulated adversary (only read when one is set)
    metrics: dict[str, float] = field(default_factory=dict)


class RobustAggregation:
    """The rule (or chain), the declared ``f``, the optional simulated adversary, and the run's counters."""

    def __init__(
        self,
        aggregator: str | dict[str, Any] | Aggregator = "mean",
        f: int = 0,
        aggregate: Literal["updates", "weights"] = "updates",
        adversary: Adversary | None = None,
        public_loss: Callable[[Tensor], Tensor] | None = None,
    ):
        if aggregate not in ("updates", "weights"):
            raise ConfigError(f"aggregate must be 'updates' or 'weights', got {aggregate!r}")
        if adversary is not None and not isinstance(adversary, Adversary):
            raise ConfigError(f"adversary must be a byzlearn.flower.Adversary, got {type(adversary).__name__}")
        self.rule = as_aggregator(aggregator, f)
        if self.rule.needs_public_update:
            raise ConfigError(
                f"aggregator {self.rule.name!r} needs the server's own update on its root set every round, which the "
                "Flower strategy does not compute: run it with byzlearn's simulator or parameter server (byzlearn run)"
            )
        if self.rule.needs_public_batch and public_loss is None:
            raise ConfigError(
                f"aggregator {self.rule.name!r} reads the server's public batch: pass public_loss=(Tensor[k, d] -> Tensor[k])"
            )
        self.f, self.aggregate, self.adversary, self.public_loss = self.rule.f, aggregate, adversary, public_loss
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.layout: Layout | None = None
        self.sent: Tensor | None = None

    def begin(self, layout: Layout, sent: Tensor) -> None:
        """The arrays the server sends this round: the layout replies must have and, for updates, the origin."""
        self.layout, self.sent = layout, sent

    def step(self, server_round: int, replies: list[Reply], expected: int) -> tuple[Tensor | None, dict[str, float]]:
        """The new flat model (``None``: round skipped) and the round's counts, from the round's replies."""
        assert self.layout is not None and self.sent is not None, "begin() comes before step()"
        counts = dict.fromkeys(COUNTERS, 0)
        counts["replies"] = len(replies)
        counts["missing"] = max(expected - len(replies), 0)
        seen: set[int] = set()
        good: list[Reply] = []
        for rep in sorted(replies, key=lambda r: r.node):
            problem = rep.row if isinstance(rep.row, str) else ("a second reply from this node" if rep.node in seen else None)
            seen.add(rep.node)
            if problem is not None:
                counts["malformed"] += 1
                log(WARNING, "byzlearn: round %d: reply of node %d dropped: %s", server_round, rep.node, problem)
                continue
            good.append(rep)
        new, metrics = None, {}
        if good:
            G = stack([r.row for r in good], self.layout)  # type: ignore[misc]
            if self.aggregate == "updates":
                G -= self.sent.to(G.dtype)
            byz = torch.tensor([i for i, r in enumerate(good) if r.byzantine and self.adversary is not None], dtype=torch.long)
            ctx = AggregationContext(round=server_round, params=self.sent, public_loss=self.public_loss, owns_batch=True)
            if self.adversary is not None and byz.numel():
                counts["byzantine"] = int(byz.numel())
                G = self.adversary.forge(G, byz, self.sent, self.rule, ctx, server_round)
            counts["nonfinite"] = int((~torch.isfinite(G).all(dim=1)).sum())
            new = self._apply(server_round, G, ctx)
            honest = [r for r in good if not (r.byzantine and self.adversary is not None)]
            metrics = _mean_metrics([r.metrics for r in honest])
        if new is None:
            counts["skipped_rounds"] = 1
        for k, v in counts.items():
            self.counters[k] += v
        log(INFO, "byzlearn: round %d: %s", server_round, ", ".join(f"{k} {v}" for k, v in counts.items()))
        metrics.update({f"byzlearn-{k}": float(v) for k, v in counts.items()})
        return new, metrics

    def _apply(self, server_round: int, G: Tensor, ctx: AggregationContext) -> Tensor | None:
        problem = "no reply" if G.shape[0] == 0 else self.rule.requirement(G.shape[0])
        if problem is not None:
            log(WARNING, "byzlearn: round %d skipped: %d replies, %r requires %s", server_round, G.shape[0], self.rule.name, problem)
            return None
        try:
            out = self.rule(G, ctx)
        except Exception as e:  # noqa: BLE001 - a rule that cannot run on this round's replies skips it, the run goes on
            log(WARNING, "byzlearn: round %d skipped: %r failed on the replies (%s)", server_round, self.rule.name, e)
            return None
        out = out.to(self.sent.dtype)
        return self.sent + out if self.aggregate == "updates" else out


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per key, the mean of the finite values of the rows that carry it (training metrics are for logging only)."""
    out = {}
    for k in sorted({k for row in rows for k in row}):
        vals = [v for v in (row[k] for row in rows if k in row) if v == v and abs(v) != float("inf")]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


class RobustMixin:
    """What both strategies add to their API's FedAvg (``class S(RobustMixin, FedAvg)``): the arguments,
    the ``RobustAggregation`` and its ``counters``, the number of nodes sampled this round.

    ``aggregate``: ``"updates"`` (default; reply minus sent arrays, aggregated, added back) or
    ``"weights"``. ``adversary``: a ``byzlearn.flower.Adversary`` for simulations with
    ``byzantine_mod`` clients. ``public_loss``: for rules that read the server's public batch (Zeno,
    ARNN). Every other keyword is FedAvg's (``fraction_train``, ``min_available_nodes``, ...).
    ``counters`` holds the run's totals of replies, missing, malformed, non-finite, Byzantine and
    skipped rounds; each round's counts are in its train metrics as ``byzlearn-<counter>``.
    """

    def __init__(
        self,
        aggregator: str | dict[str, Any] | Aggregator = "mean",
        f: int = 0,
        *,
        aggregate: Literal["updates", "weights"] = "updates",
        adversary: Adversary | None = None,
        public_loss: Callable[[Tensor], Tensor] | None = None,
        **fedavg: Any,
    ):
        super().__init__(**fedavg)
        self.robust = RobustAggregation(aggregator, f, aggregate, adversary, public_loss)
        self._expected = 0

    @property
    def counters(self) -> dict[str, int]:
        return self.robust.counters

    def _begin(self, layout: Layout, sent: Tensor | str) -> None:
        assert not isinstance(sent, str), f"the server's own arrays are unreadable: {sent}"
        self.robust.begin(layout, sent)
