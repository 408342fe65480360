"""Which partitions of the global batch each worker computes (DRACO, Chen et al., ICML 2018).

The global batch of a round is cut into ``n`` partitions (partition ``j`` = the minibatch drawn
from shard ``j``), so the adversary-free run is plain minibatch SGD on that global batch. With
``s`` adversaries to tolerate the redundancy is ``r = 2s + 1``: every worker computes the
gradients of (at least) ``r`` partitions instead of one.

- Repetition code: workers are cut into consecutive groups of ``r``; a group's workers all compute
  the same partitions (the group's own ``r`` partitions). When ``r`` does not divide ``n`` the
  ``n mod r`` leftover workers join the last group (as the DRACO code does): that group has
  ``m = r + (n mod r) < 2r`` members, all computing its ``m`` partitions, and still tolerates ``s``
  adversaries (``m - s >= s + 1`` honest identical copies).
- Cyclic code: worker ``i`` computes the cyclic window of partitions ``i, i+1, ..., i+2s (mod n)``;
  any ``n >= r``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def redundancy(s: int) -> int:
    """``r = 2s + 1``: the number of copies of each partition gradient needed to out-vote ``s`` adversaries."""
    return 2 * s + 1


def check_code(n: int, s: int) -> str | None:
    """``None`` when a DRACO code for ``s`` adversaries can run on ``n`` workers, else the violated condition."""
    if s < 0:
        return f"s >= 0 (got s={s})"
    if n < redundancy(s):
        return f"n >= 2s + 1 = {redundancy(s)} workers (got n={n})"
    return None


def repetition_groups(n: int, s: int) -> list[Tensor]:
    """Worker indices of each repetition group: consecutive blocks of ``2s+1``, leftovers in the last."""
    problem = check_code(n, s)
    if problem:
        raise ValueError(f"repetition code needs {problem}")
    r = redundancy(s)
    g = n // r
    starts = [i * r for i in range(g)]
    ends = starts[1:] + [n]
    return [torch.arange(a, b) for a, b in zip(starts, ends)]


def cyclic_support(n: int, s: int) -> Tensor:
    """``S: BoolTensor[n, n]``, ``S[i, j]`` iff worker ``i`` computes partition ``j`` (``j - i mod n <= 2s``)."""
    problem = check_code(n, s)
    if problem:
        raise ValueError(f"cyclic code needs {problem}")
    i = torch.arange(n).unsqueeze(1)
    j = torch.arange(n).unsqueeze(0)
    return (j - i) % n <= 2 * s


def assignment(code: str, n: int, s: int) -> list[Tensor]:
    """For each worker, the partitions whose gradients it computes (``len = r`` or group size)."""
    if code == "repetition":
        out: list[Tensor] = [torch.empty(0, dtype=torch.long)] * n
        for grp in repetition_groups(n, s):
            for w in grp.tolist():
                out[w] = grp.clone()
        return out
    if code == "cyclic":
        S = cyclic_support(n, s)
        return [S[i].nonzero().squeeze(1) for i in range(n)]
    raise ValueError(f"unknown DRACO code {code!r}; known: repetition, cyclic")
