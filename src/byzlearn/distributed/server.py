"""Rank 0 of a parameter-server run: the server loop as an engine the ``Run`` drives.

``ServerEngine`` wraps the simulator the config needs (``Simulator`` or ``DracoSimulator``, built
from the same config and seed as every worker's) and reuses its aggregator, optimiser, generators,
evaluation and checkpoint; only ``step`` differs: the gradients come from the worker processes.
It keeps the simulator's sampler and role streams in step as well, so a checkpoint written here is
the simulator's and a distributed run can be resumed by either engine.

Faults. The server waits for the round's messages with a deadline (``distributed.deadline``) and
proceeds as soon as ``q`` of them arrived (``distributed.quorum``; 0 = every live worker); a worker
whose connection closed (crash) is no longer waited for. Messages that do not arrive in time are
*missing* (the rule sees only what arrived; a stale one arriving later is counted *late* and
dropped); malformed frames (wrong size, wrong round, duplicates, a FedAvg client that was not
sampled) are counted and dropped. A round with fewer messages than the rule needs is skipped (no
update). All counters are in the metrics, the summary and the checkpoint.

The round is the simulator's phased round (``engine.round``): ``sim.draw()`` (kept in step with the
workers, which replay it), the messages from the worker processes, then ``sim.update`` (rule and
server update). With worker momentum, the honest messages are the workers' momenta; the server keeps
them in the simulator's buffer so that its checkpoint is the simulator's, and after a resume sends
each worker its row back (tag ``STATE``).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ..config import Config
from ..data import Dataset
from ..engine import make_simulator
from . import frames, group
from .frames import Frame, Kind, Malformed
from .group import World
from .protocol import TAG_GRAD, TAG_PARAMS, TAG_STATE, MessageSpec
from .transport import Closed, Inbox, Links

MAX_EVENTS = 10_000
COUNTERS = ("missing_gradients", "late_gradients", "malformed_messages", "skipped_rounds")


class ServerEngine:
    """The parameter server's rounds over worker processes, with the ``Simulator`` interface ``Run`` uses."""

    def __init__(self, cfg: Config, world: World, dataset: Dataset | None = None):
        self.cfg, self.world = cfg, world
        self.sim = make_simulator(cfg, dataset)
        self.n = cfg.workers.n
        self.spec = MessageSpec.of(self.sim)
        self.draco = hasattr(self.sim, "decode")
        self.inbox = Inbox()
        self.links = Links(world.rank)
        self.links.on_close_inbox = self.inbox
        layout = self.spec.grad_layout()
        for w in range(self.n):
            self.links.listen(w + 1, TAG_GRAD, layout, self.inbox)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.crashed: set[int] = set()
        self.timing = {"round": 0.0, "wait": 0.0, "worker_compute": 0.0, "server": 0.0}
        self.timed_rounds = 0
        self.log: list[str] = []
        group.ready(cfg, world)

    # -- what Run reads -------------------------------------------------------------------------
    @property
    def round(self) -> int:
        return self.sim.round

    @property
    def d(self) -> int:
        return self.sim.d

    @property
    def device(self) -> torch.device:
        return self.sim.device

    @property
    def aggregator(self):
        return self.sim.aggregator

    def evaluate(self) -> tuple[float, float]:
        return self.sim.evaluate()

    @property
    def has_validation(self) -> bool:
        return self.sim.has_validation

    def evaluate_validation(self) -> tuple[float, float]:
        return self.sim.evaluate_validation()

    def extra_metrics(self) -> dict[str, Any]:
        out = dict(self.sim.extra_metrics())
        out.update(self.counters)
        out["crashed_workers"] = sorted(self.crashed)
        if self.timed_rounds:
            out.update({f"dist_{k}_ms": round(1e3 * v / self.timed_rounds, 4) for k, v in self.timing.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        state = self.sim.state_dict()
        state["distributed"] = {"counters": dict(self.counters), "crashed": sorted(self.crashed)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sim.load_state_dict(state)
        extra = state.get("distributed", {})
        self.counters.update(extra.get("counters", {}))
        # processes are new after a resume: every worker is given another chance
        self.crashed = set()
        # worker momentum lives in the worker processes: hand each its row of the checkpoint back
        mom = self.sim.momentum
        if mom is not None and mom.buffer is not None:
            for w in range(self.n):
                self.links.send(w + 1, TAG_STATE, frames.encode(Kind.PARAMS, self.sim.round, 0, mom.buffer[w].detach().cpu()))

    # -- one round ------------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        """An event for ``distributed.log``; bounded, so that a flooding rank cannot grow it without end
        (the counters keep counting)."""
        if len(self.log) < MAX_EVENTS:
            self.log.append(f"round {self.sim.round}: {text}")
        elif len(self.log) == MAX_EVENTS:
            self.log.append(f"round {self.sim.round}: {MAX_EVENTS} events recorded; later ones are only counted")

    def _collect(self, r: int, expected: set[int]) -> dict[int, Tensor]:
        """Round ``r``'s messages by worker index: the first ``q`` of the ``expected`` senders within the deadline."""
        dc = self.cfg.distributed
        quorum = dc.quorum or self.n
        deadline = time.monotonic() + dc.deadline
        rows: dict[int, Tensor] = {}
        while len(rows) < min(quorum, len(expected - self.crashed)):
            item = self.inbox.get(deadline)
            if item is None:
                break
            src, msg = item
            w = src - 1
            if isinstance(msg, Closed):
                if w not in self.crashed:
                    self.crashed.add(w)
                    self._note(f"worker {w} (rank {src}) is gone: {msg.reason}")
            elif isinstance(msg, Malformed):
                self.counters["malformed_messages"] += 1
                self._note(f"malformed message: {msg}")
            else:
                assert isinstance(msg, Frame)
                if msg.round < r:
                    self.counters["late_gradients"] += 1
                elif msg.round > r or w in rows or w not in expected:
                    self.counters["malformed_messages"] += 1
                    self._note(f"worker {w} sent a message for round {msg.round} (duplicate, from the future, or not sampled)")
                else:
                    rows[w] = msg.payload
        return rows

    def step(self) -> float:
        sim = self.sim
        t0 = time.perf_counter()
        r = sim.round
        ctx = sim.aggregation_context()
        draw = sim.draw()  # the workers replay the same draw; keeps the checkpoint the simulator's
        params = frames.encode(Kind.PARAMS, r, 0, sim.theta.detach())
        for w in range(self.n):
            if w not in self.crashed:
                self.links.send(w + 1, TAG_PARAMS, params, latest=True)
        t1 = time.perf_counter()
        expected = set(range(self.n)) if draw.participants is None else set(draw.participants.tolist())
        rows = self._collect(r, expected)
        t2 = time.perf_counter()
        self.counters["missing_gradients"] += len(expected) - len(rows)
        order = sorted(rows)
        honest = set(draw.honest.tolist())
        spec = self.spec
        losses = [float(rows[w][spec.length - 2]) for w in order if w in honest]
        compute = max((float(rows[w][spec.length - 1]) for w in order), default=0.0)
        if self.draco:
            self._draco_update(rows, order, ctx)
        else:
            self._update(rows, order, ctx, honest)
        sim.round += 1
        t3 = time.perf_counter()
        self.timing["round"] += t3 - t0
        self.timing["wait"] += t2 - t1
        self.timing["worker_compute"] += compute
        self.timing["server"] += (t1 - t0) + (t3 - t2)
        self.timed_rounds += 1
        return sum(losses) / len(losses) if losses else float("nan")

    def _update(self, rows: dict[int, Tensor], order: list[int], ctx, honest: set[int]) -> None:
        sim = self.sim
        m = len(order)
        problem = "no message arrived" if m == 0 else sim.aggregator.requirement(m)
        if problem is not None:
            self.counters["skipped_rounds"] += 1
            self._note(f"round skipped: {m} messages, the rule requires {problem}")
            return
        G = torch.stack([rows[w][: self.spec.d] for w in order]).to(device=sim.device, dtype=sim.theta.dtype)
        if sim.momentum is not None:  # an honest message is the worker's momentum: the checkpoint keeps it
            pos = [i for i, w in enumerate(order) if w in honest]
            sim.momentum.observe(G[pos], torch.tensor([order[i] for i in pos], dtype=torch.long))
        sim.update(G, ctx)

    def _draco_update(self, rows: dict[int, Tensor], order: list[int], ctx) -> None:
        """DracoSimulator.step's decoding and fallback on the received code words (missing = erasure)."""
        sim, spec = self.sim, self.spec
        M = torch.full((self.n, spec.D), float("nan"), dtype=spec.dtype)
        for w in order:
            M[w] = rows[w][: spec.D]
        M = M.to(sim.device)
        total, status = sim.decode(M)
        sim.apply_decoded(
            total,
            status,
            lambda: torch.stack([rows[w][spec.D : spec.D + spec.d] for w in order]).to(device=sim.device, dtype=torch.float32),
            ctx,
        )

    # -- the end ----------------------------------------------------------------------------------
    def close(self, grace: float = 3.0) -> bool:
        """STOP every live worker; ``True`` when every link closed in time (the group can be destroyed)."""
        stop = frames.encode(Kind.STOP, self.sim.round, 0)
        for w in range(self.n):
            if w not in self.crashed:
                self.links.send(w + 1, TAG_PARAMS, stop, latest=True)
        sent = self.links.drain(grace)
        return sent and self.links.receivers_done(grace)
