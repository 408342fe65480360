"""Aggregator objects: thin, configurable, registered wrappers around ``aggregators.functional``.

An aggregator maps the round's gradient batch ``G: Tensor[n, d]`` (one row per worker, Byzantine
rows included) to one vector ``Tensor[d]``. ``f`` is the number of Byzantine inputs it must
tolerate. Each rule states its requirement on ``(n, f)`` in ``requirement`` and refuses to run
outside it (``check``), so a run fails before training, not in round 1000.
Stateful rules keep their state in the object and expose it through ``state_dict`` so that a
checkpoint saves it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..registry import Component, ConfigError, Registry
from ._finite import check_batch
from .requirements import Requirement


@dataclass
class AggregationContext:
    """What a rule may need beyond ``G``, filled by the engine every round.

    ``public_loss(P)`` evaluates the loss on the server's small public batch for each row of a
    parameter batch ``P: Tensor[k, d]`` and returns ``Tensor[k]`` (Zeno, ARNN). ``public_update()``
    returns the server's update ``Tensor[d]`` on a fresh public minibatch at the current params,
    computed with the workers' own local procedure (their gradient, momentum or K local steps; a
    pseudo-gradient like the rows of ``G``), the same tensor for every call within a round (FLTrust);
    ``None`` where the engine cannot compute it. ``params`` is the
    current model ``Tensor[d]`` and ``lr`` the server's learning rate. ``owns_batch``: the caller
    will not read ``G`` again, so a pre-aggregator may overwrite it instead of allocating a new
    ``Tensor[n, d]`` (the engine sets it; at d = 1e6 a fresh allocation costs more than the maths).
    """

    round: int = 0
    params: Tensor | None = None
    lr: float | None = None
    public_loss: Callable[[Tensor], Tensor] | None = None
    public_update: Callable[[], Tensor] | None = None
    generator: torch.Generator | None = None
    owns_batch: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


class Aggregator(Component):
    """Base class. Subclasses implement ``aggregate`` and, if they need it, ``requirement``."""

    name = "aggregator"
    needs_public_batch = False  # reads ctx.public_loss (Zeno, ARNN): the run must set data.public_size > 0
    needs_public_update = False  # reads ctx.public_update, the server's own update on its public batch (FLTrust)
    requires: Requirement | None = None  # the rule's (n, f) condition, declared beside its function

    def __init__(self, f: int = 0):
        if not isinstance(f, int) or f < 0:
            raise ConfigError(f"aggregator.f must be a non-negative integer, got {f!r}")
        self.f = f

    # -- requirement on (n, f) ------------------------------------------------------------------
    def requirement(self, n: int) -> str | None:
        """Return ``None`` when the rule may run on ``n`` inputs with this ``f``, else the violated condition."""
        return None if self.requires is None else self.requires.problem(n, self.f)

    def check(self, n: int) -> None:
        problem = self.requirement(n)
        if problem is not None:
            raise ConfigError(
                f"aggregator {self.name!r} cannot run with n={n} inputs and f={self.f}: it requires {problem}; "
                f"use more workers, a smaller aggregator.f / workers.byzantine, or another rule (byzlearn list)"
            )

    # -- the rule -------------------------------------------------------------------------------
    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        raise NotImplementedError

    def __call__(self, G: Tensor, ctx: AggregationContext | None = None) -> Tensor:
        check_batch(G, self.name)
        self.check(G.shape[0])
        return self.aggregate(G, ctx if ctx is not None else AggregationContext())

    def evaluate(self, G: Tensor, ctx: AggregationContext | None = None) -> Tensor:
        """Apply the rule without changing its state (adaptive attacks probe the defence with this)."""
        saved = copy.deepcopy(self.state_dict())
        try:
            return self(G, ctx)
        finally:
            self.load_state_dict(saved)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})"


AGGREGATORS: Registry[Aggregator] = Registry("aggregator", catalogue="byzlearn.catalogue")


def config_int(value: Any, key: str, minimum: int) -> None:
    """Refuse a config value ``aggregator.<key>`` that is not an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"aggregator.{key} must be an integer >= {minimum}, got {value!r}")


