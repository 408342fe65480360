"""Elimination rules: drop the rows that look most Byzantine, average the rest.

- :func:`faba` ``(G, f)``  FABA (Xia, Tao, Hao, Li, IJCAI 2019): f times, remove the row farthest
  from the mean of the remaining rows.
- :func:`cge` ``(G, f)``   comparative gradient elimination (Gupta, Liu, Vaidya 2021): remove the f
  rows of largest norm.

Both return ``Tensor[d]`` in ``G``'s dtype (float16/bfloat16 computed in float32) and survive
non-finite rows: a row with a NaN/±inf entry is infinitely far from every mean and has an infinite
norm, so it is removed first. Ties go towards the lowest row index (FABA removes the lowest-index
row among equally far ones; CGE keeps the lowest-index rows among equal norms). The maths
(functions) and the registered objects live together, like the other rule modules.
"""

import math

import torch
from torch import Tensor

from ..registry import ConfigError
from . import _pairwise as P
from ._finite import big_row_parts, check_batch, check_f, compute_dtype, finite_rows, mean_rows
from .base import AGGREGATORS, AggregationContext, Aggregator
from .requirements import HALF, Requirement

__all__ = ["faba", "faba_survivors", "cge", "cge_kept", "FABA", "CGE"]

FABA_REQUIRES = HALF  # f < n/2 (the paper's alpha < 1/2)
CGE_REQUIRES = Requirement("f < n", lambda n, f: f < n)  # at least one row is kept
_REDUCTIONS = ("mean", "sum")


# ------------------------------------------------------------------------------------------------
# FABA
# ------------------------------------------------------------------------------------------------
def faba_survivors(G: Tensor, f: int) -> Tensor:
    """``BoolTensor[n]``: the ``n - f`` rows FABA keeps. See :func:`faba`."""
    n, _ = check_batch(G, "faba")
    check_f(f, "faba")
    FABA_REQUIRES.check("faba", n, f)
    # Gram matrix of the rows up to a translation and a power-of-two scale (``_pairwise``): exact
    # enough for distances, no overflow for rows up to the dtype's maximum; rows it cannot
    # represent (NaN/±inf, or float64 rows ~1e150 times the median row) are marked not finite.
    K, finite, _, _ = P.distance_gram(G)
    alive = finite.clone()
    bad = torch.nonzero(~finite).flatten()[:f]  # infinitely far from any mean: removed first
    alive[bad] = False
    diag = K.diagonal()
    for _ in range(f - bad.numel()):  # the paper's f iterations, each O(n^2) on the n x n Gram
        w = alive.to(K.dtype) / alive.sum()
        Kw = K @ w
        dist = (diag - 2.0 * Kw + w @ Kw).clamp_min(0.0)  # ||x_i - mean||^2, translation-free
        dist = torch.where(alive, dist, -math.inf)
        alive[torch.argmax(dist)] = False  # the first (lowest-index) farthest row
    return alive


def faba(G: Tensor, f: int) -> Tensor:
    """FABA (Xia, Tao, Hao, Li, "FABA: An Algorithm for Fast Aggregation against Byzantine Attacks
    in Distributed Neural Networks", IJCAI 2019) of ``G: Tensor[n, d]`` -> ``Tensor[d]``.

    Repeat ``f`` times: ``mu`` = the mean of the remaining rows; remove the remaining row with the
    largest ``||x_i - mu||``. Output the mean of the ``n - f`` survivors. Requires ``f < n/2`` (the
    paper's ``alpha < 1/2`` with ``alpha = f/n``, the fraction of Byzantine workers; ``f = 0`` is
    the mean). The paper removes ``alpha n`` rows; some third-party codes run its counter as
    ``k = 1; while k < alpha n``, i.e. ``f - 1`` removals: here exactly ``f`` are removed.

    One Gram matrix (O(n^2 d), ``_pairwise.distance_gram``: centred rows, a wider dtype for
    hostile magnitudes) and ``f`` iterations of O(n^2): ``||x_i - mu||^2 = K_ii - 2 (K w)_i + w'Kw``.
    Non-finite rows are removed first (lowest index first if there are more than ``f``: the output
    is then not finite). Ties: the lowest-index row among equally far ones is removed.
    """
    alive = faba_survivors(G, f)
    return mean_rows(G[torch.nonzero(alive).flatten()])


