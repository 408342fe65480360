"""Messages of the runtime: one framed 1-D tensor each, checked on arrival.

Layout of a frame (``dtype`` float32, or float64 for DRACO's cyclic code)::

    [ header: 8 ints | payload: ``length`` numbers | trailer: 1 int ]

The ints are stored in the frame's own dtype memory through an integer view (int32 in a float32
frame, int64 in a float64 one), so one tensor carries both. Header: magic, kind, round, sender,
length, and three free fields (``a``, ``b``, ``c``) a kind may use.

A frame travels behind a link header (``mesh``) that gives its dtype and byte count, so the
receiver checks those first (``Layout.check_wire``: the channel's dtype, at most ``capacity``
numbers) and only then reads the bytes, into a ``capacity``-long NaN-filled buffer (``buffer``).
``Layout.parse`` then finds a frame *malformed* when the magic or the kind is unknown, the declared
length is not the one the kind has, the trailer is not at the end of the declared payload (the
message was shorter) or the first slot after the trailer was written (it was longer), or the
sender field is not the link's source rank. A malformed frame is Byzantine input: the caller
counts it and discards it; nothing raises further. Non-finite payload values are not malformed:
they go on to the rules, which survive NaN/Inf rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

HEADER = 8
MAGIC = 0x42595A31  # "BYZ1"
TRAILER = 0x454E4421  # "END!"


class Kind(IntEnum):
    PARAMS = 1  # server -> worker: the round's parameters (a: 0)
    GRAD = 2  # worker -> server: its message (gradient or DRACO code word), then loss and compute seconds
    STOP = 3  # server or monitor -> every rank: training is over
    TAP = 4  # collusion channel: an honest worker's message, seen by the Byzantine coalition's leader
    OWN = 5  # collusion channel: a Byzantine worker's own honest message, to the leader
    FORGED = 6  # collusion channel: the leader's forged row for one Byzantine worker
    DROP = 7  # collusion channel: that Byzantine worker sends nothing this round
    INIT = 8  # decentralised: Bracha INIT(v) (a: instance origin, b: phase, c: agreement round)
    ECHO = 9  # decentralised: Bracha ECHO(v)
    READY = 10  # decentralised: Bracha READY(v)
    PLAIN = 11  # decentralised: a vector sent once, without reliable broadcast (gossip, MDA)
    REPORT = 12  # decentralised peer -> monitor: training loss (and parameters at evaluation steps)
    DONE = 13  # decentralised peer -> peers: finished its last step
    DELIVERED = 14  # decentralised peer -> monitor: digest of a value it delivered from a Byzantine origin


_INT = {torch.float32: torch.int32, torch.float64: torch.int64}
# dtype codes of the link header; a tensor of any other dtype is sent as code 0 (and refused)
DTYPE_CODES = {
    torch.float32: 1,
    torch.float64: 2,
    torch.float16: 3,
    torch.bfloat16: 4,
    torch.int32: 5,
    torch.int64: 6,
    torch.uint8: 7,
    torch.int8: 8,
    torch.int16: 9,
    torch.bool: 10,
}
_DTYPE_NAMES = {code: str(dt).removeprefix("torch.") for dt, code in DTYPE_CODES.items()}


class Malformed(Exception):
    """A frame that breaks the layout: Byzantine input, counted and discarded."""


@dataclass
class Frame:
    kind: Kind
    round: int
    sender: int
    payload: Tensor
    a: int = 0
    b: int = 0
    c: int = 0


def encode(
    kind: Kind,
    round: int,
    sender: int,
    payload: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    a: int = 0,
    b: int = 0,
    c: int = 0,
    length: int | None = None,
) -> Tensor:
    """One frame as a CPU tensor. ``length`` overrides the declared length (tests forge malformed frames)."""
    n = 0 if payload is None else payload.numel()
    buf = torch.empty(HEADER + n + 1, dtype=dtype)
    ints = _INT[dtype]
    buf[:HEADER].view(ints).copy_(torch.tensor([MAGIC, int(kind), round, sender, n if length is None else length, a, b, c], dtype=ints))
    if n:
        buf[HEADER : HEADER + n] = payload.detach().reshape(-1).to(device="cpu", dtype=dtype)
    buf[HEADER + n :].view(ints)[0] = TRAILER
    return buf


class Layout:
    """What a receiver accepts on one tag: a dtype and the payload length of each kind."""

    def __init__(self, dtype: torch.dtype, lengths: dict[Kind, int], slack: int | None = None):
        self.dtype, self.ints, self.lengths = dtype, _INT[dtype], dict(lengths)
        longest = HEADER + max(lengths.values()) + 1
        self.slack = 64 + longest // 4 if slack is None else slack
        self.capacity = longest + self.slack
        self._nan_bits = torch.full((1,), float("nan"), dtype=dtype).view(self.ints)[0].item()

    @property
    def max_bytes(self) -> int:
        """The longest message this channel reads: ``capacity`` numbers."""
        return self.capacity * self.dtype.itemsize

    def buffer(self) -> Tensor:
        return torch.full((self.capacity,), float("nan"), dtype=self.dtype)

    def check_wire(self, code: int, nbytes: int, src: int) -> None:
        """Refuse a message by its link header, before any byte of it is read: wrong dtype or size."""
        if code != DTYPE_CODES[self.dtype]:
            name = _DTYPE_NAMES.get(code, f"unknown dtype {code}")
            raise Malformed(f"from rank {src}: a {name} message on a {_DTYPE_NAMES[DTYPE_CODES[self.dtype]]} channel")
        if nbytes > self.max_bytes:
            raise Malformed(f"from rank {src}: {nbytes} bytes, longer than any frame of this channel ({self.max_bytes} bytes)")
        if nbytes % self.dtype.itemsize:
            raise Malformed(f"from rank {src}: {nbytes} bytes is not a whole number of {self.dtype.itemsize}-byte values")

    def parse(self, buf: Tensor, src: int) -> Frame:
        ints = buf.view(self.ints)
        magic, kind, rnd, sender, length, a, b, c = ints[:HEADER].tolist()
        if magic != MAGIC:
            raise Malformed(f"from rank {src}: bad magic {magic:#x}")
        try:
            kind = Kind(kind)
        except ValueError:
            raise Malformed(f"from rank {src}: unknown kind {kind}") from None
        expected = self.lengths.get(kind)
        if expected is None:
            raise Malformed(f"from rank {src}: kind {kind.name} is not expected on this channel")
        if length != expected:
            raise Malformed(f"from rank {src}: {kind.name} declares {length} values, expected {expected}")
        end = HEADER + expected
        if ints[end].item() != TRAILER:
            raise Malformed(f"from rank {src}: {kind.name} is shorter than its {expected} values (no trailer)")
        if end + 1 < self.capacity and ints[end + 1].item() != self._nan_bits:
            raise Malformed(f"from rank {src}: {kind.name} is longer than its {expected} values")
        if sender != src:
            raise Malformed(f"from rank {src}: the frame claims to come from rank {sender}")
        return Frame(kind, rnd, sender, buf[HEADER:end], a, b, c)
