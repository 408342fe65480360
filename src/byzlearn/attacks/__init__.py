"""Byzantine attacks, registered by name."""

from .base import ATTACKS, Attack, AttackContext

__all__ = ["ATTACKS", "Attack", "AttackContext"]
