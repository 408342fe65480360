"""The witness step (Abraham, Amit & Dolev 2004) on top of reliable broadcast.

After reliably delivering round-r values from ``n - f`` distinct senders (its *report* ``D_j``),
honest node j reliably broadcasts ``D_j``. Node j accepts node k as a *witness* once it holds k's
report and has itself delivered every value listed in it; it waits for ``n - f`` witnesses and then
uses every value it has delivered so far, ``V_j``. Any two honest nodes have at least ``n - 2f >= f + 1``
common witnesses, so at least one honest common witness ``w``, and both hold all ``n - f`` values of
``D_w``: ``|V_j ∩ V_k| >= n - f`` (and reliable broadcast makes the common values identical).

Simulation, for all honest nodes at once: ``order[j, v]`` is the time at which node j delivers value
v (the adversary's schedule; ``inf`` for a value j never delivers); report k is *covered* at j at
the time of its latest value; j stops at the ``(n - f)``-th covered report; ``V_j`` is every value
delivered by then.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import ConfigError


@dataclass
class WitnessResult:
    """``V[j]``: bool ``[n]`` the values honest node j uses; ``witnesses[j]``: the reports it accepted."""

    V: Tensor
    witnesses: Tensor
    wait_time: Tensor


def witness_sets(order: Tensor, reports: Tensor, n: int, f: int) -> WitnessResult:
    """``order``: float ``[h, n]`` delivery time of each sender's value at each honest node (``inf``:
    never). ``reports``: bool ``[n, n]``, row k = the senders in k's report (a node that sends no
    report has an all-False row and ``reported`` False: pass such rows as ``None`` via the mask
    below, i.e. an all-False row is treated as *no report*). Returns the sets ``V_j``.
    """
    h = order.shape[0]
    if reports.shape != (n, n) or order.shape != (h, n):
        raise ConfigError(f"witness_sets: order must be [h, {n}] and reports [{n}, {n}]")
    has_report = reports.any(dim=1)  # [n]
    # time at which report k is covered at node j: max over its values of their delivery time
    t = order.unsqueeze(1).expand(h, n, n)  # [j, k, v]
    cover = torch.where(reports.unsqueeze(0), t, torch.full_like(t, -float("inf"))).amax(dim=2)  # [h, n]
    cover = torch.where(has_report.unsqueeze(0), cover, torch.full_like(cover, float("inf")))
    need = n - f
    wait = cover.kthvalue(need, dim=1).values  # [h]
    if bool(torch.isinf(wait).any()):
        raise ConfigError("witness step: some honest node never collects n - f witnesses (fewer than n - f usable reports)")
    witnesses = cover <= wait.unsqueeze(1)
    V = order <= wait.unsqueeze(1)
    return WitnessResult(V=V, witnesses=witnesses, wait_time=wait)


def first_reports(order: Tensor, n: int, f: int) -> Tensor:
    """Each honest node's report ``D_j``: the first ``n - f`` values it delivers (bool ``[h, n]``)."""
    need = n - f
    finite = torch.isfinite(order).sum(dim=1)
    if bool((finite < need).any()):
        raise ConfigError("reliable broadcast delivered fewer than n - f values to some honest node")
    idx = order.argsort(dim=1, stable=True)[:, :need]
    D = torch.zeros_like(order, dtype=torch.bool)
    D.scatter_(1, idx, True)
    return D
