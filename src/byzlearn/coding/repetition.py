"""DRACO's repetition code: groups of ``2s+1`` workers send the same vector; the server votes.

Every worker of group ``g`` sends ``m_g = sum of the gradients of the group's partitions`` (the
group computes them redundantly, see ``assignment.repetition_groups``). The server takes, per
group, the value sent by at least ``s + 1`` members and sums the groups. With at most ``s``
adversaries no wrong value gets ``s + 1`` votes and the ``>= s + 1`` honest members agree, so the
result is exactly the adversary-free sum.

Equality is exact (bit-identical replicas: deterministic data order and kernels) or, with
``tolerance > 0``, ``max|a - b| <= tolerance * max|b|`` (for hardware where replicas cannot be
bit-identical). A group where no value has ``s + 1`` votes, or where two different values both
do, is reported (status ``detected``) instead of returning an arbitrary candidate.
Decoding costs ``O(n d)`` in the usual case: at most ``s + 1`` candidates per group, each compared
with the group's rows in one vectorised pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .status import CORRECTED, DETECTED, OK, DecodeStatus


def encode(partition_grads: Tensor, groups: list[Tensor]) -> Tensor:
    """Honest messages ``Tensor[n, d]``: worker ``w`` of group ``g`` sends the sum of the group's partition gradients."""
    n = sum(len(g) for g in groups)
    out = partition_grads.new_empty(n, partition_grads.shape[1])
    for grp in groups:
        out[grp] = partition_grads.index_select(0, grp.to(partition_grads.device)).sum(0)
    return out


def _matches(M: Tensor, c: Tensor, tolerance: float) -> Tensor:
    if tolerance == 0.0:  # exact equality per row (NaN != NaN); on CPU numpy's array_equal is ~30x faster than torch.equal
        if M.device.type == "cpu":
            cn = c.numpy()
            return torch.tensor([np.array_equal(row.numpy(), cn) for row in M], dtype=torch.bool)
        return torch.tensor([torch.equal(row, c) for row in M], dtype=torch.bool, device=M.device)
    scale = c.abs().amax().clamp_min(torch.finfo(c.dtype).tiny)
    return ((M - c).abs().amax(dim=1) <= tolerance * scale) & torch.isfinite(M).all(dim=1)


def vote(M: Tensor, s: int, tolerance: float = 0.0) -> tuple[Tensor | None, int]:
    """Majority value of one group's messages ``M: Tensor[m, d]`` (``>= s + 1`` votes).

    Returns ``(value, outvoted)``; ``value`` is ``None`` when no value has ``s + 1`` votes or when
    two different values both have them (possible only with more than ``s`` adversaries).
    """
    m = M.shape[0]
    need = s + 1
    undecided = torch.ones(m, dtype=torch.bool, device=M.device)
    winner, votes = None, 0
    for c in range(m):  # at most m - need + 1 candidates can still reach `need` votes
        if not bool(undecided[c]):
            continue
        if int(undecided.sum()) < need:
            break
        same = _matches(M, M[c], tolerance) & undecided
        count = int(same.sum())
        undecided &= ~same
        if count >= need:
            if winner is not None:
                return None, 0  # two values with a majority each: more than s adversaries
            winner, votes = M[c], count
            if m - votes < need:  # no second value can reach `need` votes
                break
    if winner is None:
        return None, 0
    return winner, m - votes


def decode(messages: Tensor, groups: list[Tensor], s: int, tolerance: float = 0.0) -> tuple[Tensor, DecodeStatus, Tensor]:
    """Sum of the partition gradients from all workers' messages ``Tensor[n, d]``.

    Returns ``(total, status, group_ok)``; ``group_ok: BoolTensor[g]`` says which groups had a
    majority. With a failed group, ``total`` sums the other groups only and ``status`` is ``detected``.
    """
    total = torch.zeros(messages.shape[1], dtype=messages.dtype, device=messages.device)
    ok = torch.ones(len(groups), dtype=torch.bool)
    located = 0
    for gi, grp in enumerate(groups):
        lo, hi = int(grp[0]), int(grp[-1]) + 1
        rows = messages[lo:hi] if hi - lo == len(grp) else messages.index_select(0, grp.to(messages.device))
        value, outvoted = vote(rows, s, tolerance)  # a contiguous group is a view: no n x d copy
        if value is None:
            ok[gi] = False
            continue
        total += value
        located += outvoted
    failed = int((~ok).sum())
    status = DETECTED if failed else (CORRECTED if located else OK)
    return total, DecodeStatus(status, located, failed), ok
