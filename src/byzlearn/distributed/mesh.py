"""The links between the ranks of a run: one TCP connection per pair, read by a checking thread each.

Why not gloo's point-to-point (measured with torch 2.13's gloo, two processes on loopback): a
receive posted for N bytes accepts a send of M < N bytes from that rank and tag and does not say
how many arrived (the rest of the buffer keeps its old contents); it accepts bytes of any dtype as
its own; and on M > N gloo's I/O thread fails an enforce (``op.preamble.length <= op.nbytes``) and
the receiving process aborts (SIGABRT). Whatever a receiver posts (a whole frame, a fixed-size
header, a chunk), the peer can send one byte more, so no protocol built on gloo receives protects
a process from its peers. A send nobody receives is harmless: gloo keeps its data on the sender
(the receiver keeps a notice of about 150 bytes per send). So after start-up no process posts a
gloo receive: the process group serves the rendezvous, the config broadcast and the start-up
barrier, and messages go over a ``Mesh``, opened by ``group.init`` through the c10d store: rank
``i`` dials every lower rank and accepts every higher one, then stops accepting connections.

On a link every message is a 16-byte link header (magic, tag, dtype code, byte count) and then the
frame's bytes. The receiving process's reader thread for that peer checks the header against what
it receives from that rank on that tag (``Receiver``, ``frames.Layout.check_wire``) *before* it
reads the frame: a message on a tag it does not receive from that rank, of another dtype or longer
than the channel's ``capacity`` is read through a fixed 1 MiB scratch buffer and becomes a
``Malformed`` item (for a tag nobody receives, in the inbox of the first channel listening to that
rank), which the caller counts like any malformed frame. An accepted message is read straight into
a ``capacity``-long NaN-filled buffer and checked by ``Layout.parse``. Bytes that are not a link
header (a process writing on the socket without this module) end that link: ``Malformed``, then
``Closed``. No peer can make a process allocate more than ``capacity`` numbers for a message.

Floods: each (inbox, source) holds at most ``Receiver.limit`` undelivered messages (``QUEUE_BYTES``
worth of the channel's frames, 16 to 1024). A peer that far ahead of the consumer stops being read:
TCP's flow control then stalls that peer's senders, and only its own link waits (other peers have
their own readers and quotas). An honest peer is delayed, never dropped. Each message that fails a
check costs its reader ``THROTTLE`` seconds, so a peer sending garbage as fast as it can gets a
bounded share of the receiver's CPU.

A peer that dies closes its connection: its reader puts ``Closed`` in every inbox listening to it,
and writing to it fails. A peer that stops reading blocks only writes to itself.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .frames import DTYPE_CODES, Layout, Malformed

WIRE = struct.Struct("<IHHQ")  # magic, tag, dtype code, bytes of the frame that follows
WIRE_MAGIC = 0x4C5A5942  # "BYZL"
HELLO = struct.Struct("<IIII")  # magic, rank, world size, link protocol version
HELLO_MAGIC, VERSION = 0x4F4C4548, 1
QUEUE_BYTES = 64 << 20  # undelivered bytes per (inbox, source), as a number of the channel's frames
THROTTLE = 5e-4  # seconds a reader waits after each message that failed a check
SCRATCH = 1 << 20  # bytes read at a time from a message that is dropped unread


@dataclass
class Closed:
    """The link to ``rank`` failed (the process died or the connection broke)."""

    rank: int
    reason: str


class Receiver:
    """What this process receives from ``src`` on ``tag``: the layout, the inbox, the queue limit."""

    def __init__(self, src: int, tag: int, layout: Layout, inbox, stats):
        self.src, self.tag, self.layout, self.inbox, self.stats = src, tag, layout, inbox, stats
        self.limit = max(16, min(1024, QUEUE_BYTES // max(1, layout.max_bytes)))
        self.closed = False


def _send_all(sock: socket.socket, parts: list) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views, [], socket.MSG_NOSIGNAL)
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views.pop(0))
            else:
                views[0], sent = views[0][sent:], 0


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("the connection was closed")
        got += k


class _Reader(threading.Thread):
    """Reads one peer's link forever: header check, then the frame into its channel's buffer, or dropped."""

    def __init__(self, mesh: "Mesh", src: int, sock: socket.socket):
        super().__init__(name=f"link-{src}", daemon=True)
        self.mesh, self.src, self.sock = mesh, src, sock

    def _skip(self, nbytes: int, scratch: memoryview) -> None:
        while nbytes > 0:
            k = self.sock.recv_into(scratch, min(nbytes, len(scratch)))
            if k == 0:
                raise EOFError("the connection was closed")
            nbytes -= k

    def run(self) -> None:
        mesh, src = self.mesh, self.src
        head = bytearray(WIRE.size)
        scratch: memoryview | None = None
        reason = "the connection was closed"
        try:
            while True:
                _recv_into(self.sock, memoryview(head))
                magic, tag, code, nbytes = WIRE.unpack(head)
                if magic != WIRE_MAGIC:
                    mesh.report(
                        src, None, Malformed(f"from rank {src}: bytes that are not a message (bad link header); its link is closed")
                    )
                    reason = "it sent bytes that are not a message"
                    return
                rcv = mesh.route(src, tag)
                try:
                    if rcv is None:
                        raise Malformed(f"from rank {src}: a message on tag {tag}, which this process does not receive from rank {src}")
                    rcv.layout.check_wire(code, nbytes, src)
                except Malformed as e:
                    scratch = scratch if scratch is not None else memoryview(bytearray(SCRATCH))
                    self._skip(nbytes, scratch)
                    mesh.report(src, rcv, e)
                    time.sleep(THROTTLE)
                    continue
                buf = rcv.layout.buffer()
                if nbytes:
                    _recv_into(self.sock, memoryview(buf.view(torch.uint8).numpy())[:nbytes])
                rcv.stats.add_received(nbytes)
                try:
                    item: object = rcv.layout.parse(buf, src)
                except Malformed as e:
                    item = e
                    time.sleep(THROTTLE)
                rcv.inbox.put_bounded(src, item, rcv.limit)
        except (OSError, EOFError) as e:
            reason = str(e).split("\n")[0][:200] or type(e).__name__
        finally:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes this link's senders, which then report it closed
            except OSError:
                pass
            mesh.ended(src, reason)


class Mesh:
    """This process's link to every other rank: one TCP connection each, read by one thread each."""

    def __init__(self, rank: int, world_size: int, socks: dict[int, socket.socket]):
        self.rank, self.world_size, self.socks = rank, world_size, socks
        self.write_locks = {r: threading.Lock() for r in socks}
        self.routes: dict[tuple[int, int], Receiver] = {}
        self.first: dict[int, Receiver] = {}  # per source: where a message on a tag nobody receives is reported
        self.gone: dict[int, str] = {}
        self.unreported = 0  # malformed messages from a rank this process receives nothing from
        self.lock = threading.Lock()
        self.readers = {r: _Reader(self, r, s) for r, s in socks.items()}
        for t in self.readers.values():
            t.start()

    # -- receiving ------------------------------------------------------------------------------
    def register(self, rcv: Receiver) -> None:
        if rcv.src not in self.socks:
            raise ValueError(f"rank {self.rank} has no link to rank {rcv.src} (world size {self.world_size})")
        with self.lock:
            self.routes[(rcv.src, rcv.tag)] = rcv
            self.first.setdefault(rcv.src, rcv)
            reason = self.gone.get(rcv.src)
        if reason is not None:
            rcv.closed = True
            rcv.inbox.put(rcv.src, Closed(rcv.src, reason))

    def route(self, src: int, tag: int) -> Receiver | None:
        with self.lock:
            return self.routes.get((src, tag))

    def report(self, src: int, rcv: Receiver | None, item: Malformed) -> None:
        with self.lock:
            target = rcv if rcv is not None else self.first.get(src)
            if target is None:
                self.unreported += 1
                return
        target.inbox.put_bounded(src, item, target.limit)

    def ended(self, src: int, reason: str) -> None:
        with self.lock:
            self.gone[src] = reason
            targets = [r for (s, _), r in self.routes.items() if s == src]
        for r in targets:
            r.closed = True
            r.inbox.put(src, Closed(src, reason))

    # -- sending --------------------------------------------------------------------------------
    def write(self, dst: int, tag: int, frame: Tensor) -> int:
        """Send one message (blocking until the kernel has it); returns its bytes; raises ``OSError`` on a broken link."""
        t = frame.detach().reshape(-1)
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        head = WIRE.pack(WIRE_MAGIC, tag, DTYPE_CODES.get(t.dtype, 0), nbytes)
        with self.write_locks[dst]:
            _send_all(self.socks[dst], [head, t.view(torch.uint8).numpy()] if nbytes else [head])
        return nbytes

    def close(self) -> None:
        """Shut every link (tests; a process otherwise keeps its links until it exits)."""
        for s in self.socks.values():
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- start-up -------------------------------------------------------------------------------
    @classmethod
    def connect(cls, rank: int, world_size: int, store, host: str, timeout: float) -> "Mesh":
        """Open the links of every rank of the world: rank ``i`` dials ranks below it and accepts those above.

        Each rank listens on ``host`` (port chosen by the system), publishes the address in
        ``store``, and stops listening once every higher rank has connected (a connection must
        introduce itself within 5 s; at most ``4 * world_size`` are tried).
        """
        deadline = time.monotonic() + timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, 0), family=family, backlog=world_size + 8)
        higher = set(range(rank + 1, world_size))
        accepted: dict[int, socket.socket] = {}

        def accept() -> None:
            for _ in range(4 * world_size):
                if not higher - accepted.keys() or deadline <= time.monotonic():
                    return
                listener.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                try:
                    conn.settimeout(5.0)
                    peer = _hello(conn, world_size)
                    if peer in higher and peer not in accepted:
                        conn.sendall(HELLO.pack(HELLO_MAGIC, rank, world_size, VERSION))
                        accepted[peer] = conn
                        continue
                except (OSError, EOFError):
                    pass
                conn.close()

        acceptor = threading.Thread(target=accept, name="link-accept", daemon=True)
        acceptor.start()
        store.set(str(rank), json.dumps([host, listener.getsockname()[1]]))
        socks: dict[int, socket.socket] = {}
        try:
            for j in range(rank):
                h, p = json.loads(store.get(str(j)))
                socks[j] = _dial(h, p, rank, world_size, j, deadline)
            acceptor.join(max(0.0, deadline - time.monotonic()))
        finally:
            listener.close()
        acceptor.join(1.0)
        missing = sorted(higher - accepted.keys())
        if missing:
            for s in list(socks.values()) + list(accepted.values()):
                s.close()
            raise RuntimeError(f"rank {rank}: ranks {missing} did not open their links within {timeout:.0f} s")
        socks.update(accepted)
        for s in socks.values():
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(rank, world_size, socks)


