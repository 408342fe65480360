"""Data-level attacks: the Byzantine workers train honestly on poisoned data."""

# No ``from __future__ import annotations``: the registry checks config values against the real
# annotation objects of the constructors.

from torch import Tensor

from .base import ATTACKS, Attack, AttackContext
from .gradient import own_gradients


@ATTACKS.register("label_flip")
class LabelFlipAttack(Attack):
    """Label flipping: Byzantine workers compute true gradients on labels ``y' = (C - 1) - y``.

    For C = 10 classes this is ``y' = 9 - y``, as in epfml/byzantine-robust-noniid-optimizer
    (``LableFlippingWorker`` with ``lambda t: 9 - t``; Karimireddy, He & Jaggi, ICLR 2022). The engine computes
    the Byzantine workers' gradients on ``poison_labels(y, C)`` in the same batched pass as the
    honest ones; ``forge`` sends them unchanged. Not omniscient.
    """

    name = "label_flip"
    needs_own_gradients = True
    poisons_data = True

    def poison_labels(self, y: Tensor, num_classes: int) -> Tensor:
        if num_classes < 1:
            raise ValueError(f"label_flip needs num_classes >= 1, got {num_classes}")
        return (num_classes - 1) - y

    def forge(self, ctx: AttackContext) -> Tensor:
        return own_gradients(ctx, self.name)[: ctx.f]
