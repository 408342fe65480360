"""Adaptive attacks: ALIE and IPM whose strength is optimised against the defender's rule.

Each round, the attacker (omniscient, and knowing the aggregator) searches the strength ``tau``
(``z`` for ALIE, ``epsilon`` for IPM) that maximises the damage

    D(tau) = || F(G(tau)) - mu ||_2,   G(tau) = [honest rows; f copies of attack(tau)]

where ``F`` is the defender's aggregator (pre-aggregators included when it is a ``Chain``) and
``mu`` the honest mean. This is ByzFL's "Optimal ALIE" / "Optimal IPM" (``LineMaximize``
optimiser): a 1-D best-effort maximisation by exploration with a fixed budget of evaluations.

The rule is probed with ``Aggregator.evaluate``, which restores the rule's state afterwards, so
stateful rules (centered clipping, momentum-based rules) are not advanced by the probes. The probes
see the ``AggregationContext`` the engine will hand the rule (``AttackContext.aggregation``: round,
parameters, ``lr``, the public batch, FLTrust's server update), with a private generator reset to one
seed drawn from ``ctx.generator`` before every probe and ``owns_batch`` off (the probe buffer is reused).
"""

# No ``from __future__ import annotations``: the registry checks config values against the real
# annotation objects of the constructors.

import dataclasses
import math
from typing import Any, Callable, Literal, get_args

import torch
from torch import Tensor

from ..aggregators.base import AggregationContext
from ..registry import ConfigError
from .base import ATTACKS, Attack, AttackContext
from .gradient import honest_mean, require_honest, rows_of
from .omniscient import coordinate_std

Search = Literal["two_sided", "byzfl"]  # the contraction of ``line_maximize``


def line_maximize(
    objective: Callable[[float], float],
    evals: int = 20,
    start: float = 0.0,
    delta: float = 10.0,
    ratio: float = 0.8,
    search: Search = "two_sided",
) -> tuple[float, float]:
    """Best-effort ``argmax_{tau >= 0} objective(tau)`` with exactly ``evals`` evaluations.

    A ``LineMaximize`` search:

    1. evaluate ``start``;
    2. expansion: probe ``best + delta``; while the probe improves on the best, accept it and double
       ``delta``; at the first probe that does not improve, shrink ``delta`` by ``ratio`` and stop;
    3. contraction: the probe walks from its last position by ``delta`` toward the best point
       (up if it is below the best, down if it is at or above it; a step that would go below 0 is
       halved back toward the probe until non-negative), improvements are accepted, and ``delta``
       shrinks by ``ratio`` after every probe (``search = "two_sided"``, the default); ByzFL 0.0.11's
       optimal attacks (``byzfl/attacks/attacks.py``, ``_contraction_phase``) probe ``best + delta`` only,
       never below the best point (``search = "byzfl"``): on a damage curve that peaks below the first
       expansion step (clipping flattens it beyond) that search stays on the plateau;

    until the budget is spent. Returns ``(best_tau, best_value)``. A NaN value ranks below every
    number (it never counts as an improvement; a NaN at ``start`` is beaten by any number).
    """
    if evals < 1:
        raise ValueError(f"line_maximize needs at least one evaluation, got evals={evals}")
    if search not in get_args(Search):
        raise ValueError(f"line_maximize: search must be one of {get_args(Search)}, got {search!r}")
    raw = objective

    def objective(x: float) -> float:  # NaN (a rule that returned NaN) ranks below everything
        y = raw(x)
        return -math.inf if y != y else y

    best_x, best_y = start, objective(start)
    left = evals - 1
    probe = best_x
    while left > 0:  # expansion
        probe = best_x + delta
        y = objective(probe)
        left -= 1
        if y > best_y:
            best_x, best_y = probe, y
            delta *= 2
        else:
            delta *= ratio
            break
    while left > 0:  # contraction
        if search == "byzfl":
            probe = best_x + delta
        elif probe < best_x:
            probe = probe + delta
        else:
            x = probe - delta
            while x < 0:
                x = (x + probe) / 2
            probe = x
        y = objective(probe)
        left -= 1
        if y > best_y:
            best_x, best_y = probe, y
        delta *= ratio
    return best_x, best_y


