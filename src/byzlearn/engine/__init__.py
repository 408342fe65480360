"""Engines that run rounds: the vectorised single-process simulator (and DRACO's variant of it)."""

from ..config import Config
from ..data import Dataset
from ..models.user import ModelSpec
from .simulator import Simulator


def make_simulator(cfg: Config, dataset: Dataset | None = None, model: ModelSpec | None = None) -> Simulator:
    """The engine a config needs: ``DracoSimulator`` for ``draco_*`` aggregators, else ``Simulator``.

    ``dataset`` / ``model``: objects that replace the registered ``data.name`` / ``model.name`` (``Simulator``)."""
    if str(cfg.aggregator.get("name", "")).startswith("draco_"):
        from ..coding.simulator import DracoSimulator

        return DracoSimulator(cfg, dataset, model)
    return Simulator(cfg, dataset, model)


__all__ = ["Simulator", "make_simulator"]