# ------------------------------------------------------------------------------------------------
# CGE
# ------------------------------------------------------------------------------------------------
def _norm_key(G: Tensor, finite: Tensor) -> Tensor:
    """``Tensor[n]`` (float64): row norms, ``+inf`` for non-finite rows.

    Computed in the input dtype (float32 for float16/bfloat16); rows whose norm overflows, or may
    have underflowed (below ``sqrt(tiny) / eps``), are recomputed in float64 as ``m ||x / m||``
    (``m = max |x_j|``). A norm beyond float64 becomes its largest finite value (finite rows rank
    before non-finite ones).
    """
    X = G.to(compute_dtype(G.dtype))
    norms = torch.linalg.vector_norm(X, dim=1)
    info = torch.finfo(X.dtype)
    key = norms.to(torch.float64)
    suspect = finite & ~(torch.isfinite(norms) & (norms >= math.sqrt(info.tiny) / info.eps))
    if bool(suspect.any()):  # rare: only those rows, in float64
        rows = torch.nonzero(suspect).flatten()
        m, nu = big_row_parts(G[rows])
        key[rows] = m * nu
    big = torch.finfo(torch.float64).max
    return torch.where(finite, key.nan_to_num(nan=big, posinf=big), math.inf)


def cge_kept(G: Tensor, f: int) -> Tensor:
    """The ``n - f`` row indices CGE keeps (``LongTensor``, by increasing norm, ties to the lowest index)."""
    n, _ = check_batch(G, "cge")
    check_f(f, "cge")
    CGE_REQUIRES.check("cge", n, f)
    return torch.argsort(_norm_key(G, finite_rows(G)), stable=True)[: n - f]


def cge(G: Tensor, f: int, reduction: str = "mean") -> Tensor:
    """Comparative gradient elimination (Gupta, Liu, Vaidya, "Byzantine fault-tolerant distributed
    machine learning with norm-based comparative gradient elimination", DSN-W 2021,
    arXiv:2008.04699) of ``G: Tensor[n, d]`` -> ``Tensor[d]``.

    Sort the rows by Euclidean norm, drop the ``f`` largest, combine the ``n - f`` smallest. The
    paper's server update sums them (``w <- w - eta * sum_{j <= n-f} g_(j)``; recalled, the paper's
    text was not at hand to re-check: **unverified**): ``reduction="sum"``.
    The default ``reduction="mean"`` divides by ``n - f`` (as, e.g., the EPFL ``cge.py`` GAR of
    Rouault does), so that the rule is a drop-in replacement for the mean under the same learning
    rate; the two differ only by that constant factor. Requires ``f < n`` (one row kept); the paper's
    resilience theorem (recalled, **unverified**) needs ``f/n`` below a bound set by the cost's
    smoothness and strong convexity, which (n, f) alone cannot check. O(nd) plus a sort of ``n`` norms.

    Non-finite rows have infinite norm and are dropped first. Ties: among equal norms the
    lowest-index rows are kept. Norms do not overflow or underflow (see ``_norm_key``); the mean
    does not overflow (``_finite.mean_rows``); a sum beyond the dtype's range is ``±inf``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cge: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    X = G[cge_kept(G, f)]
    if reduction == "mean":
        return mean_rows(X)
    ones = torch.ones(X.shape[0], dtype=compute_dtype(G.dtype), device=G.device)
    return P.weighted_rows(X, ones, finite_rows(X))


# ------------------------------------------------------------------------------------------------
# registered objects
# ------------------------------------------------------------------------------------------------
@AGGREGATORS.register("faba")
class FABA(Aggregator):
    """FABA (Xia et al. 2019): f times remove the row farthest from the mean of the rest, average the survivors; needs f < n/2."""

    name = "faba"
    requires = FABA_REQUIRES

    def __init__(self, f: int = 0):
        super().__init__(f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return faba(G, self.f)


@AGGREGATORS.register("cge")
class CGE(Aggregator):
    """Comparative gradient elimination (Gupta et al. 2021): average (or sum) the n-f smallest-norm rows; needs f < n."""

    name = "cge"
    requires = CGE_REQUIRES

    def __init__(self, f: int = 0, reduction: str = "mean"):
        super().__init__(f)
        if reduction not in _REDUCTIONS:
            raise ConfigError(f"aggregator.reduction must be one of {', '.join(_REDUCTIONS)} (the paper sums), got {reduction!r}")
        self.reduction = reduction

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return cge(G, self.f, self.reduction)

    def __repr__(self) -> str:
        return f"CGE(f={self.f}, reduction={self.reduction!r})"
