"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017): the maths and the objects.

Conventions (dtypes, non-finite rows, ties) are those of ``distance``.
"""

import torch
from torch import Tensor

from . import _pairwise as P
from .base import AGGREGATORS, AggregationContext, Aggregator, config_int
from .distance import _distances, rank_key, scores
from .requirements import Requirement

__all__ = ["krum", "krum_scores", "multi_krum", "Krum", "MultiKrum"]

_INF = float("inf")
KRUM = Requirement("n > 2f+2", lambda n, f: n > 2 * f + 2)


def krum_scores(G: Tensor, f: int) -> Tensor:
    """Krum scores ``s(i) = sum of the n-f-2 smallest |x_i - x_j|^2, j != i`` (``+inf`` for non-finite rows)."""
    n, _ = P.check_batch(G, "krum_scores")
    P.check_f(f, "krum_scores")
    KRUM.check("krum", n, f)
    D, finite = _distances(G)
    s = scores(D, n - f - 2)
    return torch.where(finite, s, torch.full_like(s, _INF))


def _krum_key(G: Tensor, f: int) -> tuple[Tensor, Tensor]:
    n = G.shape[0]
    D, finite = _distances(G)
    s = scores(D, n - f - 2)
    cand = finite if bool(finite.any()) else torch.ones_like(finite)
    return rank_key(s, cand), finite


def krum(G: Tensor, f: int) -> Tensor:
    """Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

    ``score(i) = sum of the SQUARED distances from x_i to its n-f-2 nearest other rows``; the output
    is the row with the lowest score (ties: lowest index). Requires ``n > 2f+2``.

    Follows the paper. Deviations elsewhere: ByzFL sums the n-f-1 nearest (and averages), Garfield
    uses unsquared distances (and n-f-1 neighbours); the epfml code squares the distances twice.
    """
    n, _ = P.check_batch(G, "krum")
    P.check_f(f, "krum")
    KRUM.check("krum", n, f)
    key, _ = _krum_key(G, f)
    return G[torch.argmin(key)].clone()  # argmin returns the first minimal index


def multi_krum(G: Tensor, f: int, m: int | None = None) -> Tensor:
    """Multi-Krum: the mean of the ``m`` rows with the lowest Krum scores (ties: lowest index).

    ``m=None`` means ``m = n - f`` (ByzFL's choice; Garfield uses n-f-2, the paper leaves m free;
    ``m = 1`` is Krum). Requires ``n > 2f+2`` and ``1 <= m <= n``.
    """
    n, _ = P.check_batch(G, "multi_krum")
    P.check_f(f, "multi_krum")
    KRUM.check("multi_krum", n, f)
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multi_krum requires 1 <= m <= n (n={n}, m={m!r})")
    key, finite = _krum_key(G, f)
    order = torch.sort(key, stable=True).indices[:m]
    w = torch.zeros(n, dtype=G.dtype, device=G.device)
    w[order] = 1.0 / m
    return P.weighted_rows(G, w, finite)


@AGGREGATORS.register("krum")
class Krum(Aggregator):
    """Krum (Blanchard et al. 2017): the row with the lowest sum of squared distances to its n-f-2 nearest."""

    name = "krum"
    requires = KRUM

    def __init__(self, f: int = 0):
        super().__init__(f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return krum(G, self.f)


@AGGREGATORS.register("multi_krum")
class MultiKrum(Aggregator):
    """Multi-Krum: mean of the m rows with the lowest Krum scores (m defaults to n-f)."""

    name = "multi_krum"
    requires = KRUM

    def __init__(self, f: int = 0, m: int | None = None):
        super().__init__(f)
        if m is not None:
            config_int(m, "m", 1)
        self.m = m

    def requirement(self, n: int) -> str | None:
        problem = KRUM.problem(n, self.f)
        if problem is None and self.m is not None and self.m > n:
            problem = f"m <= n (n={n}, m={self.m})"
        return problem

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return multi_krum(G, self.f, self.m)

    def __repr__(self) -> str:
        return f"MultiKrum(f={self.f}, m={self.m})"
