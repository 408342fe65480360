"""Bulyan over Krum (El Mhamdi, Guerraoui, Rouault, ICML 2018): the maths and the object.

Conventions (dtypes, non-finite rows, ties) are those of ``distance``.
"""

import torch
from torch import Tensor

from . import _pairwise as P
from ._finite import sort_workers
from .base import AGGREGATORS, AggregationContext, Aggregator
from .coordinatewise import median_window_mean
from .distance import _distances, rank_key, scores
from .requirements import Requirement

__all__ = ["bulyan", "Bulyan"]

REQUIRES = Requirement("n >= 4f+3", lambda n, f: n >= 4 * f + 3)


def _bulyan_picks(D: Tensor, finite: Tensor, f: int, theta: int) -> Tensor:
    """Iterated Krum on one distance matrix shrunk by masking: ``theta`` row indices in pick order."""
    n = D.shape[0]
    alive = torch.ones(n, dtype=torch.bool, device=D.device)
    picks = []
    for t in range(theta):  # a loop over the theta picks on an n x n matrix (no d-sized work)
        r = n - t
        s = scores(D, max(r - f - 2, 0), alive)
        cand = alive & finite
        cand = torch.where(cand.any(), cand, alive)
        i = torch.argmin(rank_key(s, cand))
        picks.append(i)
        alive[i] = False
    return torch.stack(picks)


def bulyan(G: Tensor, f: int) -> Tensor:
    """Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018) over Krum. Requires ``n >= 4f+3``.

    1. Selection: ``theta = n - 2f`` rows picked by iterated Krum: each pick is removed and Krum
       (same ``f``, ``r - f - 2`` neighbours on the ``r`` remaining rows, clamped at 0; ties to the
       lowest index) is recomputed on the rest, all from one distance matrix (masking, no new
       O(n^2 d) work).
    2. Per coordinate: the mean of the ``beta = theta - 2f`` picked values closest to the
       coordinate-wise median of the picks (even ``theta``: the median is the average of the two
       middle values; equally close values: the smaller one is taken first).

    Implementation of step 2 (``coordinatewise.median_window_mean``, shared with Meamed): the beta
    values closest to the median are a window of the sorted values; its start is
    ``#{j < 2f : s_j + s_{j+beta} < 2 median}`` (exact comparisons, no cumulative sums), and the
    window is averaged with a mask. Garfield's "Bulyan over Multi-Krum"
    differs (it selects Multi-Krum averages); ByzFL's "Meamed" is step 2 alone.
    """
    n, _ = P.check_batch(G, "bulyan")
    P.check_f(f, "bulyan")
    REQUIRES.check("bulyan", n, f)
    theta, beta = n - 2 * f, n - 4 * f
    D, finite = _distances(G)
    picks = _bulyan_picks(D, finite, f, theta)
    S = sort_workers(G[picks])  # theta x d, sorted along the worker axis
    return median_window_mean(S, beta).to(G.dtype)  # step 2, shared with Meamed (coordinatewise)


@AGGREGATORS.register("bulyan")
class Bulyan(Aggregator):
    """Bulyan over Krum (El Mhamdi et al. 2018): n-2f Krum picks, then a coordinate-wise trimmed mean around the median."""

    name = "bulyan"
    requires = REQUIRES

    def __init__(self, f: int = 0):
        super().__init__(f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return bulyan(G, self.f)
