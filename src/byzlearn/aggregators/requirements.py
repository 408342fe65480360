"""The ``(n, f)`` condition of a rule, written once beside its function.

A rule module declares ``REQUIRES = Requirement("n > 2f+2", lambda n, f: n > 2 * f + 2)`` next to
its function; the function calls ``REQUIRES.check("krum", n, f)`` (``ValueError``) and the
registered object sets ``requires = REQUIRES`` (``Aggregator.requirement`` then reports the same
text, and the config check turns it into a ``ConfigError`` before training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Requirement:
    """A condition on the number of inputs ``n`` and tolerated Byzantine inputs ``f``."""

    text: str
    holds: Callable[[int, int], bool]

    def problem(self, n: int, f: int) -> str | None:
        """``None`` when the condition holds, else ``"<text> (n=.., f=..)"``."""
        return None if self.holds(n, f) else f"{self.text} (n={n}, f={f})"

    def check(self, who: str, n: int, f: int) -> None:
        """Raise ``ValueError("<who> requires <text> (n=.., f=..)")`` when the condition fails."""
        problem = self.problem(n, f)
        if problem is not None:
            raise ValueError(f"{who} requires {problem}")


ANY = Requirement("n >= 1", lambda n, f: n >= 1)
HALF = Requirement("f < n/2", lambda n, f: 2 * f < n)
MAJORITY = Requirement("n > 2f (f < n/2)", lambda n, f: 2 * f < n)  # the same condition, as the coordinate-wise rules word it
