"""The DRACO engine: the simulator's round with redundant gradients, encoded messages and decoding.

One round (``DracoSimulator.step``):

1. the global batch: ``n`` partitions, partition ``j`` = the minibatch of shard ``j`` drawn by the
   simulator's ``ShardSampler`` (so an adversary-free run is plain minibatch SGD on that batch, the
   same batches as a ``Simulator`` run with the same seed);
2. gradients: ``compute = "once"`` evaluates each partition gradient once (one ``vmap`` pass over
   ``n`` partitions) and every worker encodes from those: replicas are bit-identical by
   construction and the simulated r-fold work is NOT done (the reported compute time is that of
   ``n`` gradients; multiply by ``r`` or use ``"replicated"`` for an honest wall time).
   ``compute = "replicated"`` makes every worker compute its own ``r`` (or group-size) partition
   gradients literally, ``n r`` gradients in one ``vmap`` pass: the r-fold work is really done and
   the repetition code's votes compare independently computed replicas;
3. encoding: repetition: the group's sum; cyclic: ``r_i = sum_j W[i, j] g_j`` sent as float64
   ``[Re, Im]`` (``coding.cyclic``);
4. this round's Byzantine workers (``workers.byzantine`` of them; redrawn every round with
   ``workers.byzantine_set = "redraw"``, as in the paper) replace their message by the attack's
   output; the attack sees the honest workers' messages as ``ctx.honest`` and the Byzantine
   workers' own honest messages as ``ctx.own``; a dropped message is an erasure;
5. decoding gives the exact sum of the partition gradients (or status ``detected``); the server
   optimiser applies the mean (sum / n); with ``workers.momentum`` the momentum recursion is applied to
   that decoded mean (equal, by linearity, to the mean of the honest momenta of a fault-free run). When decoding
   cannot be trusted the round is skipped (``fallback = "skip"``) or the workers' own single-partition gradients (forged for the Byzantine
   ones) are aggregated with the fallback rule (e.g. ``"geometric_median"``): one extra message per
   worker, no extra gradient work.

Per-round status counters (``ok``, ``corrected``, ``detected``, errors located, fallback used,
skipped) live in the aggregator's state (checkpointed) and come out of ``extra_metrics``.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import Tensor

from ..aggregators import build_aggregator
from ..attacks import AttackContext
from ..config import Config
from ..data import Dataset
from ..engine.round import RoundDraw, forge
from ..engine.simulator import Simulator
from ..engine.work import Momentum
from ..models.user import ModelSpec
from ..registry import ConfigError
from . import repetition
from .aggregators import DracoAggregator
from .assignment import assignment, repetition_groups
from .cyclic import CyclicCode
from .status import DecodeStatus

COUNTERS = ("rounds_ok", "rounds_corrected", "rounds_detected", "errors_located", "fallback_used", "rounds_skipped")
TIMERS = ("compute", "encode", "attack", "decode")


class DracoSimulator(Simulator):
    """``Simulator`` whose workers compute redundant gradients and send DRACO-encoded messages."""

    def __init__(self, cfg: Config, dataset: Dataset | None = None, model: ModelSpec | None = None):
        super().__init__(cfg, dataset, model)
        agg = self.aggregator
        if not isinstance(agg, DracoAggregator):
            raise ConfigError(f"DracoSimulator needs aggregator.name = draco_repetition or draco_cyclic, got {agg.name!r}")
        if self.attack.poisons_data:
            raise ConfigError(f"attack {self.attack.name!r} poisons data; the DRACO engine supports message-level attacks only")
        # worker momentum would break the exactness argument (the decoder needs every replica of a partition
        # gradient to be equal); applied AFTER decoding, to the exact mean, it equals the mean of the honest
        # workers' momenta of a fault-free run, because the recursion is linear
        self.momentum = None
        self.decoded_momentum = Momentum(1, self.d, cfg.workers.momentum, cfg.workers.momentum_form) if cfg.workers.momentum > 0 else None
        self.code, self.s, self.compute = agg.code, agg.s, agg.compute
        n = self.n
        self.assign = assignment(self.code, n, self.s)
        if self.code == "repetition":
            self.groups = repetition_groups(n, self.s)
            self.cyclic = None
        else:
            self.groups = []
            self.cyclic = CyclicCode(n, self.s, agg.tolerance, agg.correct)
        # replicated mode: worker i's copies are rows offset[i] .. offset[i] + len(assign[i]) of one vmap pass
        self.flat_parts = torch.cat(self.assign)
        sizes = torch.tensor([len(a) for a in self.assign])
        self.offsets = torch.cumsum(sizes, 0) - sizes
        self.own_slot = torch.tensor([int(self.offsets[i]) + int((a == i).nonzero()) for i, a in enumerate(self.assign)])
        self.fallback_rule = None
        if agg.fallback != "skip":
            self.fallback_rule = build_aggregator({"name": agg.fallback}, f_default=self.f)
            self.fallback_rule.check(n)
        for key in COUNTERS:
            agg.counters.setdefault(key, 0)
        self.timers = dict.fromkeys(TIMERS, 0.0)
        self.timed_rounds = 0
        self.last_status = DecodeStatus()

    # -- pieces ------------------------------------------------------------------------------------
    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def partition_gradients(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Honest messages ``Tensor[n, D]``, partition gradients ``Tensor[n, d]`` (worker i's own copy of
        partition i) and per-partition losses ``Tensor[n]``, timing compute and encode."""
        t0 = self._sync()
        if self.compute == "once":
            G, losses = self.worker_gradients(idx)
            t1 = self._sync()
            M = repetition.encode(G, self.groups) if self.cyclic is None else self.cyclic.encode(G)
        else:
            copies, closs = self.worker_gradients(idx[self.flat_parts])
            t1 = self._sync()
            G = copies.index_select(0, self.own_slot.to(copies.device))
            losses = closs.index_select(0, self.own_slot.to(closs.device))
            if self.cyclic is None:
                M = copies.new_empty(self.n, self.d)
                for grp in self.groups:
                    m, off = len(grp), int(self.offsets[grp[0]])
                    M[grp.to(M.device)] = copies[off : off + m * m].view(m, m, self.d).sum(1)
            else:
                M = self.cyclic.encode_windows(copies.view(self.n, self.cyclic.r, self.d))
        t2 = self._sync()
        self.timers["compute"] += t1 - t0
        self.timers["encode"] += t2 - t1
        return M, G, losses

    def _forge(self, M: Tensor, draw: RoundDraw, agg_ctx: Any) -> Tensor:
        """The attack phase on code words: the Byzantine rows of ``M`` replaced (dropped rows become NaN: erasures)."""
        if self.f == 0:
            return M
        byz_ids = draw.byzantine
        ctx = AttackContext(
            n=self.n,
            f=self.f,
            round=self.round,
            honest=M.index_select(0, draw.honest),
            own=M.index_select(0, byz_ids) if self.attack.needs_own_gradients else None,
            params=self.theta,
            aggregator=self.aggregator,
            generator=self.gens["attack"],
            aggregation=agg_ctx,
        )
        forged = forge(self.attack, ctx, M.shape[1])
        k = forged.shape[0]
        M.index_copy_(0, byz_ids[:k], forged.to(device=M.device, dtype=M.dtype))
        if k < self.f:
            M[byz_ids[k:]] = float("nan")
        return M

    def decode(self, M: Tensor) -> tuple[Tensor, DecodeStatus]:
        if self.cyclic is None:
            total, status, _ = repetition.decode(M, self.groups, self.s, self.aggregator.tolerance)
        else:
            total, status, _ = self.cyclic.decode(M, self.gens["aggregator"])
        return total, status

    def gradient_batch(self, agg_ctx=None):  # noqa: D102
        raise NotImplementedError("DracoSimulator has no plain gradient batch: workers send encoded messages (see step)")

    # -- one round ---------------------------------------------------------------------------------
    def step(self) -> float:
        ctx = self.aggregation_context()
        draw = self.draw()
        M, G, losses = self.partition_gradients(draw.batches)
        t0 = self._sync()
        M = self._forge(M, draw, ctx)
        t1 = self._sync()
        total, status = self.decode(M)
        t2 = self._sync()
        self.timers["attack"] += t1 - t0
        self.timers["decode"] += t2 - t1
        self.timed_rounds += 1
        # the fallback costs one more message per worker: its own partition gradient
        self.apply_decoded(total, status, lambda: self._forge(G.clone(), draw, ctx), ctx)
        self.round += 1
        return float(losses.mean())

    def apply_decoded(self, total: Tensor, status: DecodeStatus, fallback_batch: Callable[[], Tensor], ctx: Any) -> None:
        """Count the decode ``status`` and update the model: with the decoded mean when it is trusted; else
        with the fallback rule on the workers' own gradients (``fallback_batch()``, built only then; dropped
        and non-finite rows discarded) when one is set and its requirement holds for the rows left; else
        the round is skipped. The distributed server calls it with the code words that arrived."""
        c = self.aggregator.counters
        c["rounds_" + status.status] += 1
        c["errors_located"] += status.located
        self.last_status = status
        update = None
        if status.trusted:
            update = total / self.n
            if self.decoded_momentum is not None:
                update = self.decoded_momentum.step(update.unsqueeze(0), torch.zeros(1, dtype=torch.long))[0]
        elif self.fallback_rule is not None:
            c["fallback_used"] += 1
            Gf = fallback_batch()
            Gf = Gf[torch.isfinite(Gf).all(dim=1)]
            if Gf.shape[0] and self.fallback_rule.requirement(Gf.shape[0]) is None:
                ctx.owns_batch = True
                update = self.fallback_rule(Gf, ctx)
            else:
                c["rounds_skipped"] += 1
        else:
            c["rounds_skipped"] += 1
        if update is not None:
            self.apply_update(update)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.decoded_momentum is not None:
            state["decoded_momentum"] = self.decoded_momentum.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.decoded_momentum is not None:
            self.decoded_momentum.load_state_dict(state.get("decoded_momentum", {}), self.device)

    def extra_metrics(self) -> dict[str, Any]:
        """DRACO status counters (cumulative) and mean per-round times in ms of this session."""
        out: dict[str, Any] = {f"draco_{k}": v for k, v in self.aggregator.counters.items()}
        if self.timed_rounds:
            out.update({f"draco_{k}_ms": round(1e3 * v / self.timed_rounds, 4) for k, v in self.timers.items()})
        return out
