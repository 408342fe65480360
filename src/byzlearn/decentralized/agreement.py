"""Averaging agreement (El-Mhamdi et al., NeurIPS 2021): honest nodes start with vectors ``x_j`` and,
after N rounds, output ``y_j`` that agree (the honest diameter shrinks with N) and stay within
``C * Delta_2(x)`` of the true honest average (C: the *averaging constant*).

Methods (``averaging_agreement(method, X, f, rounds, ...)``; X: ``Tensor[h, d]`` the honest inputs,
``n = h + f`` nodes of which f Byzantine):

- ``rb_trimmed_mean`` (n >= 3f + 1): per round, every node reliably broadcasts its vector (Bracha,
  ``broadcast.bracha``: an equivocating Byzantine node is delivered consistently or not at all),
  takes its first n - f deliveries as its report, runs the witness step (``witness.witness_sets``)
  and replaces its vector by the coordinate-wise trimmed mean (trim f per side) of every value it has
  delivered. ``broadcast=False`` drops the broadcast and the witnesses (each node uses its first
  n - f raw messages, equivocation allowed): the demonstration that the broadcast is what prevents
  an equivocating node from splitting the honest nodes.
- ``mda`` (n >= 6f + 1): per round, broadcast (plain, equivocation possible), wait for the first
  n - f vectors, minimum-diameter average with f discarded (``aggregators.functional.mda``).
- ``mve`` (n >= 6f + 1): the same with the minimum-volume-ellipsoid subset (``mve.mve_average``).
- ``gossip``: the non-robust baseline, the plain mean of the first n - f vectors received.

Asynchrony: each honest node proceeds with the first n - f messages it gets, and the adversary
chooses the order (``schedule``): ``"adversarial"`` (default; all Byzantine messages arrive first,
and the f honest messages that are late at node j are those of the honest nodes furthest from j
along the honest vectors' principal direction, so nodes on either side see a one-sided view),
``"random"`` (Byzantine first, then a random honest order per node and round) or ``"fixed"``
(Byzantine first, then honest in index order).

Metrics per round (``AgreementResult.rounds``): ``diameter`` (Delta_2 of the honest vectors),
``C_max`` = max_j ||y_j - xbar|| / Delta_2(x) (the averaging constant as the notes define it, per
node), ``C_mean`` = ||mean_j y_j - xbar|| / Delta_2(x) (the slides' form), messages and bytes sent
in the round, and wall time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..aggregators import functional as AF
from ..registry import ConfigError
from .adversary import Adversary, Forged, principal_projection, upper_side
from .broadcast import HEADER_BYTES, bracha, honest_broadcast_cost
from .mve import mve_average
from .witness import first_reports, witness_sets

METHODS = ("rb_trimmed_mean", "mda", "mve", "gossip")
SCHEDULES = ("adversarial", "random", "fixed")


def requirement(method: str, n: int, f: int, broadcast: bool = True) -> str | None:
    """The (n, f) condition ``method`` violates, or None."""
    if method not in METHODS:
        raise ConfigError(f"unknown averaging-agreement method {method!r}; known: {', '.join(METHODS)}")
    if f < 0 or n < 1 or f >= n:
        return f"0 <= f < n (got n={n}, f={f})"
    if method == "rb_trimmed_mean" and not n > 3 * f:
        return f"rb_trimmed_mean needs n >= 3f + 1 (n > 3f), got n={n}, f={f}"
    if method in ("mda", "mve") and not n >= 6 * f + 1:
        return f"{method} averaging agreement needs n >= 6f + 1, got n={n}, f={f} (6f + 1 = {6 * f + 1})"
    return None


def check_requirement(method: str, n: int, f: int, broadcast: bool = True) -> None:
    msg = requirement(method, n, f, broadcast)
    if msg:
        raise ConfigError(msg)


@dataclass
class AgreementResult:
    outputs: Tensor  # [h, d]
    rounds: list[dict[str, float]] = field(default_factory=list)
    messages: int = 0
    bytes: int = 0


def diameter(Z: Tensor) -> float:
    """Delta_2: the largest pairwise L2 distance between rows."""
    if Z.shape[0] < 2:
        return 0.0
    return float(torch.cdist(Z.double().unsqueeze(0), Z.double().unsqueeze(0))[0].max())


def _trimmed_mean_groups(rows: Tensor, masks: Tensor, f: int) -> Tensor:
    """Per node j the coordinate-wise trimmed mean of ``rows[masks[j]]``; one batched call per set size."""
    h = masks.shape[0]
    d = rows.shape[1]
    out = rows.new_empty(h, d)
    sizes = masks.sum(dim=1)
    for m in sizes.unique().tolist():
        nodes = torch.nonzero(sizes == m).flatten()
        idx = torch.stack([torch.nonzero(masks[j]).flatten() for j in nodes.tolist()])  # [g, m]
        batch = rows[idx]  # [g, m, d]
        flat = batch.permute(1, 0, 2).reshape(int(m), -1)  # [m, g*d]: one trimmed_mean call for the group
        out[nodes] = AF.trimmed_mean(flat, f).view(len(nodes), d)
    return out


class _Round:
    """Shared per-round machinery: the schedule, the Byzantine messages, the costs."""

    def __init__(self, n: int, f: int, h: int, schedule: str, generator: torch.Generator):
        if schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.n, self.f, self.h, self.schedule, self.gen = n, f, h, schedule, generator

    def honest_order(self, proj: Tensor) -> Tensor:
        """``[h, h]`` arrival rank of each honest sender's message at each honest node (0 = first)."""
        h = self.h
        if self.schedule == "fixed":
            return torch.arange(h, dtype=torch.float64).expand(h, h).clone()
        if self.schedule == "random":
            return torch.rand(h, h, generator=self.gen).argsort(dim=1).argsort(dim=1).double()
        # adversarial: node j receives first the honest nodes on its own side of the principal direction
        side = torch.where(upper_side(proj), 1.0, -1.0).double()
        key = -side.unsqueeze(1) * proj.double().unsqueeze(0)  # smaller = closer to j's side
        key = key + 1e-9 * torch.arange(h, dtype=torch.float64).unsqueeze(0)
        return key.argsort(dim=1).argsort(dim=1).double()


