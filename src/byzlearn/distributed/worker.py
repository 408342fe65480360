"""Ranks 1..n of a parameter-server run: one worker each, honest or Byzantine per round.

Every worker builds the same simulator as the server from the same config and seed: the data
partition, its shard, the model, the attack and every random stream. Each round it *replays* the
shared streams up to the round it was sent (the simulator draws every worker's minibatch from one
generator, so the worker draws them all and keeps its own row; the round's Byzantine set comes from
the same stream as the server's), which makes its minibatch and role exactly the simulator's, also
after rounds it skipped (slow) and after a server resume (it replays from round 0).

An honest worker computes its message with the simulator's own compute phase for its one row
(``Simulator.honest_messages``: its gradient, one row of the simulator's batched pass; or its momentum,
kept in this process; or, for robust FedAvg when it is sampled, its K local steps) or, under DRACO,
the gradients of its assigned partitions and their encoding, and sends it. A Byzantine worker runs the
attack through the collusion channel. After a server resume, a worker with momentum gets its row of
the checkpoint from the server (tag ``STATE``) before it computes again.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..config import Config
from ..data import Dataset
from ..engine import make_simulator
from ..engine.round import RoundDraw
from . import frames, group
from .collusion import Collusion
from .faults import Fault
from .frames import Frame, Kind, Malformed
from .group import World
from .protocol import TAG_GRAD, TAG_PARAMS, TAG_STATE, MessageSpec
from .transport import Closed, Inbox, Links


class WorkerProcess:
    def __init__(self, cfg: Config, world: World, dataset: Dataset | None = None):
        self.cfg, self.world = cfg, world
        self.sim = make_simulator(cfg, dataset)
        self.n, self.w = cfg.workers.n, world.rank - 1
        self.spec = MessageSpec.of(self.sim)
        self.draco = hasattr(self.sim, "decode")
        self.links = Links(world.rank)
        self.params = Inbox()
        self.links.listen(0, TAG_PARAMS, self.spec.params_layout(), self.params)
        self.state = Inbox()
        if self.sim.momentum is not None:
            self.links.listen(0, TAG_STATE, self.spec.params_layout(), self.state)
        self.collusion = Collusion(self) if cfg.workers.byzantine > 0 else None
        self.next_round = 0
        self.draw: RoundDraw | None = None
        self.roles: tuple[list[int], list[int]] = ([], [])
        self.started = False
        self.notes: list[str] = []
        self.fault = Fault.from_env()
        group.ready(cfg, world)

    def note(self, text: str) -> None:
        if len(self.notes) < 1000:  # bounded: a flood of malformed parameters cannot grow it without end
            self.notes.append(text)

    # -- the shared random streams ------------------------------------------------------------------
    def advance(self, r: int) -> None:
        """Replay the simulator's draw phase (roles, client sampling, minibatches) up to round ``r``."""
        sim = self.sim
        while self.next_round <= r:
            sim.round = self.next_round
            self.draw = sim.draw()
            self.roles = (self.draw.honest.tolist(), self.draw.byzantine.tolist())
            self.next_round += 1

    def restore(self, r: int) -> None:
        """First round seen is ``r > 0`` (a resumed run): take this worker's momentum row from the server."""
        deadline = time.monotonic() + self.cfg.distributed.deadline
        while True:
            item = self.state.get(deadline)
            if item is None:
                self.note(f"round {r}: no momentum state from the server; this worker's momentum restarts from 0")
                return
            msg = item[1]
            if isinstance(msg, Frame) and msg.round == r:
                self.sim.momentum.set_row(self.w, msg.payload.to(self.sim.device))
                return

    # -- messages -------------------------------------------------------------------------------------
    def message(self, poison: bool = False) -> Tensor:
        """This worker's payload: code word (gradient, momentum or local update), [own partition gradient], loss, compute seconds."""
        sim, spec, w = self.sim, self.spec, self.w
        t0 = time.perf_counter()
        if not self.draco:
            g, loss = sim.honest_messages(self.draw, torch.tensor([w], device=sim.device), poison)
            parts = [g[0].detach().cpu().to(spec.dtype)]
            loss = float(loss[0])
        else:
            assigned = sim.assign[w]
            copies, losses = sim.worker_gradients(self.draw.batches[assigned])
            own = int((assigned == w).nonzero())
            if sim.cyclic is None:  # repetition: the group's sum, as every member of the group sends
                word = copies.sum(0).detach().cpu()
            else:  # cyclic: r_w = sum_j W[w, j] g_j over the window, sent as float64 [Re, Im]
                c64 = copies.detach().cpu().double()
                ww = sim.cyclic.window_weights[w]
                word = torch.cat([ww.real @ c64, ww.imag @ c64])
            parts = [word.to(spec.dtype)]
            if spec.fallback:
                parts.append(copies[own].detach().cpu().to(spec.dtype))
            loss = float(losses[own])
        secs = time.perf_counter() - t0
        return torch.cat(parts + [torch.tensor([loss, secs], dtype=spec.dtype)])

    def send(self, r: int, payload: Tensor) -> None:
        injected = self.fault.frames(r, self.world.rank, payload, self.spec.dtype) if self.fault else None
        for frame in injected or [frames.encode(Kind.GRAD, r, self.world.rank, payload, self.spec.dtype)]:
            self.links.send(0, TAG_GRAD, frame)

    # -- the loop -------------------------------------------------------------------------------------
    def latest(self) -> Frame | None:
        """The newest parameters (blocking for the first), skipping stale ones; ``None`` on STOP or server loss."""
        item = self.params.get(None)
        newest: Frame | None = None
        while item is not None:
            src, msg = item
            if isinstance(msg, Closed):
                return None
            if isinstance(msg, Frame):
                if msg.kind == Kind.STOP:
                    return None
                if newest is None or msg.round > newest.round:
                    newest = msg
            elif isinstance(msg, Malformed):
                self.note(f"malformed parameters: {msg}")
            item = self.params.get_nowait()
        return newest if newest is not None else self.latest()

    def run(self) -> int:
        sim, w = self.sim, self.w
        while True:
            frame = self.latest()
            if frame is None:
                break
            r = frame.round
            if r < self.next_round - 1:
                continue
            if self.fault is not None:
                self.fault.before(r)
            self.advance(r)
            if not self.started:
                self.started = True
                if r > 0 and sim.momentum is not None:
                    self.restore(r)
            with torch.no_grad():
                sim.theta.copy_(frame.payload.to(device=sim.device, dtype=sim.theta.dtype))
            draw = self.draw
            if draw.participants is not None and w not in draw.participants.tolist():
                continue  # FedAvg: not sampled this round
            honest, byz = self.roles
            if w in honest or self.collusion is None:
                payload = self.message()
                self.send(r, payload)
                if byz and sim.attack.omniscient and self.collusion is not None:
                    self.collusion.tap(byz[0], r, payload)
                continue
            attack = sim.attack
            own = self.message(poison=attack.poisons_data) if attack.needs_own_gradients else None
            if w == byz[0]:
                row = self.collusion.lead(r, own, draw, sim.theta.detach().clone())
            else:
                row = self.collusion.member(byz[0], r, own)
            if row is not None:
                self.send(r, row)
        self.links.drain(5.0)
        return 0
