"""Coordinate-wise robust rules: median and trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

Both rules work on each coordinate independently, over the worker axis, and are computed from one
sort of ``G`` along dim 0 (``_finite.sort_workers``: numpy's multi-threaded sort on CPU, torch.sort
elsewhere). No loops over workers or coordinates.

Non-finite inputs: a NaN entry is ordered as the largest value (above ``+inf``), and ``±inf`` are
just extreme values. Both rules read only the middle of each sorted column, so with ``k <= f``
rows containing NaN/±inf (and ``f`` within the rule's requirement) the output is finite and lies,
coordinate by coordinate, within the range of the finite honest values.

This module keeps the maths (functions) and the registered objects next to each other; the
functions are re-exported by ``aggregators.functional``.
"""

from torch import Tensor

from ..registry import ConfigError
from ._finite import check_batch, check_f, mean_rows, sort_workers
from .base import AGGREGATORS, AggregationContext, Aggregator

__all__ = ["median", "trimmed_mean", "Median", "TrimmedMean"]


# ------------------------------------------------------------------------------------------------
# maths
# ------------------------------------------------------------------------------------------------
def median(G: Tensor) -> Tensor:
    """Coordinate-wise median of the rows of ``G: Tensor[n, d]`` -> ``Tensor[d]``.

    For even ``n`` the result is the MEAN of the two middle values (as numpy and the Zeno / epfml
    reference code do); note that ``torch.median`` returns the lower of the two instead.
    Robust for ``f < n/2``. NaN is ordered as the largest value, so at most ``f < n/2`` rows with
    NaN/±inf entries cannot reach the middle of a column: the output stays finite and within the
    coordinate-wise range of the finite rows.
    """
    check_batch(G, "median")
    n = G.shape[0]
    S = sort_workers(G)
    if n % 2 == 1:
        return S[n // 2].to(G.device).clone()
    # 0.5*a + 0.5*b instead of (a+b)/2: no overflow for huge same-sign values, stays in [a, b].
    return (S[n // 2 - 1] * 0.5 + S[n // 2] * 0.5).to(G.device)


def trimmed_mean(G: Tensor, f: int) -> Tensor:
    """Coordinate-wise trimmed mean (Yin et al. 2018) of ``G: Tensor[n, d]`` -> ``Tensor[d]``.

    Per coordinate, drop the ``f`` largest and the ``f`` smallest values and average the remaining
    ``n - 2f`` (the ByzFL / epfml convention: trim ``b = f`` per side). Requires ``n > 2f``.
    ``f = 0`` is the plain mean. With ``f >= 1`` the rule is computed from one sort along the
    worker axis, NaN ordered above ``+inf``: up to ``f`` rows with NaN/±inf entries are trimmed away.
    The average does not overflow for values up to the dtype's maximum (``_finite.mean_rows``).
    """
    check_batch(G, "trimmed_mean")
    check_f(f, "trimmed_mean")
    n = G.shape[0]
    if not 2 * f < n:
        raise ValueError(f"trimmed_mean needs n > 2f (trims f values per side), got n={n}, f={f}")
    if f == 0:
        return mean_rows(G)
    S = sort_workers(G)
    return mean_rows(S[f : n - f]).to(G.device)


# ------------------------------------------------------------------------------------------------
# registered objects
# ------------------------------------------------------------------------------------------------
@AGGREGATORS.register("median")
class Median(Aggregator):
    """Coordinate-wise median (mean of the two middle values for even n); needs n > 2f."""

    name = "median"

    def __init__(self, f: int = 0):
        super().__init__(f)

    def requirement(self, n: int) -> str | None:
        return None if 2 * self.f < n else "n > 2f (f < n/2)"

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return median(G)


@AGGREGATORS.register("trimmed_mean")
class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean: drop b (default f) largest and smallest per coordinate; needs n > 2b, b >= f."""

    name = "trimmed_mean"

    def __init__(self, f: int = 0, b: int | None = None):
        super().__init__(f)
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 0):
            raise ConfigError(f"aggregator.b must be a non-negative integer (values trimmed per side), got {b!r}")
        self.b = f if b is None else b

    def requirement(self, n: int) -> str | None:
        if self.b < self.f:
            return f"b >= f (trim at least f values per side; b={self.b})"
        if not 2 * self.b < n:
            return f"n > 2b (b={self.b} values trimmed per side)" if self.b != self.f else "n > 2f (f < n/2)"
        return None

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return trimmed_mean(G, self.b)

    def __repr__(self) -> str:
        return f"TrimmedMean(f={self.f}, b={self.b})"
