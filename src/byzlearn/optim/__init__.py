"""Server optimisers, registered by name."""

from .server import OPTIMIZERS
from .acclip import ACClip, ClippedSGD, CoordClippedSGD

__all__ = ["OPTIMIZERS", "ACClip", "ClippedSGD", "CoordClippedSGD"]
