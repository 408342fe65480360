"""Byzantine clients inside Flower: a ClientApp mod that enrols a node, and the coalition's forge.

This is a simulation device, as the distributed runtime's collusion channel is
(``distributed/collusion.py``): in a real federation no client sees another client's update, so
the knowledge an omniscient attack needs is made an explicit channel.

- ``byzantine_mod(nodes)`` goes into the ClientApp's ``mods``; on an enrolled node (its
  ``partition-id`` in ``nodes``) it runs the client's own training, then marks the reply
  (``MetricRecord`` key ``byzlearn-byzantine``), and the marked reply is the coalition member's
  *own* update. The mod also tells the client code that it is Byzantine, so that data-level
  attacks (label flipping) poison its training labels through ``poisoned_labels``.
- ``Adversary(attack)``, given to the strategy (``RobustStrategy(..., adversary=...)``), is the
  coalition's leader: when the round's replies are in, it forges the marked replies' rows jointly
  with byzlearn's attack, exactly as the simulator's attack phase does (``engine.round.forge`` and
  ``place``). An omniscient attack (ALIE, IPM, Mimic, the optimal ones) sees the honest replies of
  the round: the model of a rushing, network-wide eavesdropper; a non-omniscient one sees none;
  attacks that need the Byzantine clients' own updates (label flip, bit flip) get the marked
  replies. Adaptive attacks probe the defender's rule through ``Aggregator.evaluate``.

Without an ``Adversary`` the strategy ignores the mark entirely: a client gains nothing by
setting it, and a real deployment never sets one.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from flwr.common.logger import log
from torch import Tensor

from ..attacks import AttackContext, build_attack
from ..engine.round import AttackContractError, forge, place
from .mods import ATTACK_KEY


class Adversary:
    """The coalition of enrolled clients, forging their rows on the strategy side (see the module docstring)."""

    def __init__(self, attack: str | dict[str, Any], seed: int = 0):
        self.spec = {"name": attack} if isinstance(attack, str) else dict(attack)
        self.attack = build_attack(attack)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def name(self) -> str:
        return self.attack.name

    def train_config(self) -> dict[str, str]:
        """What the strategy adds to the train config: the spec of a data-poisoning attack, for the mod."""
        return {ATTACK_KEY: json.dumps(self.spec)} if self.attack.poisons_data else {}

    def forge(self, G: Tensor, byzantine: Tensor, params: Tensor, rule: Any, ctx: Any, server_round: int) -> Tensor:
        """``G`` with the rows at ``byzantine`` (sorted indices) replaced by the forged ones (fewer: dropped)."""
        keep = torch.ones(G.shape[0], dtype=torch.bool)
        keep[byzantine] = False
        attack = self.attack
        actx = AttackContext(
            n=G.shape[0],
            f=int(byzantine.numel()),
            round=server_round,
            honest=G[keep] if attack.omniscient else G.new_empty(0, G.shape[1]),
            own=G[byzantine].clone() if attack.needs_own_gradients else None,
            params=params,
            aggregator=rule,
            generator=self.generator,
            aggregation=ctx,
            byzantine=byzantine,
        )
        try:
            rows = forge(attack, actx, G.shape[1])
        except AttackContractError:
            raise  # a bug in the attack, reported as by every engine
        except Exception as e:  # noqa: BLE001 - an attack that cannot forge this round sends nothing
            log(30, "byzlearn: round %d: attack %r could not forge (%s); the coalition sends nothing", server_round, attack.name, e)
            rows = G.new_empty(0, G.shape[1])
        return place(G, byzantine, rows)
