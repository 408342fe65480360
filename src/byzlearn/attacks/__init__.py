"""Byzantine attacks, registered by name."""

from . import adaptive as _adaptive  # noqa: F401  (registers alie_optimal, ipm_optimal)
from . import data as _data  # noqa: F401  (registers label_flip)
from . import gradient as _gradient  # noqa: F401  (registers the crude gradient attacks)
from . import omniscient as _omniscient  # noqa: F401  (registers alie, ipm, mimic)
from . import whitebox as _whitebox  # noqa: F401  (registers learned_whitebox)
from .base import ATTACKS, Attack, AttackContext, build_attack

__all__ = ["ATTACKS", "Attack", "AttackContext", "build_attack"]
