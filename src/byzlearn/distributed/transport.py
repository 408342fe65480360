"""Point-to-point messages that never block the training loop, over the rank's links (``mesh``).

The links themselves, and why they are not gloo receives, are ``mesh``'s: every message is checked
by size, dtype and tag before it is read, so no peer's message can abort, hang or exhaust the
receiver. Here is what the protocol code uses:

- ``Links.listen(src, tag, layout, inbox)``: the frames of one layout from one rank on one tag
  arrive in ``inbox`` as ``(src, Frame | Malformed | Closed)``; the caller waits on it with its own
  deadline (``Inbox.get``), never on the network;
- ``Links.send(dst, tag, frame)``: a ``Sender`` thread per destination and tag writes the frames
  posted to it, in order (``fifo``) or keeping only the newest one not yet on the wire
  (``latest=True``: a slow worker gets the current parameters, not a backlog).

A peer that dies closes its connection: every inbox listening to it gets ``Closed``, and a failed
send reports it to ``Links.on_close_inbox``; the other links are unaffected. A peer that hangs only
blocks its own link's threads (daemons); liveness is the caller's deadline plus connection closure.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

from torch import Tensor

from .frames import Layout
from .mesh import Closed, Mesh, Receiver, current_mesh

__all__ = ["Closed", "Inbox", "LinkStats", "Links", "Sender"]


class Inbox:
    """Messages from the links, ``(src, Frame | Malformed | Closed)`` in arrival order, with deadline waits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._items: deque = deque()
        self._pending: dict[int, int] = defaultdict(int)

    def put(self, src: int, item: object) -> None:
        with self._lock:
            self._items.append((src, item))
            self._pending[src] += 1
            self._ready.notify()

    def put_bounded(self, src: int, item: object, limit: int) -> None:
        """``put``, once fewer than ``limit`` messages from ``src`` wait here (a reader's back-pressure)."""
        with self._lock:
            while self._pending[src] >= limit:
                self._room.wait()
            self._items.append((src, item))
            self._pending[src] += 1
            self._ready.notify()

    def pending(self, src: int) -> int:
        with self._lock:
            return self._pending[src]

    def _pop(self) -> tuple[int, object]:
        src, item = self._items.popleft()
        self._pending[src] -= 1
        self._room.notify_all()
        return src, item

    def get(self, deadline: float | None) -> tuple[int, object] | None:
        """The next message, or ``None`` once ``deadline`` (a ``time.monotonic()`` value) has passed."""
        with self._lock:
            while not self._items:
                if deadline is None:
                    self._ready.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._ready.wait(remaining)
            return self._pop()

    def get_nowait(self) -> tuple[int, object] | None:
        with self._lock:
            return self._pop() if self._items else None


class Sender(threading.Thread):
    """Sends frames to one rank on one tag; ``latest=True`` replaces a frame not yet sent by a newer one."""

    def __init__(self, mesh: Mesh, dst: int, tag: int, stats: "LinkStats", on_close=None, latest: bool = False):
        super().__init__(name=f"send-{dst}-{tag}", daemon=True)
        self.mesh, self.dst, self.tag, self.stats, self.latest, self.on_close = mesh, dst, tag, stats, latest, on_close
        self.cv = threading.Condition()
        self.items: list[Tensor] = []
        self.busy = False
        self.closed = False
        self.start()

    def post(self, frame: Tensor) -> None:
        with self.cv:
            if self.closed:
                return
            if self.latest:
                self.items = [frame]
            else:
                self.items.append(frame)
            self.cv.notify()

    def idle(self) -> bool:
        with self.cv:
            return self.closed or (not self.items and not self.busy)

    def run(self) -> None:
        while True:
            with self.cv:
                while not self.items:
                    self.cv.wait()
                frame = self.items.pop(0)
                self.busy = True
            t0 = time.perf_counter()
            try:
                nbytes = self.mesh.write(self.dst, self.tag, frame)
            except Exception as e:  # noqa: BLE001 - a dead or broken peer
                with self.cv:
                    self.closed, self.busy, self.items = True, False, []
                if self.on_close is not None:
                    self.on_close(self.dst, str(e).split("\n")[0][:200] or type(e).__name__)
                return
            self.stats.add_sent(nbytes, time.perf_counter() - t0)
            with self.cv:
                self.busy = False
                self.cv.notify_all()


class LinkStats:
    """Bytes and messages through this process's links (thread-safe counters)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = self.received = self.messages_sent = self.messages_received = 0
        self.send_seconds = 0.0

    def add_sent(self, nbytes: int, seconds: float) -> None:
        with self.lock:
            self.sent += nbytes
            self.messages_sent += 1
            self.send_seconds += seconds

    def add_received(self, nbytes: int) -> None:
        with self.lock:
            self.received += nbytes
            self.messages_received += 1


class Links:
    """This process's senders and receivers over its ``Mesh``, created on demand, sharing counters."""

    def __init__(self, rank: int, mesh: Mesh | None = None):
        self.mesh = mesh if mesh is not None else current_mesh()
        if rank != self.mesh.rank:
            raise ValueError(f"Links({rank}) in the process of rank {self.mesh.rank}")
        self.rank = rank
        self.stats = LinkStats()
        self.senders: dict[tuple[int, int], Sender] = {}
        self.receivers: list[Receiver] = []
        self.closed: set[int] = set()
        self._lock = threading.Lock()
        self.on_close_inbox: Inbox | None = None

    def listen(self, src: int, tag: int, layout: Layout, inbox: Inbox) -> Receiver:
        r = Receiver(src, tag, layout, inbox, self.stats)
        self.mesh.register(r)
        self.receivers.append(r)
        return r

    def _closed(self, rank: int, reason: str) -> None:
        with self._lock:
            self.closed.add(rank)
        if self.on_close_inbox is not None:
            self.on_close_inbox.put(rank, Closed(rank, reason))

    def send(self, dst: int, tag: int, frame: Tensor, latest: bool = False) -> None:
        if dst == self.rank:
            raise ValueError("a process does not send frames to itself")
        if dst not in self.mesh.socks:
            raise ValueError(f"rank {self.rank} has no link to rank {dst} (world size {self.mesh.world_size})")
        if not 0 <= tag <= 0xFFFF:
            raise ValueError(f"tag {tag} is not in 0..65535")
        s = self.senders.get((dst, tag))
        if s is None:
            s = self.senders[(dst, tag)] = Sender(self.mesh, dst, tag, self.stats, self._closed, latest)
        s.post(frame)

    def drain(self, timeout: float) -> bool:
        """Wait until every sender has sent what it holds (or failed); ``False`` after ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if all(s.idle() for s in self.senders.values()):
                return True
            time.sleep(0.01)
        return False

    def receivers_done(self, timeout: float) -> bool:
        """Wait until the links of every rank this process listens to have closed (their processes ended)."""
        end = time.monotonic() + timeout
        readers = [self.mesh.readers[s] for s in sorted({r.src for r in self.receivers})]
        for t in readers:
            t.join(max(0.0, end - time.monotonic()))
        return not any(t.is_alive() for t in readers)
