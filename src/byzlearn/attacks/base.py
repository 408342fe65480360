"""Byzantine behaviours. An attack forges the rows the Byzantine workers send in a round.

Gradient-level attacks implement ``forge``; data-level attacks (label flipping) also implement
``poison_labels`` and set ``needs_own_gradients`` so that the engine computes the Byzantine
workers' gradients on their poisoned data in the same batched pass as the honest ones.
Omniscient attacks read ``ctx.honest``, the honest gradients of the round; that is the standard
threat model of ALIE, IPM, Mimic and the adaptive attacks, and ``omniscient`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..registry import Component, ConfigError, Registry


@dataclass
class AttackContext:
    """Everything an attack may look at in one round.

    n: all workers; f: Byzantine workers this round; honest: ``Tensor[n-f, d]`` honest gradients;
    own: ``Tensor[f, d]`` the Byzantine workers' own gradients (only when ``needs_own_gradients``);
    params: the current model ``Tensor[d]``; aggregator: the defender's rule (adaptive attacks);
    generator: the attack's random stream (seeded, checkpointed); aggregation: the
    ``AggregationContext`` the rule will be called with (so adaptive attacks can probe rules that
    need the public batch or the learning rate).
    """

    n: int
    f: int
    round: int
    honest: Tensor
    own: Tensor | None
    params: Tensor
    aggregator: Any
    generator: torch.Generator
    aggregation: Any = None  # the AggregationContext the rule will see (lr, public_loss) for adaptive attacks
    byzantine: Tensor | None = None  # the Byzantine workers' row indices in the batch, sorted (None: unknown)


class Attack(Component):
    """Base class: ``forge`` returns ``Tensor[k, d]`` with ``k <= f`` (fewer rows = messages dropped)."""

    name = "attack"
    omniscient = False
    needs_own_gradients = False
    poisons_data = False

    def poison_labels(self, y: Tensor, num_classes: int) -> Tensor:
        """Labels the Byzantine workers train on (data-level attacks override this)."""
        return y

    def forge(self, ctx: AttackContext) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


ATTACKS: Registry[Attack] = Registry("attack", catalogue="byzlearn.catalogue")


def build_attack(spec: str | dict[str, Any]) -> Attack:
    """The attack a config's ``[attack]`` section describes: a name (``"alie"``) or ``{"name": "gaussian", "std": 1.0}``."""
    keys = {"name": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else {}
    name = keys.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"an attack is a name or a dict with a name, e.g. 'alie' or {{'name': 'ipm', 'epsilon': 0.5}}; got {spec!r}")
    return ATTACKS.build(name, keys, "attack")


@ATTACKS.register("none")
class NoAttack(Attack):
    """No attack: the 'Byzantine' workers behave honestly and send their true gradients."""

    name = "none"
    needs_own_gradients = True

    def forge(self, ctx: AttackContext) -> Tensor:
        assert ctx.own is not None
        return ctx.own