def averaging_agreement(
    method: str,
    X: Tensor,
    f: int,
    rounds: int,
    adversary: Adversary | str = "silent",
    schedule: str = "adversarial",
    broadcast: bool = True,
    generator: torch.Generator | None = None,
    relay: str = "split",
    dtype_bytes: int | None = None,
    track: bool = True,
    xbar: Tensor | None = None,
) -> AgreementResult:
    """Run ``rounds`` rounds of ``method`` on the honest inputs ``X: Tensor[h, d]`` with f Byzantine nodes.

    ``adversary``: an :class:`Adversary` or a behaviour name. ``broadcast``: only for
    ``rb_trimmed_mean`` (False: no reliable broadcast, no witnesses). ``track``: compute the metrics
    (diameter and C) every round. ``xbar``: the reference honest average (default ``X.mean(0)``).
    """
    if X.dim() != 2 or X.shape[0] < 1:
        raise ConfigError(f"averaging_agreement: X must be Tensor[h, d] with h >= 1, got shape {tuple(X.shape)}")
    if not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"averaging_agreement: rounds must be a non-negative integer, got {rounds!r}")
    h, d = X.shape
    n = h + f
    check_requirement(method, n, f, broadcast)
    adv = adversary if isinstance(adversary, Adversary) else Adversary(adversary)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    R = _Round(n, f, h, schedule, gen)
    payload = d * (dtype_bytes or X.element_size())
    Z = X.clone()
    xbar = X.mean(dim=0) if xbar is None else xbar
    delta0 = diameter(X) if track else float("nan")
    res = AgreementResult(outputs=Z)

    def metrics(r: int, msgs: int, nbytes: int, secs: float) -> dict[str, float]:
        row: dict[str, float] = {"round": r, "messages": msgs, "bytes": nbytes, "seconds": secs}
        if track:
            dia = diameter(Z)
            dist = (Z.double() - xbar.double()).norm(dim=1)
            gap = float((Z.double().mean(0) - xbar.double()).norm())
            row.update(
                diameter=dia,
                C_max=float(dist.max()) / delta0 if delta0 > 0 else (0.0 if float(dist.max()) == 0 else math.inf),
                C_mean=gap / delta0 if delta0 > 0 else (0.0 if gap == 0 else math.inf),
            )
        return row

    if track:
        res.rounds.append(metrics(0, 0, 0, 0.0))
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        proj = principal_projection(Z)
        forged = adv.forge(Z, n, f, r, gen, proj=proj)
        if method == "rb_trimmed_mean" and broadcast:
            Z, msgs, nbytes = _rb_round(Z, forged, R, proj, payload, relay)
        else:
            Z, msgs, nbytes = _plain_round(method, Z, forged, R, proj, payload)
        res.messages += msgs
        res.bytes += nbytes
        if track:
            res.rounds.append(metrics(r, msgs, nbytes, time.perf_counter() - t0))
    res.outputs = Z
    return res


