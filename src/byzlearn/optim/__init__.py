"""Server optimisers, registered by name."""

from .server import OPTIMIZERS

__all__ = ["OPTIMIZERS"]
