"""Server optimisers, registered by name."""

from .acclip import ACClip, ClippedSGD, CoordClippedSGD
from .server import OPTIMIZERS, check_optimizer

__all__ = ["OPTIMIZERS", "ACClip", "ClippedSGD", "CoordClippedSGD", "check_optimizer"]
