"""The maths of the aggregation rules: pure functions ``Tensor[n, d] -> Tensor[d]``.

Every function takes the gradient batch ``G`` (one row per worker) and, where the rule needs it,
the number ``f`` of Byzantine rows to tolerate. No Python loops over workers or coordinates.
"""

from __future__ import annotations

from torch import Tensor


def mean(G: Tensor) -> Tensor:
    """Arithmetic mean of the rows (the non-robust baseline)."""
    return G.mean(dim=0)
