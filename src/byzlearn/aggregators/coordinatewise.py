"""Coordinate-wise robust rules: median and trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018),
and the mean around the median (Meamed; Xie, Koyejo, Gupta 2018).

The rules work on each coordinate independently, over the worker axis, and are computed from one
sort of ``G`` along dim 0 (``_finite.sort_workers``: numpy's multi-threaded sort on CPU, torch.sort
elsewhere). No loops over workers or coordinates. :func:`median_window_mean` (the mean of the
``k`` values of each sorted column closest to its median) is shared with Bulyan's second step.

Non-finite inputs: a NaN entry is ordered as the largest value (above ``+inf``), and ``±inf`` are
just extreme values. The rules read only the middle of each sorted column, so with ``k <= f``
rows containing NaN/±inf (and ``f`` within the rule's requirement) the output is finite and lies,
coordinate by coordinate, within the range of the finite honest values.

This module keeps the maths (functions) and the registered objects next to each other; the
functions are re-exported by ``aggregators.functional``.
"""

import torch
from torch import Tensor

from ..registry import ConfigError
from ._finite import LOW_PRECISION, all_finite, check_batch, check_f, mean_rows, sort_workers
from .base import AGGREGATORS, AggregationContext, Aggregator
from .requirements import MAJORITY

__all__ = ["median", "trimmed_mean", "meamed", "Median", "TrimmedMean", "Meamed"]


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
    MAJORITY.check("trimmed_mean", n, f)
    if f == 0:
        return mean_rows(G)
    S = sort_workers(G)
    return mean_rows(S[f : n - f]).to(G.device)


def median_window_mean(S: Tensor, k: int) -> Tensor:
    """Per column of ``S: Tensor[m, d]`` sorted along dim 0 (NaN last), the mean of the ``k`` values
    closest to the column's median (even ``m``: the mean of the two middle values) -> ``Tensor[d]``.

    The ``k`` values closest to any point form a window ``s_a..s_{a+k-1}`` of the sorted column;
    moving it one step up is better iff ``s_{a+k} - med < med - s_a``, i.e. ``s_a + s_{a+k} < 2 med``,
    which is monotone in ``a``, so the start is ``#{j < m-k : s_j + s_{j+k} < 2 med}`` (exact
    comparisons, no cumulative sums). Ties (two values equally far from the median on either side):
    the smaller one is taken. Sums that overflow are compared on halves (exact scaling); a window
    whose sum overflows is averaged without overflow (``mean_rows``). float16/bfloat16 are
    computed in float32; the result has ``S``'s dtype. NaN (last) and ``+inf`` never satisfy the
    comparison, so with at most ``m - k`` of them, and ``-inf``, per column the window stays finite.
    ``S`` is consumed: its values outside the window are overwritten with zeros (callers pass a
    fresh sort; this saves an ``m x d`` copy, O((m-k) d) work besides the sum).
    """
    m = S.shape[0]
    s = S.float() if S.dtype in LOW_PRECISION else S
    h = m // 2
    m2 = 2.0 * s[h] if m % 2 == 1 else s[h - 1] + s[h]
    pair = s[: m - k] + s[k:]
    if not (all_finite(m2) and all_finite(pair)):
        # values near the dtype maximum: the same comparison on halves (exact scaling, no overflow)
        m2 = s[h] if m % 2 == 1 else 0.5 * s[h - 1] + 0.5 * s[h]
        pair = 0.5 * s[: m - k] + 0.5 * s[k:]
    start = (pair < m2).sum(dim=0)  # monotone in j: a prefix
    # zero the values outside the window, in place: row j < m-k is out iff j < start, row j >= k iff
    # j >= start + k (rows in between are always in); then one sum over all m rows
    pos = torch.arange(m - k, device=S.device)[:, None]
    s[: m - k].masked_fill_(pos < start, 0.0)
    s[k:].masked_fill_(pos >= start, 0.0)
    out = s.sum(dim=0) / k
    if not all_finite(out):  # the window's sum overflowed: average it without overflow
        window = torch.gather(s, 0, start + torch.arange(k, device=S.device)[:, None])  # k x d
        out = mean_rows(window)
    return out.to(S.dtype)


def meamed(G: Tensor, f: int) -> Tensor:
    """Mean around the median (Xie, Koyejo, Gupta 2018, "Generalized Byzantine-tolerant SGD",
    arXiv:1802.10116; ByzFL ``Meamed(f)``) of ``G: Tensor[n, d]`` -> ``Tensor[d]``.

    Per coordinate ``k``: ``med_k`` is the median of ``x_1k..x_nk`` (even ``n``: the mean of the two
    middle values, as numpy's median and ByzFL); the output is the mean of the ``n - f`` values
    with the smallest ``|x_ik - med_k|``. Requires ``f < n/2`` (``n > 2f``); ``f = 0`` is the mean.
    Computed from one sort along the worker axis (:func:`median_window_mean`): O(nd log n).
    Tie order: of two values equally far from the median, the smaller one is kept (ByzFL uses
    ``argpartition``, whose choice among ties is unspecified; the output differs only on ties).
    NaN sorts above ``+inf``: with at most ``f`` rows holding NaN/±inf, no non-finite value enters
    the window and the output lies within the coordinate-wise range of the finite values.
    """
    n, _ = check_batch(G, "meamed")
    check_f(f, "meamed")
    MAJORITY.check("meamed", n, f)
    if f == 0:
        return mean_rows(G)
    return median_window_mean(sort_workers(G), n - f).to(G.device)


# ------------------------------------------------------------------------------------------------
# registered objects
# ------------------------------------------------------------------------------------------------
@AGGREGATORS.register("median")
class Median(Aggregator):
    """Coordinate-wise median (mean of the two middle values for even n); needs n > 2f."""

    name = "median"
    requires = MAJORITY

    def __init__(self, f: int = 0):
        super().__init__(f)

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
        if self.b == self.f:
            return MAJORITY.problem(n, self.f)
        return None if 2 * self.b < n else f"n > 2b (b={self.b} values trimmed per side, n={n})"

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return trimmed_mean(G, self.b)

    def __repr__(self) -> str:
        return f"TrimmedMean(f={self.f}, b={self.b})"


@AGGREGATORS.register("meamed")
class Meamed(Aggregator):
    """Mean around the median (Xie et al. 2018): per coordinate, the mean of the n-f values closest to the median; needs n > 2f."""

    name = "meamed"
    requires = MAJORITY

    def __init__(self, f: int = 0):
        super().__init__(f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return meamed(G, self.f)
