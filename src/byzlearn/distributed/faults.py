"""Fault injection for a worker process (chaos testing of the runtime; off unless asked for).

A worker reads its fault from the environment variable ``BYZLEARN_FAULT`` (``byzlearn launch``
and the tests set it for one rank; under torchrun set it per rank yourself). Specs:

- ``slow:S`` — sleep S seconds before every message (a straggler);
- ``hang@R`` — from round R on, never answer again (the process stays alive);
- ``crash@R`` — at round R, the process kills itself with SIGKILL;
- ``malformed@R`` — from round R on, each round first sends one malformed frame, cycling through:
  shorter than declared, longer than declared, a wrong declared length, a bad magic number, a frame
  for a future round, a frame claiming another sender; and every seventh round a well-formed
  frame full of NaN *instead of* its gradient. The other rounds then send the real gradient.

``malformed_expected(R, rounds)`` is how many malformed frames such a worker sends in a run.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import Tensor

from . import frames
from .frames import Kind

VARIANTS = ("short", "long", "length", "magic", "future", "impostor", "nan")


class Fault:
    def __init__(self, spec: str):
        self.spec = spec
        head, _, at = spec.partition("@")
        kind, _, arg = head.partition(":")
        if kind not in ("slow", "hang", "crash", "malformed"):
            raise ValueError(f"BYZLEARN_FAULT={spec!r}: unknown fault {kind!r} (slow:S, hang@R, crash@R, malformed@R)")
        self.kind = kind
        self.seconds = float(arg) if arg else 0.0
        self.at = int(at) if at else 0

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


def malformed_expected(at: int, rounds: int) -> int:
    """Malformed frames a ``malformed@at`` worker sends in rounds ``at .. rounds-1``."""
    k = max(0, rounds - at)
    return k - sum(1 for i in range(k) if VARIANTS[i % len(VARIANTS)] == "nan")
