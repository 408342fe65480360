"""The catalogue: every module that registers a rule, a pre-aggregator or an attack, imported here once.

Registration goes one way: these modules register into the registries of ``aggregators.base`` and
``attacks.base``; those registries import this module on their first look-up
(``Registry(catalogue=...)``), so no family imports upwards to register itself. A new rule or
attack module is added to ``RULE_MODULES`` / ``ATTACK_MODULES``; a registering module missing from
them fails ``tests/test_catalogue.py``. ``aggregators.functional`` exports the functions of
``RULE_MODULES`` (their ``__all__``), so the functional API follows this list too.
"""

from __future__ import annotations

from .aggregators import (
    bulyan,
    clustering,
    coordinatewise,
    distance,
    dnc,
    elimination,
    fltrust,
    iterative,
    krum,
    mda,
    mean,
    monna,
    nnm,
    preaggregation,
    spectral,
    validation,
)

# the robust rules and pre-aggregators whose maths is the functional API (``aggregators.functional``)
RULE_MODULES = (
    mean,
    coordinatewise,
    distance,
    krum,
    bulyan,
    mda,
    nnm,
    monna,
    elimination,
    spectral,
    dnc,
    clustering,
    fltrust,
    iterative,
    preaggregation,
    validation,
)
# isort: split
# defined before the attacks and the other rules are imported: those may use ``aggregators.functional``,
# which reads RULE_MODULES while this module is still being initialised
from .attacks import adaptive, blades, data, fang, gradient, minmax, omniscient, whitebox  # noqa: E402
from .coding import aggregators as draco  # noqa: E402
from .learned import aggregator as learned  # noqa: E402

# rules that wrap other machinery (learned networks, DRACO's codes): registered, not in ``functional``
OTHER_RULE_MODULES = (learned, draco)
ATTACK_MODULES = (gradient, omniscient, adaptive, minmax, fang, blades, data, whitebox)

__all__ = ["RULE_MODULES", "OTHER_RULE_MODULES", "ATTACK_MODULES"]