class _OptimalAttack(Attack):
    """Common part of the optimised ALIE/IPM: the damage objective and the line search."""

    omniscient = True
    family = ""

    def __init__(self, evals: int = 20, start: float = 0.0, delta: float = 10.0, ratio: float = 0.8, search: Search = "two_sided"):
        if search not in get_args(Search):
            raise ConfigError(f"attack.search must be 'two_sided' or 'byzfl' (ByzFL 0.0.11's one-sided contraction), got {search!r}")
        self.search = search
        if not isinstance(evals, int) or isinstance(evals, bool) or evals < 1:
            raise ConfigError(f"attack.evals must be a positive integer, got {evals!r}")
        for key, value in (("start", start), ("delta", delta), ("ratio", ratio)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                raise ConfigError(f"attack.{key} must be a number, got {value!r}")
        if start < 0:
            raise ConfigError(f"attack.start must be >= 0, got {start!r}")
        if delta <= 0:
            raise ConfigError(f"attack.delta must be > 0, got {delta!r}")
        if not 0.5 < ratio < 1.0:
            raise ConfigError(f"attack.ratio must be in (0.5, 1), got {ratio!r}")
        self.evals, self.start, self.delta, self.ratio = evals, float(start), float(delta), float(ratio)
        self.last_strength: float | None = None  # the strength chosen in the latest round (for logging)
        self.last_damage: float | None = None

    # subclasses: the attack vector for a strength, given precomputed statistics of the honest rows
    def _prepare(self, honest: Tensor) -> Any:
        raise NotImplementedError

    def _vector(self, stats: Any, tau: float) -> Tensor:
        raise NotImplementedError

    def damage_function(self, ctx: AttackContext, stats: Any = None) -> Callable[[float], float]:
        """``tau -> ||F(honest; f copies of attack(tau)) - mu||_2`` for this round (``stats``: ``_prepare(ctx.honest)``)."""
        if ctx.aggregator is None or not hasattr(ctx.aggregator, "evaluate"):
            raise ValueError(
                f"attack {self.name!r} optimises against the defender's rule and needs ctx.aggregator "
                "(an Aggregator with .evaluate), got None"
            )
        mu = honest_mean(ctx)
        honest = ctx.honest
        h, f = honest.shape[0], ctx.f
        stats = self._prepare(honest) if stats is None else stats
        # one buffer for all probes: the honest rows stay, the f Byzantine rows are overwritten
        G = torch.empty((h + f, honest.shape[1]), dtype=honest.dtype, device=honest.device)
        G[:h] = honest
        # randomised rules (bucketing, ...) get their own generator, reset to the same seed before every
        # probe so that all strengths are compared under the same randomness (one draw from ctx.generator)
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
        probe_gen = torch.Generator(device=honest.device)
        if ctx.aggregation is not None:  # the context the rule will see (lr, public batch, FLTrust's server update)
            agg_ctx = dataclasses.replace(ctx.aggregation, generator=probe_gen, owns_batch=False)
        else:
            agg_ctx = AggregationContext(round=ctx.round, params=ctx.params, generator=probe_gen)
        aggregator = ctx.aggregator

        def damage(tau: float) -> float:
            G[h:] = self._vector(stats, tau)
            probe_gen.manual_seed(seed)
            out = aggregator.evaluate(G, agg_ctx)
            return float(torch.linalg.vector_norm(out - mu))

        return damage

    def forge(self, ctx: AttackContext) -> Tensor:
        require_honest(ctx)  # clear error when there is no honest row
        if ctx.f == 0:
            return ctx.honest[:0]
        stats = self._prepare(ctx.honest)  # once per round: the probes and the final vector share it
        damage = self.damage_function(ctx, stats)
        tau, value = line_maximize(damage, self.evals, self.start, self.delta, self.ratio, self.search)
        self.last_strength, self.last_damage = tau, value
        return rows_of(self._vector(stats, tau), ctx.f)

    def __repr__(self) -> str:
        search = "" if self.search == "two_sided" else f", search={self.search!r}"
        return f"{type(self).__name__}(evals={self.evals}, start={self.start}, delta={self.delta}, ratio={self.ratio}{search})"


@ATTACKS.register("alie_optimal")
class OptimalALIEAttack(_OptimalAttack):
    """ALIE with ``z`` optimised each round against the defender's rule (ByzFL "Optimal ALIE").

    All send ``mu - z * sigma`` (as ``alie``) with ``z >= 0`` maximising ``||F(G(z)) - mu||``, found by
    ``line_maximize`` (defaults as ByzFL's optimal attacks: start 0, delta 10, ratio 0.8, 20
    evaluations). ``direction = "plus"`` sends ``mu + z * sigma``, ByzFL's ``Optimal_ALittleIsEnough``;
    ``search = "byzfl"`` takes ByzFL 0.0.11's one-sided contraction (see ``line_maximize``).
    The chosen ``z`` is kept in ``last_strength``.
    """

    name = "alie_optimal"

    def __init__(
        self,
        evals: int = 20,
        start: float = 0.0,
        delta: float = 10.0,
        ratio: float = 0.8,
        direction: Literal["minus", "plus"] = "minus",
        search: Search = "two_sided",
    ):
        super().__init__(evals, start, delta, ratio, search)
        if direction not in ("minus", "plus"):
            raise ConfigError(f"attack.direction must be 'minus' (mu - z sigma, Baruch et al.) or 'plus' (ByzFL), got {direction!r}")
        self.direction = direction

    def _prepare(self, honest: Tensor) -> Any:
        return honest.mean(dim=0), coordinate_std(honest)

    def _vector(self, stats: Any, tau: float) -> Tensor:
        mu, sigma = stats
        return mu + tau * sigma if self.direction == "plus" else mu - tau * sigma


@ATTACKS.register("ipm_optimal")
class OptimalIPMAttack(_OptimalAttack):
    """IPM with ``epsilon`` optimised each round against the defender's rule (ByzFL "Optimal IPM").

    All send ``-epsilon * mu`` (as ``ipm``) with ``epsilon >= 0`` maximising ``||F(G(eps)) - mu||``, found
    by ``line_maximize`` (start 0, delta 10, ratio 0.8, 20 evaluations, as ByzFL; ``search = "byzfl"``
    for ByzFL 0.0.11's one-sided contraction). The chosen
    ``epsilon`` is kept in ``last_strength``.
    """

    name = "ipm_optimal"

    def _prepare(self, honest: Tensor) -> Any:
        return honest.mean(dim=0)

    def _vector(self, stats: Any, tau: float) -> Tensor:
        return -tau * stats


__all__ = ["line_maximize", "OptimalALIEAttack", "OptimalIPMAttack"]
