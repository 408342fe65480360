"""Decentralised learning on real processes: LEARN with averaging agreement over point-to-point messages.

No server: ranks 1..n are peers, each with its own parameters and shard; rank 0 is a *monitor* that
records the honest peers' test accuracy (the worst one is the run's ``test_accuracy``) and takes no
part in the protocol. Every step ``t`` (``decentralized.learning`` is the single-process simulation
of the same algorithm): each honest peer computes its gradient, runs ``N_t = 1 + ceil(log2 t)``
(capped by ``distributed.grad_rounds``) rounds of averaging agreement on the gradients, takes an
optimiser step, and runs ``distributed.model_rounds`` rounds of agreement on the parameters.

One agreement round, ``agreement = "rb_trimmed_mean"`` (n >= 3f + 1), as ``decentralized.agreement``
defines it but with real messages (tag ``PEER``; a frame's header carries the step, the instance's
origin, the phase and the round):

1. the peer reliably broadcasts its vector with Bracha's protocol: ``INIT(v)`` to all; on the
   origin's ``INIT`` a peer sends ``ECHO(v)`` to all; on more than ``(n + f) / 2`` ``ECHO(v)`` or
   ``f + 1`` ``READY(v)`` it sends ``READY(v)`` (once); on ``2f + 1`` ``READY(v)`` it delivers ``v``.
   Values are compared by a digest, every message carries the vector (the textbook protocol);
2. after ``n - f`` deliveries it reliably broadcasts its report (which origins it delivered);
3. it accepts a witness once it has delivered every value of that witness's report; with ``n - f``
   witnesses it replaces its vector by the coordinate-wise trimmed mean (f per side) of every value
   it has delivered. Messages are processed as they arrive (the OS schedules them: no simulated
   adversarial order); a peer keeps relaying other instances while it waits.

``gossip`` and ``mda`` send the vector once (``PLAIN``) and aggregate the first ``n - f`` received.

Byzantine peers (the simulator's fixed Byzantine set) are rushing: they wait for the honest
vectors of the round (every honest peer sends them its vector anyway) and then send what
``distributed.byzantine_peers`` says: ``attack`` (the config's attack through
``decentralized.Adversary``: the same vector to every peer), ``equivocate`` (a different vector to
each side of the honest peers, with ECHO and READY support for each side's value from every
Byzantine peer: the strongest attack on the broadcast's consistency) or ``silent``. Each honest peer
tells the monitor the digest of every value it delivers from a Byzantine origin, so the run counts
deliveries and *conflicts* (two honest peers delivering different values of one instance: reliable
broadcast rules this out).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..aggregators import functional as AF
from ..config import Config
from ..decentralized.adversary import Adversary
from ..decentralized.agreement import agreement_rounds
from ..decentralized.broadcast import echo_threshold
from ..engine import Simulator
from . import frames, group
from .frames import Frame, Kind, Layout, Malformed
from .group import World
from .protocol import TAG_PEER, TAG_REPORT
from .transport import Closed, Inbox, Links

GRAD, MODEL = 0, 1  # phases of a step
DIGEST_CHUNKS = 8  # a 16-byte digest as eight exact 16-bit numbers


def digest(v: Tensor) -> bytes:
    return hashlib.blake2b(v.contiguous().numpy().tobytes(), digest_size=16).digest()


def digest_numbers(dg: bytes) -> Tensor:
    return torch.tensor([int.from_bytes(dg[2 * i : 2 * i + 2], "little") for i in range(DIGEST_CHUNKS)], dtype=torch.float32)


@dataclass
class Instance:
    """Bracha state of one broadcast instance at one peer."""

    echoed: bool = False
    readied: bool = False
    delivered: bool = False
    echo: dict[bytes, set[int]] = field(default_factory=dict)
    ready: dict[bytes, set[int]] = field(default_factory=dict)
    payload: dict[bytes, Tensor] = field(default_factory=dict)
    echo_from: set[int] = field(default_factory=set)
    ready_from: set[int] = field(default_factory=set)


def _vote(inst: Instance, peer: int, v: Tensor, senders: set[int], votes: dict[bytes, set[int]]) -> tuple[bytes, set[int]] | None:
    """Record ``peer``'s ECHO or READY for ``v`` (its first only): the value's digest and who voted for it so far;
    ``None`` for a repeated vote."""
    if peer in senders:
        return None
    senders.add(peer)
    dg = digest(v)
    inst.payload.setdefault(dg, v)
    who = votes.setdefault(dg, set())
    who.add(peer)
    return dg, who


class Stalled(RuntimeError):
    pass


class PeerProcess:
    """One peer (rank ``j + 1``), honest or Byzantine."""

    def __init__(self, cfg: Config, world: World):
        self.cfg, self.world = cfg, world
        self.sim = Simulator(cfg)
        self.n, self.f = cfg.workers.n, cfg.workers.byzantine
        self.j = world.rank - 1
        self.byz = sorted(self.sim.byzantine.tolist())
        self.honest = [i for i in range(self.n) if i not in self.byz]
        self.is_byz = self.j in self.byz
        self.d = self.sim.d
        self.P = max(self.d, self.n)
        self.thr = echo_threshold(self.n, self.f)
        dc = cfg.distributed
        self.rb = dc.agreement == "rb_trimmed_mean"
        self.adversary = None
        if self.is_byz and dc.byzantine_peers != "silent":
            if dc.byzantine_peers == "equivocate":
                self.adversary = Adversary("equivocate")
            else:
                self.adversary = Adversary(cfg.attack["name"], **{k: v for k, v in cfg.attack.items() if k != "name"})
        layout = Layout(torch.float32, {Kind.INIT: self.P, Kind.ECHO: self.P, Kind.READY: self.P, Kind.PLAIN: self.P, Kind.DONE: 0})
        self.inbox = Inbox()
        self.links = Links(world.rank)
        self.links.on_close_inbox = self.inbox
        for p in range(self.n):
            if p != self.j:
                self.links.listen(p + 1, TAG_PEER, layout, self.inbox)
        self.instances: dict[tuple[int, int, int, int], Instance] = {}
        self.values: dict[tuple[int, int, int], dict[int, Tensor]] = {}  # delivered (rb) or received (plain), in order
        self.reports: dict[tuple[int, int, int], dict[int, set[int]]] = {}
        self.inits: dict[tuple[int, int, int], dict[int, Tensor]] = {}  # Byzantine peers: the honest vectors they saw
        self.done: set[int] = set()
        self.gone: set[int] = set()
        self.malformed = 0
        self.floor = 0  # steps below this are forgotten
        group.ready(cfg, world)

    # -- sending ---------------------------------------------------------------------------------
    def _frame(self, kind: Kind, key: tuple[int, int, int, int], v: Tensor) -> Tensor:
        t, b, c, origin = key
        pad = torch.zeros(self.P, dtype=torch.float32)
        pad[: v.numel()] = v
        return frames.encode(kind, t, self.world.rank, pad, a=origin, b=b, c=c)

    def _to(self, peer: int, frame: Tensor) -> None:
        if peer not in self.gone:
            self.links.send(peer + 1, TAG_PEER, frame)

    def _all(self, kind: Kind, key: tuple[int, int, int, int], v: Tensor) -> None:
        frame = self._frame(kind, key, v)
        for p in range(self.n):
            if p != self.j:
                self._to(p, frame)
        if kind == Kind.PLAIN:
            self._plain(self.j, key, v)
        else:
            self._bracha(self.j, kind, key, v)

    # -- receiving -------------------------------------------------------------------------------
    def _handle(self, src: int, msg: object) -> None:
        peer = src - 1
        if isinstance(msg, Closed):
            self.gone.add(peer)
            return
        if isinstance(msg, Malformed):
            self.malformed += 1
            return
        assert isinstance(msg, Frame)
        if msg.kind == Kind.DONE:
            self.done.add(peer)
            return
        if msg.round < self.floor or not (0 <= msg.a < self.n):
            return
        key = (msg.round, msg.b, msg.c, msg.a)
        size = self.n if msg.b % 2 else self.d
        v = msg.payload[:size]
        if msg.kind == Kind.PLAIN:
            self._plain(peer, key, v)
        elif self.is_byz:
            if msg.kind == Kind.INIT and peer == msg.a and msg.b % 2 == 0:
                self.inits.setdefault(key[:3], {}).setdefault(peer, v)
        else:
            self._bracha(peer, msg.kind, key, v)

    def _plain(self, peer: int, key: tuple[int, int, int, int], v: Tensor) -> None:
        if peer != key[3]:
            return
        rnd = key[:3]
        if self.is_byz:
            self.inits.setdefault(rnd, {}).setdefault(peer, v)
        else:
            self.values.setdefault(rnd, {}).setdefault(peer, v)

    def _bracha(self, peer: int, kind: Kind, key: tuple[int, int, int, int], v: Tensor) -> None:
        inst = self.instances.get(key)
        if inst is None:
            inst = self.instances[key] = Instance()
        if kind == Kind.INIT:
            if peer != key[3] or inst.echoed:
                return
            inst.echoed = True
            self._all(Kind.ECHO, key, v)
        elif kind == Kind.ECHO:
            vote = _vote(inst, peer, v, inst.echo_from, inst.echo)
            if vote is None:
                return
            dg, who = vote
            if len(who) >= self.thr and not inst.readied:
                inst.readied = True
                self._all(Kind.READY, key, inst.payload[dg])
        elif kind == Kind.READY:
            vote = _vote(inst, peer, v, inst.ready_from, inst.ready)
            if vote is None:
                return
            dg, who = vote
            if len(who) >= self.f + 1 and not inst.readied:
                inst.readied = True
                self._all(Kind.READY, key, inst.payload[dg])
            if len(who) >= 2 * self.f + 1 and not inst.delivered:
                inst.delivered = True
                self._deliver(key, inst.payload[dg], dg)

    def _deliver(self, key: tuple[int, int, int, int], v: Tensor, dg: bytes) -> None:
        t, b, c, origin = key
        if b % 2 == 0:
            self.values.setdefault((t, b, c), {})[origin] = v
            if origin in self.byz:
                payload = torch.cat([torch.tensor([t, b, c, origin], dtype=torch.float32), digest_numbers(dg)])
                self.links.send(0, TAG_REPORT, frames.encode(Kind.DELIVERED, t, self.world.rank, payload))
        else:  # a report: exactly n - f distinct origins, else it is Byzantine garbage and ignored
            mask = v[: self.n]
            ones = mask == 1
            if bool(((mask == 0) | ones).all()) and int(ones.sum()) == self.n - self.f:
                self.reports.setdefault((t, b - 1, c), {})[origin] = set(ones.nonzero().flatten().tolist())

    def _pump(self, until: Callable[[], bool], what: str, patience: float | None = None, fail: bool = True) -> bool:
        """Process messages until ``until()``; ``patience`` seconds without one: give up (``Stalled`` if ``fail``)."""
        patience = self.cfg.distributed.timeout if patience is None else patience
        while not until():
            item = self.inbox.get(time.monotonic() + patience)
            if item is None:
                if fail:
                    raise Stalled(f"peer {self.j}: no message for {patience:.0f} s while {what}")
                return False
            self._handle(*item)
        return True

    # -- one agreement round -------------------------------------------------------------------------
    def agree(self, t: int, phase: int, k: int, vec: Tensor) -> Tensor:
        n, f = self.n, self.f
        rnd = (t, 2 * phase, k)
        if not self.rb:
            self._all(Kind.PLAIN, (*rnd, self.j), vec)
            self._pump(lambda: len(self.values.get(rnd, {})) >= n - f, f"waiting for n - f vectors of step {t}")
            G = torch.stack(list(self.values[rnd].values())[: n - f])
            return G.mean(0) if self.cfg.distributed.agreement == "gossip" else AF.mda(G, f)
        self._all(Kind.INIT, (*rnd, self.j), vec)
        state = {"reported": False}

        def finished() -> bool:
            vals = self.values.get(rnd, {})
            if not state["reported"]:
                if len(vals) < n - f:
                    return False
                mask = torch.zeros(n)
                mask[list(vals)[: n - f]] = 1.0
                state["reported"] = True
                self._all(Kind.INIT, (t, 2 * phase + 1, k, self.j), mask)
            reps = self.reports.get(rnd, {})
            have = set(vals)
            return sum(1 for S in reps.values() if S <= have) >= n - f

        self._pump(finished, f"agreeing in step {t}, round {k}")
        V = torch.stack(list(self.values[rnd].values()))
        return AF.trimmed_mean(V, f)

    def byzantine_round(self, t: int, phase: int, k: int) -> None:
        """Rushing Byzantine peer: wait for the honest vectors of the round, then send what the behaviour says."""
        rnd = (t, 2 * phase, k)
        live = [h for h in self.honest if h not in self.gone]
        self._pump(
            lambda: all(h in self.inits.get(rnd, {}) or h in self.gone for h in live),
            "waiting for honest vectors",
            patience=self.cfg.distributed.deadline,
            fail=False,
        )
        seen = self.inits.get(rnd, {})
        targets = [h for h in self.honest if h in seen]
        if self.adversary is None or not targets:
            return
        Z = torch.stack([seen[h] for h in targets])
        try:
            forged = self.adversary.forge(Z, self.n, self.f, k, self.sim.gens["attack"])
        except Exception:  # noqa: BLE001 - an attack that cannot forge sends nothing this round
            return
        for i, h in enumerate(targets):
            for pos, b in enumerate(self.byz):
                vid = int(forged.assign[pos, i])
                if vid < 0:
                    continue
                v = forged.values[pos, vid]
                if not self.rb:
                    if b == self.j:
                        self._to(h, self._frame(Kind.PLAIN, (*rnd, b), v))
                    continue
                key = (*rnd, b)
                if b == self.j:
                    self._to(h, self._frame(Kind.INIT, key, v))
                self._to(h, self._frame(Kind.ECHO, key, v))  # "split" support of every Byzantine origin's value
                self._to(h, self._frame(Kind.READY, key, v))

    # -- the loop ----------------------------------------------------------------------------------
    def _forget(self, t: int) -> None:
        self.floor = max(0, t - 5)
        for store in (self.values, self.reports, self.inits):
            for key in [k for k in store if k[0] < self.floor]:
                del store[key]
        for key in [k for k in self.instances if k[0] < self.floor]:
            del self.instances[key]

    def run(self) -> int:
        sim, dc = self.sim, self.cfg.distributed
        cap = dc.grad_rounds or None
        for t in range(1, self.cfg.train.rounds + 1):
            draw = sim.draw()  # every peer replays the draw phase (its own minibatch among all)
            N = agreement_rounds(t, cap)
            if self.is_byz:
                for k in range(N):
                    self.byzantine_round(t, GRAD, k)
                for k in range(dc.model_rounds):
                    self.byzantine_round(t, MODEL, k)
                self._forget(t)
                continue
            g, loss = sim.honest_messages(draw, torch.tensor([self.j], device=sim.device))  # gradient or momentum
            z = g[0].detach()
            for k in range(N):
                z = self.agree(t, GRAD, k, z)
            sim.apply_update(z)
            th = sim.theta.detach().clone()
            for k in range(dc.model_rounds):
                th = self.agree(t, MODEL, k, th)
            th = torch.nan_to_num(th, nan=0.0, posinf=1e6, neginf=-1e6)
            with torch.no_grad():
                sim.theta.copy_(th)
            st = self.links.stats
            payload = torch.cat([torch.tensor([float(loss[0]), st.messages_sent, st.sent], dtype=torch.float32), th.float().cpu()])
            self.links.send(0, TAG_REPORT, frames.encode(Kind.REPORT, t, self.world.rank, payload))
            self._forget(t)
        # keep relaying until every other peer is done too (it may still need this peer's ECHO/READY)
        done = frames.encode(Kind.DONE, 0, self.world.rank)
        for p in range(self.n):
            if p != self.j:
                self._to(p, done)
        others = set(range(self.n)) - {self.j}
        self._pump(lambda: others <= self.done | self.gone, "waiting for the other peers to finish", fail=False)
        self.links.drain(5.0)
        return 0
