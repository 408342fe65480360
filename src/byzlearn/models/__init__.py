"""Worker models (registered by name) and the flat-parameter view the engine works with."""

from . import attention  # noqa: F401 - registers "attention"
from .flat import FlatModel
from .zoo import MODELS

__all__ = ["MODELS", "FlatModel"]
