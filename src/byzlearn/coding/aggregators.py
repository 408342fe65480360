"""Config entries for DRACO: ``aggregator.name = "draco_repetition" | "draco_cyclic"``.

DRACO changes what workers compute and send, so it is not a ``Tensor[n, d] -> Tensor[d]`` rule:
these objects hold the code's settings and the engine (``coding.simulator.DracoSimulator``,
chosen automatically by ``byzlearn.engine.make_simulator``) does the work. Calling ``aggregate``
on them outside that engine is an error that says so.
"""

# No ``from __future__ import annotations``: the registry checks config values against the real annotations.

from typing import Any

from torch import Tensor

from ..aggregators.base import AGGREGATORS, AggregationContext, Aggregator
from ..registry import ConfigError
from .assignment import check_code


class DracoAggregator(Aggregator):
    """Base of the DRACO config objects (``f`` = the run's adversaries, ``s`` = adversaries the code tolerates)."""

    name = "draco"
    code = ""

    def __init__(self, f: int = 0, s: int | None = None, fallback: str = "skip"):
        super().__init__(f)
        self.s = f if s is None else s
        if not isinstance(self.s, int) or isinstance(self.s, bool) or self.s < 0:
            raise ConfigError(f"aggregator.s must be a non-negative integer, got {s!r}")
        if not isinstance(fallback, str):
            raise ConfigError(f"aggregator.fallback must be 'skip' or a rule name, got {fallback!r}")
        if fallback != "skip":
            if fallback not in AGGREGATORS or fallback.startswith("draco"):
                known = [x for x in AGGREGATORS.names() if not x.startswith("draco")]
                raise ConfigError(f"aggregator.fallback = {fallback!r}: use 'skip' or one of {', '.join(known)}")
        self.fallback = fallback
        self.counters: dict[str, int] = {}

    def requirement(self, n: int) -> str | None:
        return check_code(n, self.s)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        raise ConfigError(
            f"aggregator {self.name!r} is a coding scheme, not a rule on a gradient batch: it runs only in the DRACO "
            "engine (byzlearn.engine.make_simulator(cfg) or byzlearn.coding.DracoSimulator), which changes what "
            "workers compute and send"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"counters": dict(self.counters)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters = dict(state.get("counters", {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(f={self.f}, s={self.s}, fallback={self.fallback!r})"


@AGGREGATORS.register("draco_repetition")
class DracoRepetition(DracoAggregator):
    """DRACO repetition code (groups of 2s+1 redundant workers, majority vote); exact for <= s adversaries (Chen et al., ICML 2018)."""

    name = "draco_repetition"
    code = "repetition"

    def __init__(self, f: int = 0, s: int | None = None, tolerance: float = 0.0, fallback: str = "skip", compute: str = "once"):
        super().__init__(f, s, fallback)
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance >= 0:
            raise ConfigError(f"aggregator.tolerance must be a number >= 0 (0 = bit-exact votes), got {tolerance!r}")
        if compute not in ("once", "replicated"):
            raise ConfigError(f"aggregator.compute must be 'once' or 'replicated', got {compute!r}")
        self.tolerance, self.compute = float(tolerance), compute


@AGGREGATORS.register("draco_cyclic")
class DracoCyclic(DracoAggregator):
    """DRACO cyclic code (DFT encoding, syndrome/locator decoding); exact for <= s adversaries, any n >= 2s+1 (Chen et al., ICML 2018)."""

    name = "draco_cyclic"
    code = "cyclic"

    def __init__(
        self,
        f: int = 0,
        s: int | None = None,
        tolerance: float = 1e-9,
        correct: int | None = None,
        fallback: str = "skip",
        compute: str = "once",
    ):
        super().__init__(f, s, fallback)
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance > 0:
            raise ConfigError(f"aggregator.tolerance must be a number > 0 (relative syndrome threshold), got {tolerance!r}")
        if correct is not None and not 0 <= correct <= self.s:
            raise ConfigError(f"aggregator.correct = {correct} must be in [0, s={self.s}] (errors corrected; 0 = detect up to 2s)")
        if compute not in ("once", "replicated"):
            raise ConfigError(f"aggregator.compute must be 'once' or 'replicated', got {compute!r}")
        self.tolerance, self.correct, self.compute = float(tolerance), correct, compute
