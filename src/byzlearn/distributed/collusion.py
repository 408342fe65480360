"""The collusion channel: how the Byzantine worker processes act as one adversary.

The attacks of the catalogue forge the ``f`` Byzantine rows *jointly* (``Attack.forge`` returns
``Tensor[k <= f, D]``), and the omniscient ones (ALIE, IPM, Mimic, the adaptive attacks, sign flip
of the honest mean) read the honest messages of the round. In a real deployment nothing gives a
worker another worker's gradient, so the runtime makes that knowledge an explicit channel (tag
``COLLUDE``):

- each round, the lowest-index Byzantine worker is the coalition's *leader*; it runs the attack
  code (its own copy of the attack, the rule and the attack's random stream);
- if the attack is omniscient, every honest worker also sends its message to the leader (``TAP``):
  this models an adversary that observes every honest message in transit before sending its own
  (a rushing, network-wide eavesdropper: the standard omniscient threat model of those papers);
  non-omniscient attacks get no taps and see no honest message;
- if the attack needs the Byzantine workers' own honest messages (sign flip of the own gradient,
  label flipping, bit flips), the other Byzantine workers send theirs to the leader (``OWN``);
- the leader forges the rows and sends each member its row (``FORGED``) or ``DROP`` (it sends
  nothing to the server: the dropped-messages attack); each Byzantine worker then sends its row to
  the server under its own rank, like any message.

The leader waits for the taps and own messages at most half the server's deadline, so that the
forged rows can still make the round. With a fixed Byzantine set the leader is always the same
process, its attack stream advances exactly like the simulator's, and randomised attacks follow
the simulator's trajectory too; with ``byzantine_set = "redraw"`` the leader changes and a
randomised attack draws from that process's copy of the stream (deterministic attacks are
unaffected).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..attacks import AttackContext
from ..engine.round import AttackContractError, forge
from . import frames
from .frames import Frame, Kind, Malformed
from .protocol import TAG_COLLUDE
from .transport import Closed, Inbox


class Collusion:
    """One worker's end of the channel (``worker`` is its ``WorkerProcess``)."""

    def __init__(self, worker):
        self.wk = worker
        self.inbox = Inbox()
        self.held: dict[tuple[int, int, Kind], Frame] = {}  # (round, worker, kind) received ahead of use
        layout = worker.spec.collude_layout()
        for other in range(worker.n):
            if other != worker.w:
                worker.links.listen(other + 1, TAG_COLLUDE, layout, self.inbox)

    def send(self, to: int, kind: Kind, r: int, payload: Tensor | None) -> None:
        wk = self.wk
        wk.links.send(to + 1, TAG_COLLUDE, frames.encode(kind, r, wk.world.rank, payload, wk.spec.dtype))

    def _wait(self, r: int, wanted: set[tuple[int, Kind]], deadline: float) -> dict[tuple[int, Kind], Frame]:
        """Frames of round ``r`` from ``(worker, kind)`` pairs in ``wanted``, until all came or the deadline."""
        got: dict[tuple[int, Kind], Frame] = {}
        for key in list(wanted):
            frame = self.held.pop((r, *key), None)
            if frame is not None:
                got[key] = frame
        while len(got) < len(wanted):
            item = self.inbox.get(deadline)
            if item is None:
                break
            src, msg = item
            if isinstance(msg, (Closed, Malformed)):
                continue
            assert isinstance(msg, Frame)
            key = (src - 1, msg.kind)
            if msg.kind == Kind.DROP:
                key = (src - 1, Kind.FORGED)
            if msg.round == r and key in wanted:
                got[key] = msg
            elif msg.round > r:
                self.held[(msg.round, *key)] = msg
        for key in [k for k in self.held if k[0] < r]:  # stale: a round this process has left
            del self.held[key]
        return got

    # -- roles ------------------------------------------------------------------------------------
    def tap(self, leader: int, r: int, payload: Tensor) -> None:
        """An honest worker's message, mirrored to the leader (omniscient attacks only)."""
        self.send(leader, Kind.TAP, r, payload)

    def member(self, leader: int, r: int, own: Tensor | None) -> Tensor | None:
        """A Byzantine worker other than the leader: hand over its own message, get its row (None: drop)."""
        if own is not None:
            self.send(leader, Kind.OWN, r, own)
        deadline = time.monotonic() + self.wk.cfg.distributed.deadline
        got = self._wait(r, {(leader, Kind.FORGED)}, deadline)
        frame = got.get((leader, Kind.FORGED))
        if frame is None or frame.kind == Kind.DROP:
            return None
        return frame.payload.clone()

    def lead(self, r: int, own: Tensor | None, draw, theta: Tensor) -> Tensor | None:
        """The leader: collect, forge the coalition's rows, hand them out; returns its own row (None: drop)."""
        wk = self.wk
        sim, spec = wk.sim, wk.spec
        attack = sim.attack
        honest_ids, byz_ids = draw.honest.tolist(), draw.byzantine.tolist()
        wanted: set[tuple[int, Kind]] = set()
        if attack.omniscient:
            wanted |= {(h, Kind.TAP) for h in honest_ids}
        if attack.needs_own_gradients:
            wanted |= {(b, Kind.OWN) for b in byz_ids if b != wk.w}
        got = self._wait(r, wanted, time.monotonic() + wk.cfg.distributed.deadline / 2) if wanted else {}
        D, d = spec.D, spec.d
        taps = [got[(h, Kind.TAP)].payload for h in honest_ids if (h, Kind.TAP) in got]
        honest = torch.stack(taps) if taps else torch.empty(0, spec.length, dtype=spec.dtype)
        owns = None
        if attack.needs_own_gradients:
            mine = own if own is not None else torch.zeros(spec.length, dtype=spec.dtype)
            owns = torch.stack([mine if b == wk.w else got[(b, Kind.OWN)].payload if (b, Kind.OWN) in got else mine for b in byz_ids])
        f = len(byz_ids)
        byz_rows = draw.rows_of(draw.byzantine)
        agg_ctx = sim.aggregation_context()
        parts = [(0, D)] + ([(D, D + d)] if spec.fallback else [])
        forged_parts = []
        for lo, hi in parts:
            dtype = spec.dtype if lo == 0 else sim.theta.dtype  # the fallback part is a plain gradient
            H = honest[:, lo:hi].to(device=sim.device, dtype=dtype)
            ctx = AttackContext(
                n=wk.n,
                f=f,
                round=r,
                honest=H,
                own=None if owns is None else owns[:, lo:hi].to(device=sim.device, dtype=H.dtype),
                params=theta,
                aggregator=sim.aggregator,
                generator=sim.gens["attack"],
                aggregation=agg_ctx,
                byzantine=byz_rows,
            )
            try:
                rows = forge(attack, ctx, hi - lo)
            except AttackContractError:
                raise  # a bug in the attack, reported as by every engine
            except Exception as e:  # noqa: BLE001 - an attack that cannot forge this round sends nothing
                wk.note(f"round {r}: the attack could not forge ({e}); the coalition sends nothing")
                rows = torch.empty(0, hi - lo)
            forged_parts.append(rows.detach().cpu())
        k = min(p.shape[0] for p in forged_parts)
        mine = None
        for j, b in enumerate(byz_ids):
            if j < k:
                payload = torch.cat([p[j].to(spec.dtype) for p in forged_parts] + [torch.zeros(2, dtype=spec.dtype)])
            else:
                payload = None
            if b == wk.w:
                mine = payload
            elif payload is None:
                self.send(b, Kind.DROP, r, None)
            else:
                self.send(b, Kind.FORGED, r, payload)
        return mine
