"""DRACO (Chen, Wang, Charles, Papailiopoulos, ICML 2018): exact Byzantine robustness by redundant gradients.

``assignment`` (which partitions each worker computes), ``repetition`` (group sums, majority
vote), ``cyclic`` (DFT encoding, syndrome / error-locator decoding), ``aggregators`` (the config
entries ``draco_repetition`` and ``draco_cyclic``) and ``simulator.DracoSimulator`` (the engine).
"""

from . import aggregators as _aggregators  # noqa: F401  (registers draco_repetition, draco_cyclic)
from .assignment import assignment, cyclic_support, redundancy, repetition_groups
from .cyclic import CyclicCode
from .status import CORRECTED, DETECTED, OK, DecodeStatus

__all__ = [
    "CORRECTED",
    "DETECTED",
    "OK",
    "CyclicCode",
    "DecodeStatus",
    "DracoSimulator",
    "assignment",
    "cyclic_support",
    "redundancy",
    "repetition_groups",
]


def __getattr__(name: str):
    if name == "DracoSimulator":  # lazy: the engine imports this package to register the names
        from .simulator import DracoSimulator

        return DracoSimulator
    raise AttributeError(name)
