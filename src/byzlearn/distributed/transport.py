"""Point-to-point messages over the c10d process group that never block the training loop.

gloo's ``Work.is_completed()`` for a point-to-point receive only turns true once somebody has
called ``wait()``, and a ``wait(timeout)`` that expires makes gloo close *every* connection of the
process ("Application timeout caused pair closure"). So a deadline cannot be a gloo timeout.
Instead each link has its own thread doing the blocking part:

- a ``Receiver`` per (source rank, tag) posts ``irecv`` into a fresh NaN-filled buffer, waits,
  checks the frame (``frames.Layout.parse``) and puts ``(src, Frame | Malformed | Closed)`` on a
  ``queue.Queue``; the caller waits on the queue with its own deadline (``Inbox.get``);
- a ``Sender`` per destination rank runs ``isend(...).wait()`` for the frames posted to it, in
  order (``fifo``) or keeping only the newest one not yet on the wire (``latest``: a slow worker
  gets the current parameters, not a backlog).

A peer that dies closes its connections: its receiver and sender get a gloo error, report
``Closed`` and stop; the other links are unaffected. A peer that hangs only blocks its own threads
(daemons). The process group is created with a very long timeout so that gloo itself never times
out a wait; liveness is the caller's deadline plus connection closure.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor

from .frames import Layout, Malformed


@dataclass
class Closed:
    """The link to ``rank`` failed (the process died or the connection broke)."""

    rank: int
    reason: str


class Inbox:
    """Messages from receiver threads, ``(src, Frame | Malformed | Closed)``, with deadline waits."""

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue()

    def put(self, src: int, item: object) -> None:
        self.q.put((src, item))

    def get(self, deadline: float | None) -> tuple[int, object] | None:
        """The next message, or ``None`` once ``deadline`` (a ``time.monotonic()`` value) has passed."""
        if deadline is None:
            return self.q.get()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            try:
                return self.q.get_nowait()
            except queue.Empty:
                return None
        try:
            return self.q.get(timeout=remaining)
        except queue.Empty:
            return None

    def get_nowait(self) -> tuple[int, object] | None:
        try:
            return self.q.get_nowait()
        except queue.Empty:
            return None


class Receiver(threading.Thread):
    """Receives frames of one layout from one rank on one tag, forever (until the link fails)."""

    def __init__(self, src: int, tag: int, layout: Layout, inbox: Inbox, stats: "LinkStats"):
        super().__init__(name=f"recv-{src}-{tag}", daemon=True)
        self.src, self.tag, self.layout, self.inbox, self.stats = src, tag, layout, inbox, stats
        self.closed = False

    def run(self) -> None:
        while True:
            buf = self.layout.buffer()
            try:
                dist.irecv(buf, src=self.src, tag=self.tag).wait()
            except Exception as e:  # noqa: BLE001 - gloo raises RuntimeError for a dead or broken peer
                self.closed = True
                self.inbox.put(self.src, Closed(self.src, str(e).split("\n")[0][:200]))
                return
            self.stats.add_received(buf.numel() * buf.element_size())
            try:
                item: object = self.layout.parse(buf, self.src)
            except Malformed as e:
                item = e
            self.inbox.put(self.src, item)


class Sender(threading.Thread):
    """Sends frames to one rank on one tag; ``latest=True`` replaces a frame not yet sent by a newer one."""

    def __init__(self, dst: int, tag: int, stats: "LinkStats", on_close=None, latest: bool = False):
        super().__init__(name=f"send-{dst}-{tag}", daemon=True)
        self.dst, self.tag, self.stats, self.latest, self.on_close = dst, tag, stats, latest, on_close
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
                dist.isend(frame, dst=self.dst, tag=self.tag).wait()
            except Exception as e:  # noqa: BLE001
                with self.cv:
                    self.closed, self.busy, self.items = True, False, []
                if self.on_close is not None:
                    self.on_close(self.dst, str(e).split("\n")[0][:200])
                return
            self.stats.add_sent(frame.numel() * frame.element_size(), time.perf_counter() - t0)
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
    """This process's senders and receivers, created on demand, sharing counters."""

    def __init__(self, rank: int):
        self.rank = rank
        self.stats = LinkStats()
        self.senders: dict[tuple[int, int], Sender] = {}
        self.receivers: list[Receiver] = []
        self.closed: set[int] = set()
        self._lock = threading.Lock()
        self.on_close_inbox: Inbox | None = None

    def listen(self, src: int, tag: int, layout: Layout, inbox: Inbox) -> Receiver:
        r = Receiver(src, tag, layout, inbox, self.stats)
        r.start()
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
        s = self.senders.get((dst, tag))
        if s is None:
            s = self.senders[(dst, tag)] = Sender(dst, tag, self.stats, self._closed, latest)
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
        """Wait until every receiver has stopped (their peers closed the connections)."""
        end = time.monotonic() + timeout
        for r in self.receivers:
            r.join(max(0.0, end - time.monotonic()))
        return not any(r.is_alive() for r in self.receivers)
