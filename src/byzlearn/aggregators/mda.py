"""Minimum-diameter averaging (MDA; El Mhamdi, Guerraoui, Rouault 2018 / Garfield): the maths and the object.

Conventions (dtypes, non-finite rows, ties) are those of ``distance``.
"""

from typing import Any

import torch
from torch import Tensor

from . import _pairwise as P
from .base import AGGREGATORS, AggregationContext, Aggregator
from .distance import _distances
from .requirements import Requirement

__all__ = ["mda", "mda_subset", "MDA"]

REQUIRES = Requirement("n >= 2f+1", lambda n, f: n >= 2 * f + 1)


def _adjacency(A: Any) -> list[int]:
    """Bitmask adjacency lists of a boolean numpy matrix."""
    n = A.shape[0]
    return [int(sum(1 << j for j in range(n) if A[i, j])) for i in range(n)]


def _mda_subset(D: Tensor, f: int) -> list[int]:
    n = D.shape[0]
    if f == 0:
        return list(range(n))
    import numpy as np

    Dn = D.detach().to("cpu", torch.float64).numpy()
    cands = np.unique(np.concatenate([[0.0], Dn[np.triu_indices(n, 1)]]))  # sorted, may end in +inf
    full = (1 << n) - 1

    def feasible(delta: float) -> bool:
        # the rows kept must pairwise be within delta: remove <= f rows covering every longer pair
        return P.vertex_cover_at_most(_adjacency(Dn > delta), full, f)

    lo, hi = 0, len(cands) - 1  # cands[-1] is always feasible (no pair is longer)
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(cands[mid]):
            hi = mid
        else:
            lo = mid + 1
    adj = _adjacency(Dn > cands[lo])
    # lexicographically lowest independent set of size n-f in the "too far" graph, greedily
    target, kept, U = n - f, [], full
    for i in range(n):
        if len(kept) == target:
            break
        if not (U >> i) & 1:
            continue
        U_keep = U & ~(1 << i) & ~adj[i]
        need = target - len(kept) - 1  # rows still to keep among U_keep
        budget = U_keep.bit_count() - need  # rows of U_keep we may drop
        if budget >= 0 and P.vertex_cover_at_most(adj, U_keep, budget):
            kept.append(i)
            U = U_keep
        else:
            U &= ~(1 << i)
    return kept


def mda_subset(G: Tensor, f: int) -> list[int]:
    """The rows (sorted indices) of MDA's subset: the (n-f)-subset of minimum diameter, ties to the
    lexicographically lowest subset. See :func:`mda`."""
    n, _ = P.check_batch(G, "mda")
    P.check_f(f, "mda")
    REQUIRES.check("mda", n, f)
    return _mda_subset(_distances(G)[0], f)


def mda(G: Tensor, f: int) -> Tensor:
    """Minimum-diameter averaging: the exact mean of the (n-f)-subset of smallest diameter.

    ``MDA_f(G) = mean of x_i, i in S*``, ``S* = argmin_{|S| = n-f} max_{i,j in S} |x_i - x_j|``;
    ties: the lexicographically lowest subset (sorted index tuples). Requires ``n >= 2f+1`` (the
    rule's condition, as in Garfield; the decentralised averaging-agreement use needs n >= 6f+1).

    Exact and fast: the optimal diameter is one of the pairwise distances, so it is found by binary
    search over the sorted distances; "some (n-f)-subset has diameter <= delta" is "the graph of
    pairs farther than delta has a vertex cover of size <= f", decided exactly by a bounded search
    tree (O(1.47^f n) worst case, usually far less). The lexicographically lowest optimal subset is
    then built greedily with the same test. Cost: one Gram matrix plus O(n^2 log n) + the searches.
    Non-finite rows are at distance +inf, hence never kept while at most f of them exist.
    """
    n, _ = P.check_batch(G, "mda")
    P.check_f(f, "mda")
    REQUIRES.check("mda", n, f)
    D, finite = _distances(G)
    kept = _mda_subset(D, f)
    w = torch.zeros(n, dtype=G.dtype, device=G.device)
    w[torch.tensor(kept, device=G.device)] = 1.0 / len(kept)
    return P.weighted_rows(G, w, finite)


@AGGREGATORS.register("mda")
class MDA(Aggregator):
    """Minimum-diameter averaging: exact mean of the (n-f)-subset of smallest diameter."""

    name = "mda"
    requires = REQUIRES

    def __init__(self, f: int = 0):
        super().__init__(f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return mda(G, self.f)
