"""Bracha's reliable broadcast (Bracha 1987), simulated at the message level for many instances at once.

One *instance* is one sender broadcasting one tagged value (tag = (sender, round)). Per instance:

- the sender sends ``INIT(v)`` to every node (an equivocating Byzantine sender sends different
  values to different nodes, or nothing to some);
- an honest node that receives the sender's first ``INIT(v)`` sends ``ECHO(v)`` to all;
- an honest node that has ``ECHO(v)`` from more than ``(n + f) / 2`` distinct nodes (the *echo
  threshold* ``floor((n + f) / 2) + 1``), or ``READY(v)`` from ``f + 1`` distinct nodes
  (*amplification*), and has not sent a READY yet, sends ``READY(v)`` to all;
- an honest node delivers ``v`` once it has ``READY(v)`` from ``2f + 1`` distinct nodes (*delivery*).

Guarantees for ``n >= 3f + 1``: validity (an honest sender's value is delivered by every honest
node), consistency (no two honest nodes deliver different values of one instance) and totality (if
one honest node delivers, all do).

Simulation. Values are *ids* (small integers) referring to payload vectors kept elsewhere, so no
d-sized vector is copied per message; messages and bytes are counted as the textbook protocol sends
them (every INIT/ECHO/READY carries the value: ``header_bytes + payload_bytes``; ``digest_bytes``
switches ECHO/READY to carrying a digest of the value, the usual optimisation). All instances
advance together on tensors ``[instances, nodes, values]``: honest nodes send to everybody, so the
count of ECHO(v) a node holds is the number of honest echoers of ``v`` plus what the Byzantine
nodes chose to send *that* node. Messages are delivered in lock-step phases (INIT, ECHO, READY,
READY amplification until nothing changes). With at most f Byzantine nodes at most one value can
reach the echo threshold at honest nodes (two quorums of more than (n+f)/2 share an honest node),
so the delivered values do not depend on the order in which an asynchronous network would deliver
the messages; only *when* they are delivered does, and the adversary's control of timing is
modelled one level up (which values a node uses first, see ``agreement``).

Byzantine relays (the Byzantine nodes other than the sender, and the sender in the ECHO/READY
phases): ``"split"`` (default, the strongest support for equivocation: every Byzantine node sends
each node ECHO and READY for the value that node received in INIT) or ``"silent"`` (they send
nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..registry import ConfigError

HEADER_BYTES = 16  # type, sender, instance tag, round: a small fixed header per message


def echo_threshold(n: int, f: int) -> int:
    """Smallest number of ECHOs strictly above ``(n + f) / 2``."""
    return (n + f) // 2 + 1


def check_broadcast(n: int, f: int) -> None:
    if not isinstance(n, int) or not isinstance(f, int) or f < 0 or n < 1:
        raise ConfigError(f"reliable broadcast: n and f must be integers with n >= 1, f >= 0, got n={n!r}, f={f!r}")
    if not n > 3 * f:
        raise ConfigError(f"Bracha's reliable broadcast needs n >= 3f + 1 (n > 3f), got n={n}, f={f}")


@dataclass
class BroadcastResult:
    """``delivered[i, r]``: the value id node r delivered in instance i (-1: nothing; rows of Byzantine
    receivers are -1). ``messages``/``bytes``: totals per message type, over all instances."""

    delivered: Tensor
    messages: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    phases: int = 0

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def bracha(
    n: int,
    f: int,
    byzantine: Tensor,
    init: Tensor,
    senders: Tensor,
    payload_bytes: int = 0,
    relay: str = "split",
    digest_bytes: int | None = None,
    header_bytes: int = HEADER_BYTES,
) -> BroadcastResult:
    """Run ``I`` instances of Bracha's broadcast among ``n`` nodes of which ``byzantine`` (bool ``[n]``).

    ``init``: LongTensor ``[I, n]``, the value id the sender of instance i sends node r in INIT
    (-1: no INIT to r). An honest sender must send the same id (by convention 0) to everybody.
    ``senders``: LongTensor ``[I]``, the sender of each instance. ``f`` is the protocol's
    threshold parameter (the number of faults it tolerates); at most ``f`` nodes may be Byzantine.
    """
    check_broadcast(n, f)
    byzantine = byzantine.to(torch.bool)
    if byzantine.shape != (n,) or int(byzantine.sum()) > f:
        raise ConfigError(f"bracha: byzantine must be a bool mask of {n} nodes with at most f={f} set")
    if relay not in ("split", "silent"):
        raise ConfigError(f"bracha: relay must be 'split' or 'silent', got {relay!r}")
    I = init.shape[0]  # noqa: E741 - the docstring's I instances
    if init.shape != (I, n) or senders.shape != (I,):
        raise ConfigError(f"bracha: init must be [I, n] and senders [I], got {tuple(init.shape)} and {tuple(senders.shape)}")
    honest = ~byzantine
    hon_sender = honest[senders]
    if bool(hon_sender.any()):
        rows = init[hon_sender]
        if bool((rows != rows[:, :1]).any()) or bool((rows < 0).any()):
            raise ConfigError("bracha: an honest sender sends the same value to every node")
    V = int(init.max()) + 1 if init.numel() and int(init.max()) >= 0 else 1
    nb = int(byzantine.sum())
    msg_bytes = header_bytes + payload_bytes
    relay_bytes = header_bytes + (payload_bytes if digest_bytes is None else digest_bytes)
    messages: dict[str, int] = {}
    nbytes: dict[str, int] = {}

    def count(kind: str, k: int, size: int) -> None:
        messages[kind] = messages.get(kind, 0) + k
        nbytes[kind] = nbytes.get(kind, 0) + k * size

    # -- INIT: messages to the other nodes ------------------------------------------------------------
    not_self = torch.ones(I, n, dtype=torch.bool)
    not_self[torch.arange(I), senders] = False
    count("INIT", int(((init >= 0) & not_self).sum()), msg_bytes)

    def onehot(ids: Tensor) -> Tensor:  # [..., ] ids (-1 = none) -> [..., V] counts
        oh = torch.zeros(*ids.shape, V, dtype=torch.long)
        ok = ids >= 0
        oh[ok] = torch.nn.functional.one_hot(ids[ok], V)
        return oh

    # Byzantine support at each receiver: "split" -> nb messages for the value the receiver got in INIT
    byz_support = onehot(init) * nb if relay == "split" else torch.zeros(I, n, V, dtype=torch.long)
    if relay == "split" and nb:
        got = (init >= 0) & honest.unsqueeze(0)
        k = int(got.sum()) * nb  # each Byzantine node sends one ECHO and one READY to each such honest node
        count("ECHO", k, relay_bytes)
        count("READY", k, relay_bytes)

    # -- ECHO: every honest node echoes the INIT it got --------------------------------------------------
    echo = torch.where(honest.unsqueeze(0), init, torch.full_like(init, -1))  # [I, n]
    count("ECHO", int((echo >= 0).sum()) * (n - 1), relay_bytes)
    E = onehot(echo).sum(dim=1, keepdim=True) + byz_support  # [I, n, V] ECHOs held by each node
    thr = echo_threshold(n, f)
    reached = E >= thr
    ready = torch.where(reached.any(-1), reached.to(torch.int8).argmax(-1), torch.full_like(init, -1))
    ready = torch.where(honest.unsqueeze(0), ready, torch.full_like(ready, -1))
    sent = ready >= 0
    count("READY", int(sent.sum()) * (n - 1), relay_bytes)
    phases = 3
    # -- READY amplification until nothing changes ---------------------------------------------------------
    while True:
        R = onehot(ready).sum(dim=1, keepdim=True) + byz_support
        amp = R >= f + 1
        new = amp.any(-1) & ~sent & honest.unsqueeze(0)
        if not bool(new.any()):
            break
        ready = torch.where(new, amp.to(torch.int8).argmax(-1), ready)
        sent = sent | new
        count("READY", int(new.sum()) * (n - 1), relay_bytes)
        phases += 1
    deliv = R >= 2 * f + 1
    delivered = torch.where(deliv.any(-1), deliv.to(torch.int8).argmax(-1), torch.full_like(init, -1))
    delivered = torch.where(honest.unsqueeze(0), delivered, torch.full_like(delivered, -1))
    return BroadcastResult(delivered=delivered, messages=messages, bytes=nbytes, phases=phases + 1)


def honest_broadcast_cost(n: int, instances: int, payload_bytes: int, header_bytes: int = HEADER_BYTES) -> tuple[int, int]:
    """Messages and bytes of ``instances`` failure-free broadcasts: (n-1) INIT + n(n-1) ECHO + n(n-1) READY each."""
    m = instances * ((n - 1) + 2 * n * (n - 1))
    return m, m * (header_bytes + payload_bytes)
