"""Rank 0 of a decentralised run (``distributed.mode = "decentralized"``): a monitor outside the protocol.

It records the honest peers' reports (training loss, message counts, parameters at evaluation steps)
and the digests of the values they deliver from Byzantine peers, and gives the ``Run`` the engine
interface over them: the worst honest peer's accuracy is the run's ``test_accuracy``, and
``broadcast_conflicts`` counts instances two honest peers delivered differently (``peers``).
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..config import Config
from ..decentralized.agreement import diameter
from ..engine import Simulator
from . import group
from .frames import Frame, Kind, Layout
from .group import World
from .peers import DIGEST_CHUNKS, Stalled
from .protocol import TAG_REPORT
from .transport import Closed, Inbox, Links


class MonitorEngine:
    """Rank 0 of a decentralised run: collects the honest peers' reports; the ``Run`` interface over them."""

    def __init__(self, cfg: Config, world: World):
        self.cfg, self.world = cfg, world
        self.sim = Simulator(cfg)  # the model and the test set; its theta is the common initial model
        self.n = cfg.workers.n
        self.d = self.sim.d
        self.byz = set(self.sim.byzantine.tolist())
        self.honest = [i for i in range(self.n) if i not in self.byz]
        self.inbox = Inbox()
        self.links = Links(world.rank)
        self.links.on_close_inbox = self.inbox
        layout = Layout(torch.float32, {Kind.REPORT: self.d + 3, Kind.DELIVERED: 4 + DIGEST_CHUNKS})
        for p in range(self.n):
            self.links.listen(p + 1, TAG_REPORT, layout, self.inbox)
        self.round = 0
        self.params: dict[int, Tensor] = {h: self.sim.theta.detach().clone() for h in self.honest}
        self.reports: dict[int, dict[int, Tensor]] = {}
        self.gone: set[int] = set()
        self.messages = self.bytes = 0
        self.deliveries: dict[tuple[int, ...], dict[int, tuple[float, ...]]] = {}
        self.last: dict[str, Any] = {}
        self.log: list[str] = []
        group.ready(cfg, world)

    @property
    def device(self) -> torch.device:
        return self.sim.device

    @property
    def aggregator(self) -> SimpleNamespace:
        """What the summary names as the rule: the agreement."""
        return SimpleNamespace(name=f"{self.cfg.distributed.agreement} (decentralised)")

    def _handle(self, src: int, msg: object) -> None:
        peer = src - 1
        if isinstance(msg, Closed):
            if peer in self.honest and peer not in self.gone:
                self.log.append(f"step {self.round}: peer {peer} is gone: {msg.reason}")
            self.gone.add(peer)
        elif isinstance(msg, Frame) and peer in self.honest:
            if msg.kind == Kind.REPORT:
                self.reports.setdefault(msg.round, {})[peer] = msg.payload.clone()
            elif msg.kind == Kind.DELIVERED:
                key = tuple(int(x) for x in msg.payload[:4].tolist())
                self.deliveries.setdefault(key, {})[peer] = tuple(msg.payload[4:].tolist())

    def step(self) -> float:
        t = self.round + 1
        deadline = time.monotonic() + self.cfg.distributed.timeout

        def complete() -> bool:
            got = self.reports.get(t, {})
            return all(h in got or h in self.gone for h in self.honest)

        while not complete():
            item = self.inbox.get(deadline)
            if item is None:
                raise Stalled(f"monitor: no report of step {t} from every honest peer within {self.cfg.distributed.timeout:.0f} s")
            self._handle(*item)
        got = self.reports.pop(t, {})
        for h, payload in got.items():
            self.params[h] = payload[3:]
        if got:
            self.messages = int(sum(float(p[1]) for p in got.values()))
            self.bytes = int(sum(float(p[2]) for p in got.values()))
        self.round = t
        losses = [float(p[0]) for p in got.values()]
        return sum(losses) / len(losses) if losses else math.nan

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        sim = self.sim
        keep = sim.theta.detach().clone()
        accs, losses = [], []
        for h in self.honest:
            if h in self.gone and self.round > 0:
                continue
            sim.theta.copy_(self.params[h].to(sim.device))
            loss, acc = sim.evaluate()
            accs.append(acc)
            losses.append(loss)
        sim.theta.copy_(keep)
        P = torch.stack([self.params[h] for h in self.honest])
        self.last = {"mean_test_accuracy": sum(accs) / len(accs), "param_diameter": diameter(P)}
        return sum(losses) / len(losses), min(accs)

    def extra_metrics(self) -> dict[str, Any]:
        while (item := self.inbox.get_nowait()) is not None:
            self._handle(*item)
        conflicts = sum(1 for v in self.deliveries.values() if len(set(v.values())) > 1)
        return {
            **self.last,
            "peer_messages": self.messages,
            "peer_bytes": self.bytes,
            "byzantine_deliveries": len(self.deliveries),
            "broadcast_conflicts": conflicts,
            "gone_peers": sorted(self.gone),
        }

    def state_dict(self) -> dict[str, Any]:
        state = self.sim.state_dict()
        state["round"] = self.round
        state["peers"] = {h: p.clone() for h, p in self.params.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise RuntimeError("a decentralised run cannot be resumed: the peers' states are not checkpointed")

    def close(self, grace: float = 10.0) -> bool:
        return self.links.receivers_done(grace)
