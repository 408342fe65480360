"""Engines that run rounds: the vectorised single-process simulator."""

from .simulator import Simulator

__all__ = ["Simulator"]