def config_float(value: Any, key: str, positive: bool) -> None:
    """Refuse a config value ``aggregator.<key>`` that is not a finite positive (or non-negative) number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise ConfigError(f"aggregator.{key} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")


class PreAggregator(Component):
    """A map ``Tensor[n, d] -> Tensor[m, d]`` applied before a rule (NNM, bucketing, clipping).

    ``output_count(n)`` is the number of rows it returns for ``n`` inputs, so a chain can check the
    rule's requirement before training.
    """

    name = "pre-aggregator"
    requires: Requirement | None = None

    def __init__(self, f: int = 0):
        self.f = f

    def output_count(self, n: int) -> int:
        return n

    def requirement(self, n: int) -> str | None:
        return None if self.requires is None else self.requires.problem(n, self.f)

    def __call__(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f})"


PREAGGREGATORS: Registry[PreAggregator] = Registry("pre-aggregator", catalogue="byzlearn.catalogue")


class Chain(Aggregator):
    """Pre-aggregators applied in order, then a rule (``nnm`` then ``krum``, say), as one aggregator."""

    def __init__(self, pre: list[PreAggregator], rule: Aggregator):
        super().__init__(rule.f)
        self.pre, self.rule = pre, rule
        self.name = "+".join([p.name for p in pre] + [rule.name])
        # the chain needs what its rule reads (engines and strategies check the chain, not its parts)
        self.needs_public_batch, self.needs_public_update = rule.needs_public_batch, rule.needs_public_update

    def requirement(self, n: int) -> str | None:
        for p in self.pre:
            problem = p.requirement(n)
            if problem is not None:
                return f"{problem} (for pre-aggregator {p.name!r})"
            n = p.output_count(n)
        return self.rule.requirement(n)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        owned = ctx.owns_batch
        for p in self.pre:
            out = p(G, ctx if owned == ctx.owns_batch else dataclasses.replace(ctx, owns_batch=owned))
            owned = owned or out is not G  # an intermediate batch belongs to the chain
            G = out
        return self.rule.aggregate(G, ctx)

    def state_dict(self) -> dict[str, Any]:
        return {"pre": [p.state_dict() for p in self.pre], "rule": self.rule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, s in zip(self.pre, state["pre"]):
            p.load_state_dict(s)
        self.rule.load_state_dict(state["rule"])

    def __repr__(self) -> str:
        return f"Chain({self.pre!r}, {self.rule!r})"


def build_aggregator(section: dict[str, Any], f_default: int) -> Aggregator:
    """Build the aggregator described by a config section ``{name, pre, **params}``.

    ``f`` defaults to the run's number of Byzantine workers. ``pre`` is a list of tables
    ``{name = "nnm", ...}`` (or plain names) applied in order before the rule; each gets the same
    ``f`` unless it sets its own.
    """
    section = dict(section)
    name = section.pop("name")
    pre_specs = section.pop("pre", []) or []
    section.setdefault("f", f_default)
    rule = AGGREGATORS.build(name, section, "aggregator")
    if not pre_specs:
        return rule
    pres = []
    for i, spec in enumerate(pre_specs):
        spec = {"name": spec} if isinstance(spec, str) else dict(spec)
        if "name" not in spec:
            raise ConfigError(f"aggregator.pre[{i}] needs a name; known: {', '.join(PREAGGREGATORS.names())}")
        pname = spec.pop("name")
        if "f" in PREAGGREGATORS.parameters(pname):
            spec.setdefault("f", section["f"])
        pres.append(PREAGGREGATORS.build(pname, spec, f"aggregator.pre[{i}]"))
    return Chain(pres, rule)
