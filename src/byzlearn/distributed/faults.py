"""Fault injection for a worker process (chaos testing of the runtime; off unless asked for).

A worker reads its fault from the environment variable ``BYZLEARN_FAULT`` (``byzlearn launch``
and the tests set it for one rank; under torchrun set it per rank yourself). Specs:

- ``slow:S`` — sleep S seconds before every message (a straggler);
- ``hang@R`` — from round R on, never answer again (the process stays alive);
- ``crash@R`` — at round R, the process kills itself with SIGKILL;
- ``malformed@R`` — from round R on, each round first sends one malformed frame, cycling through:
  shorter than declared, longer than declared, a wrong declared length, a bad magic number, a frame
  for a future round, a frame claiming another sender; and every seventh round a well-formed
  frame full of NaN *instead of* its gradient. The other rounds then send the real gradient;
- ``hostile@R`` — from round R on, the rank runs hostile code before each real gradient: a raw gloo
  send twice the receiver's frame to the server and to every worker (once; it used to abort them),
  then through its links, to the server, every message of ``HOSTILE`` (too long, wrong dtype, raw
  bytes, garbage, empty, an absurd declared length, a good frame on every tag the server does not
  receive), a flood of ``FLOOD`` frames (once), and the same to every other worker on the
  collusion tag; it waits until the server-bound ones are on the wire, then sends its real frame.

``malformed_expected(R, rounds)`` / ``hostile_expected(R, rounds)`` are how many malformed messages
such a worker makes the server count in a run.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import Tensor

from . import frames
from .frames import HEADER, Kind
from .protocol import TAG_COLLUDE, TAG_GRAD, TAG_PARAMS, TAG_PEER, TAG_REPORT, TAG_STATE

VARIANTS = ("short", "long", "length", "magic", "future", "impostor", "nan")
# what a hostile rank sends the server each round: (name, tag); every one is malformed there
HOSTILE = (
    ("long", TAG_GRAD),
    ("dtype", TAG_GRAD),
    ("bytes", TAG_GRAD),
    ("garbage", TAG_GRAD),
    ("empty", TAG_GRAD),
    ("declared", TAG_GRAD),
    ("good", TAG_PARAMS),
    ("good", TAG_COLLUDE),
    ("good", TAG_PEER),
    ("good", TAG_REPORT),
    ("good", TAG_STATE),
    ("good", 999),
)
FLOOD = 300  # frames of a hostile rank's one flood (to the server, and to each worker)


class Fault:
    def __init__(self, spec: str):
        self.spec = spec
        head, _, at = spec.partition("@")
        kind, _, arg = head.partition(":")
        if kind not in ("slow", "hang", "crash", "malformed", "hostile"):
            raise ValueError(f"BYZLEARN_FAULT={spec!r}: unknown fault {kind!r} (slow:S, hang@R, crash@R, malformed@R, hostile@R)")
        self.kind = kind
        self.seconds = float(arg) if arg else 0.0
        self.at = int(at) if at else 0
        self._links: tuple | None = None  # hostile: (server-bound links, worker-bound links), made on first use
        self._gloo: list = []  # hostile: its raw gloo sends, which nobody ever receives

    @classmethod
    def from_env(cls) -> "Fault | None":
        spec = os.environ.get("BYZLEARN_FAULT")
        return cls(spec) if spec else None

    def before(self, r: int) -> None:
        """Called at the start of round ``r``'s work."""
        if self.kind == "slow":
            time.sleep(self.seconds)
        elif self.kind == "hang" and r >= self.at:
            while True:
                time.sleep(3600)
        elif self.kind == "crash" and r >= self.at:
            os.kill(os.getpid(), signal.SIGKILL)

    def frames(self, r: int, rank: int, payload: Tensor, dtype: torch.dtype) -> list[Tensor] | None:
        """The frames to send for round ``r`` instead of the normal one (``None``: the normal one only)."""
        if self.kind == "hostile" and r >= self.at:
            self._hostile(r, rank, payload, dtype)
            return None
        if self.kind != "malformed" or r < self.at:
            return None
        variant = VARIANTS[(r - self.at) % len(VARIANTS)]
        L = payload.numel()
        good = frames.encode(Kind.GRAD, r, rank, payload, dtype)
        if variant == "nan":
            return [frames.encode(Kind.GRAD, r, rank, torch.full_like(payload, float("nan")), dtype)]
        if variant == "short":
            bad = frames.encode(Kind.GRAD, r, rank, payload[:-5], dtype, length=L)
        elif variant == "long":
            bad = torch.cat([good, torch.ones(5, dtype=dtype)])
        elif variant == "length":
            bad = frames.encode(Kind.GRAD, r, rank, payload[:-1], dtype)
        elif variant == "magic":
            bad = good.clone()
            bad[:1].view(torch.int32 if dtype == torch.float32 else torch.int64)[0] = 12345
        elif variant == "future":
            bad = frames.encode(Kind.GRAD, r + 7, rank, payload, dtype)
        else:  # impostor: claims to be rank 0
            bad = frames.encode(Kind.GRAD, r, 0 if rank != 0 else 1, payload, dtype)
        return [bad, good]

    def _hostile(self, r: int, rank: int, payload: Tensor, dtype: torch.dtype) -> None:
        """One round of hostile sends (see the module docstring); returns once the server-bound ones are on the wire."""
        from .transport import Links

        first = self._links is None
        if first:
            self._links = (Links(rank), Links(rank))
        to_server, to_workers = self._links
        others = [p for p in range(1, to_server.mesh.world_size) if p != rank]
        if first:
            import torch.distributed as dist

            big = torch.ones(2 * (HEADER + payload.numel() + 1), dtype=dtype)
            self._gloo = [dist.isend(big, dst=dst, tag=tag) for dst, tag in [(0, TAG_GRAD)] + [(p, TAG_COLLUDE) for p in others]]
        for name, tag in HOSTILE:
            to_server.send(0, tag, hostile_message(name, r, rank, payload, dtype))
        for p in others:
            for name, _ in HOSTILE[:6]:
                to_workers.send(p, TAG_COLLUDE, hostile_message(name, r, rank, payload, dtype))
            to_workers.send(p, TAG_PARAMS, hostile_message("good", r, rank, payload, dtype))
        if first:
            stop = frames.encode(Kind.STOP, r, rank, dtype=dtype)
            for _ in range(FLOOD):
                to_server.send(0, TAG_GRAD, stop)
                for p in others:
                    to_workers.send(p, TAG_COLLUDE, stop)
        to_server.drain(60.0)  # the worker-bound ones may wait: a worker reads its collusion inbox only when it needs it