def _hello(conn: socket.socket, world_size: int) -> int:
    buf = bytearray(HELLO.size)
    _recv_into(conn, memoryview(buf))
    magic, peer, world, version = HELLO.unpack(buf)
    if magic != HELLO_MAGIC or world != world_size or version != VERSION:
        raise EOFError("not a byzlearn link of this job")
    return peer


def _dial(host: str, port: int, rank: int, world_size: int, peer: int, deadline: float) -> socket.socket:
    while True:
        try:
            s = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            s.sendall(HELLO.pack(HELLO_MAGIC, rank, world_size, VERSION))
            if _hello(s, world_size) == peer:
                return s
            s.close()
            raise RuntimeError(f"rank {rank}: the address rank {peer} published answered as another rank")
        except (OSError, EOFError):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"rank {rank}: could not open a link to rank {peer} at {host}:{port}") from None
            time.sleep(0.05)


_MESH: Mesh | None = None


def open_mesh(rank: int, world_size: int, store, host: str, timeout: float) -> Mesh:
    """Open this process's links (``group.init`` does, once the process group exists)."""
    global _MESH
    _MESH = Mesh.connect(rank, world_size, store, host, timeout)
    return _MESH


def current_mesh() -> Mesh:
    if _MESH is None:
        raise RuntimeError("this process has no links yet: group.init opens them after joining the process group")
    return _MESH
