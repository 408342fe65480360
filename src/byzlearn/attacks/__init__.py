"""Byzantine attacks: one module per family, each registering its attacks by name; the catalogue
(``byzlearn.catalogue``) lists every attack module and the registry loads it on first use."""

from .base import ATTACKS, Attack, AttackContext, build_attack

__all__ = ["ATTACKS", "Attack", "AttackContext", "build_attack"]