def _rb_round(Z: Tensor, forged: Forged, R: _Round, proj: Tensor, payload: int, relay: str) -> tuple[Tensor, int, int]:
    """One round of reliable broadcast + witnesses + trimmed mean. Node ids: honest 0..h-1, Byzantine h..n-1."""
    n, f, h = R.n, R.f, R.h
    byz = torch.zeros(n, dtype=torch.bool)
    byz[h:] = True
    init = torch.zeros(n, n, dtype=torch.long)
    if f:
        init[h:, :h] = forged.assign  # what each Byzantine sender sends the honest nodes
        init[h:, h:] = -1  # (among themselves the Byzantine nodes need no messages)
    rb = bracha(n, f, byz, init, torch.arange(n), payload_bytes=payload, relay=relay)
    dv = rb.delivered[:, :h]  # [instances, honest receivers]
    # consistency of reliable broadcast: all honest receivers agree on each instance
    first = dv[:, :1]
    assert bool(((dv == first) | (dv < 0) & (first < 0)).all()), "reliable broadcast delivered inconsistently"
    rows = torch.empty(n, Z.shape[1], dtype=Z.dtype)
    rows[:h] = Z
    ok = torch.ones(n, dtype=torch.bool)
    for b in range(f):
        vid = int(dv[h + b, 0])
        if vid >= 0:
            rows[h + b] = forged.values[b, vid]
        else:
            ok[h + b] = False
            rows[h + b] = 0.0
    # delivery order at each honest node: delivered Byzantine values first (their rank: -1), then honest
    order = torch.full((h, n), math.inf, dtype=torch.float64)
    order[:, :h] = R.honest_order(proj)
    order[:, h:] = torch.where(ok[h:], -1.0, math.inf).double().unsqueeze(0).expand(h, f)
    D = first_reports(order, n, f)
    reports = torch.zeros(n, n, dtype=torch.bool)
    reports[:h] = D
    # Byzantine reports (reliably broadcast, hence the same for all): copies of the most one-sided honest
    # reports, alternating sides, so that the witnesses a node accepts overlap as little as possible
    if f:
        ext = proj.argsort()
        picks = [int(ext[-1 - b // 2]) if b % 2 == 0 else int(ext[b // 2]) for b in range(f)]
        for b, j in enumerate(picks):
            if ok[h + b]:
                reports[h + b] = D[j]
    W = witness_sets(order, reports, n, f)
    Znew = _trimmed_mean_groups(rows, W.V, f)
    # costs: n value broadcasts (counted by the simulation) + the report broadcasts (n ids each)
    m_rep, b_rep = honest_broadcast_cost(n, h, payload_bytes=4 * n)
    return Znew, rb.total_messages + m_rep, rb.total_bytes + b_rep


def _plain_round(method: str, Z: Tensor, forged: Forged, R: _Round, proj: Tensor, payload: int) -> tuple[Tensor, int, int]:
    """One round without reliable broadcast: node j uses its first n - f raw messages (Byzantine first)."""
    n, f, h = R.n, R.f, R.h
    d = Z.shape[1]
    sent = forged.assign >= 0  # [f, h]
    k = sent.sum(dim=0)  # Byzantine messages reaching each honest node
    order = R.honest_order(proj)  # [h, h]
    need_honest = (n - f) - k  # honest values each node takes
    take = order < need_honest.unsqueeze(1).double()  # [h, h]
    msgs = h * (n - 1) + int(sent.sum())
    nbytes = msgs * (HEADER_BYTES + payload)
    out = Z.new_empty(h, d)
    for j in range(h):
        parts = [Z[take[j]]]
        bj = sent[:, j]
        if bool(bj.any()):
            b_idx = torch.nonzero(bj).flatten()
            parts.append(forged.values[b_idx, forged.assign[b_idx, j]])
        G = torch.cat(parts)
        if method == "gossip":
            out[j] = G.mean(dim=0)
        elif method == "rb_trimmed_mean":
            out[j] = AF.trimmed_mean(G, f)
        elif method == "mda":
            out[j] = AF.mda(G, f)
        elif method == "mve":
            out[j] = mve_average(G, f).to(Z.dtype)
        else:  # pragma: no cover
            raise ConfigError(method)
    return out, msgs, nbytes


def agreement_rounds(t: int, cap: int | None = None) -> int:
    """LEARN's number of gradient-agreement rounds at step t >= 1: ``1 + ceil(log2 t)`` (capped)."""
    N = 1 + math.ceil(math.log2(t)) if t > 1 else 1
    return min(N, cap) if cap else N


__all__ = [
    "METHODS",
    "SCHEDULES",
    "AgreementResult",
    "averaging_agreement",
    "requirement",
    "check_requirement",
    "diameter",
    "agreement_rounds",
]
