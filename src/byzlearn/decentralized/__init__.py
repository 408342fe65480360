"""Decentralised collaborative learning: no server, Byzantine peers (El-Mhamdi et al., NeurIPS 2021).

``broadcast`` (Bracha's reliable broadcast, message level), ``witness`` (the witness step),
``adversary`` (Byzantine peers' messages), ``mve`` (minimum-volume-ellipsoid averaging),
``agreement`` (averaging agreement: rb_trimmed_mean, mda, mve, gossip), ``learning`` (LEARN).
"""

from .adversary import Adversary, Forged
from .agreement import METHODS, AgreementResult, agreement_rounds, averaging_agreement, check_requirement, diameter, requirement
from .broadcast import BroadcastResult, bracha, echo_threshold
from .mve import mve_average, mve_subset
from .witness import first_reports, witness_sets

__all__ = [
    "Adversary",
    "Forged",
    "METHODS",
    "AgreementResult",
    "agreement_rounds",
    "averaging_agreement",
    "check_requirement",
    "diameter",
    "requirement",
    "BroadcastResult",
    "bracha",
    "echo_threshold",
    "mve_average",
    "mve_subset",
    "first_reports",
    "witness_sets",
]
