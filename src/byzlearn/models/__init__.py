"""Worker models (registered by name) and the flat-parameter view the engine works with."""

from .flat import FlatModel
from .zoo import MODELS

__all__ = ["MODELS", "FlatModel"]