def hostile_message(name: str, r: int, rank: int, payload: Tensor, dtype: torch.dtype) -> Tensor:
    """One of ``HOSTILE``'s messages for round ``r`` (all but ``good`` are malformed on a ``dtype`` gradient channel)."""
    good = frames.encode(Kind.GRAD, r, rank, payload, dtype)
    if name == "good":
        return good
    if name == "long":  # twice the frame: it used to abort the receiver
        return frames.encode(Kind.GRAD, r, rank, payload.repeat(2), dtype)
    if name == "dtype":  # the right frame in the other float dtype
        return frames.encode(Kind.GRAD, r, rank, payload, torch.float64 if dtype == torch.float32 else torch.float32)
    if name == "bytes":
        return torch.randint(0, 256, (good.numel(),), dtype=torch.uint8, generator=torch.Generator().manual_seed(r))
    if name == "garbage":  # the right size and dtype, no header
        return torch.full_like(good, 3.25)
    if name == "empty":
        return torch.empty(0, dtype=dtype)
    if name == "declared":  # a header declaring more values than a frame can hold
        return frames.encode(Kind.GRAD, r, rank, payload[:3], dtype, length=2**31 - 1)
    raise ValueError(f"unknown hostile message {name!r}")


def hostile_expected(at: int, rounds: int) -> int:
    """Malformed messages a ``hostile@at`` worker makes the server count in rounds ``at .. rounds-1``."""
    k = max(0, rounds - at)
    return k * len(HOSTILE) + (FLOOD if k else 0)


def malformed_expected(at: int, rounds: int) -> int:
    """Malformed frames a ``malformed@at`` worker sends in rounds ``at .. rounds-1``."""
    k = max(0, rounds - at)
    return k - sum(1 for i in range(k) if VARIANTS[i % len(VARIANTS)] == "nan")
