"""Distance-based robust aggregation rules: the maths and the registered objects, side by side.

Functional core (re-exported by ``aggregators.functional``):

- :func:`pairwise_sq_distances` ``(G) -> Tensor[n, n]``
- :func:`krum` ``(G, f)``, :func:`multi_krum` ``(G, f, m=None)``   (Blanchard et al., NeurIPS 2017)
- :func:`bulyan` ``(G, f)``                                          (El Mhamdi et al., ICML 2018)
- :func:`mda` ``(G, f)``                                             (minimum-diameter averaging)
- :func:`nnm` ``(G, f) -> Tensor[n, d]``                             (Allouah et al., AISTATS 2023)

The geometric median and centered clipping, iterated on the same Gram matrix, live in ``iterative``.

Common conventions:

- ``G`` is ``Tensor[n, d]`` (float16, bfloat16, float32 or float64, any device); rules return
  ``Tensor[d]`` in ``G``'s dtype. float16/bfloat16 are computed in float32/float64 (``_pairwise``).
- Pairwise distances come from ONE centred Gram matrix (see ``_pairwise`` for the precision choice:
  the Gram is accumulated in the input dtype on rows centred at a median-norm row).
- Non-finite rows (NaN/Inf) are infinitely far from every other row: they are never selected while
  finite candidates remain, they get zero weight in the geometric median and contribute nothing in
  centered clipping. With at most ``f`` such rows no rule crashes and the output is finite. Finite
  rows keep their real distances whatever their size (up to the dtype's maximum): when the input
  dtype's Gram would overflow or underflow, it is recomputed in a wider dtype (``_pairwise.wide_gram``;
  float64 inputs more than ~1e150 times the median row's scale count as non-finite).
- Ties are broken towards the lowest row index (Krum, Multi-Krum, Bulyan's picks, NNM's neighbours)
  and towards the lexicographically lowest subset (MDA).
- Every function raises ``ValueError`` naming the violated condition when ``(n, f)`` is outside the
  rule's requirement; every object reports the same condition from ``requirement(n)``.
"""

import math
from typing import Any

import torch
from torch import Tensor

from ..registry import ConfigError
from . import _pairwise as P
from ._finite import LOW_PRECISION, all_finite, compute_dtype, mean_rows, sort_workers
from .base import AGGREGATORS, PREAGGREGATORS, AggregationContext, Aggregator, PreAggregator

__all__ = ["pairwise_sq_distances", "krum", "krum_scores", "multi_krum", "bulyan", "mda", "mda_subset", "nnm", "nnm_mixing_matrix"]

_INF = float("inf")


# =====================================================================================================
# requirements on (n, f), shared by the functions (ValueError) and the objects (requirement(n))
# =====================================================================================================


def _req_krum(n: int, f: int) -> str | None:
    return None if n > 2 * f + 2 else f"n > 2f+2 (n={n}, f={f})"


def _req_bulyan(n: int, f: int) -> str | None:
    return None if n >= 4 * f + 3 else f"n >= 4f+3 (n={n}, f={f})"


def _req_mda(n: int, f: int) -> str | None:
    return None if n >= 2 * f + 1 else f"n >= 2f+1 (n={n}, f={f})"


def _req_half(n: int, f: int) -> str | None:
    return None if 2 * f < n else f"f < n/2 (n={n}, f={f})"


def _require(who: str, problem: str | None) -> None:
    if problem is not None:
        raise ValueError(f"{who} requires {problem}")


# =====================================================================================================
# pairwise distances
# =====================================================================================================


def _distances(G: Tensor) -> tuple[Tensor, Tensor]:
    """``(D, finite)``: squared distances of ``s * G`` (``s`` a power of two, see ``_pairwise``): fit for comparisons."""
    return _distances_wide(G)[:2]


def _distances_wide(G: Tensor) -> tuple[Tensor, Tensor, bool]:
    """``(D, finite, wide)``: :func:`_distances` and whether the Gram took the wide (hostile) path."""
    K, finite, _, wide = P.distance_gram(G)
    return (*P.sq_distances_from_gram(K, finite), wide)


def pairwise_sq_distances(G: Tensor) -> Tensor:
    """Squared Euclidean distances ``D[i, j] = |x_i - x_j|^2`` as ``Tensor[n, n]`` (dtype of ``G``).

    One Gram matrix (``X X^T`` on rows centred at a median-norm row, accumulated in the input dtype
    in column chunks), ``D_ij = K_ii + K_jj - 2 K_ij``, clamped at 0, exactly zero diagonal,
    symmetric. Rows with NaN/Inf (or an overflowing norm) are at distance ``+inf`` from every other
    row and never enter the product, so they do not change the other entries. Pass float64 inputs
    for distances that are tiny compared with the rows' spread around the centre. A distance beyond
    the dtype's range is ``+inf`` (computed in a wider dtype, then returned in ``G``'s).
    """
    P.check_batch(G, "pairwise_sq_distances")
    K, finite, s, _ = P.distance_gram(G)
    D = P.sq_distances_from_gram(K, finite)[0]
    if s != 1.0:
        D = D * (1.0 / s) * (1.0 / s)
    return D.to(G.dtype)


# =====================================================================================================
# Krum / Multi-Krum
# =====================================================================================================


def _scores(D: Tensor, k: int, alive: Tensor | None = None) -> Tensor:
    """Sum of the ``k`` smallest distances to other (alive) rows: ``Tensor[n]``."""
    Dx = D.clone()
    Dx.fill_diagonal_(_INF)
    if alive is not None:
        Dx.masked_fill_(~alive[None, :], _INF)
    if k <= 0:
        return torch.zeros(D.shape[0], dtype=D.dtype, device=D.device)
    return Dx.topk(k, dim=1, largest=False).values.sum(dim=1)


def _rank_key(scores: Tensor, candidates: Tensor) -> Tensor:
    """Sort key: candidates by score (an infinite score becomes the largest finite value, so that
    candidates always rank before non-candidates, whose key is +inf)."""
    big = torch.finfo(scores.dtype).max
    s = torch.where(torch.isinf(scores) | torch.isnan(scores), torch.full_like(scores, big), scores)
    return torch.where(candidates, s, torch.full_like(scores, _INF))


def krum_scores(G: Tensor, f: int) -> Tensor:
    """Krum scores ``s(i) = sum of the n-f-2 smallest |x_i - x_j|^2, j != i`` (``+inf`` for non-finite rows)."""
    n, _ = P.check_batch(G, "krum_scores")
    P.check_f(f, "krum_scores")
    _require("krum", _req_krum(n, f))
    D, finite = _distances(G)
    s = _scores(D, n - f - 2)
    return torch.where(finite, s, torch.full_like(s, _INF))


def _krum_key(G: Tensor, f: int) -> tuple[Tensor, Tensor]:
    n = G.shape[0]
    D, finite = _distances(G)
    s = _scores(D, n - f - 2)
    cand = finite if bool(finite.any()) else torch.ones_like(finite)
    return _rank_key(s, cand), finite


def krum(G: Tensor, f: int) -> Tensor:
    """Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

    ``score(i) = sum of the SQUARED distances from x_i to its n-f-2 nearest other rows``; the output
    is the row with the lowest score (ties: lowest index). Requires ``n > 2f+2``.

    Follows the paper. Deviations elsewhere: ByzFL sums the n-f-1 nearest (and averages), Garfield
    uses unsquared distances (and n-f-1 neighbours); the epfml code squares the distances twice.
    """
    n, _ = P.check_batch(G, "krum")
    P.check_f(f, "krum")
    _require("krum", _req_krum(n, f))
    key, _ = _krum_key(G, f)
    return G[torch.argmin(key)].clone()  # argmin returns the first minimal index


def multi_krum(G: Tensor, f: int, m: int | None = None) -> Tensor:
    """Multi-Krum: the mean of the ``m`` rows with the lowest Krum scores (ties: lowest index).

    ``m=None`` means ``m = n - f`` (ByzFL's choice; Garfield uses n-f-2, the paper leaves m free;
    ``m = 1`` is Krum). Requires ``n > 2f+2`` and ``1 <= m <= n``.
    """
    n, _ = P.check_batch(G, "multi_krum")
    P.check_f(f, "multi_krum")
    _require("multi_krum", _req_krum(n, f))
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise ValueError(f"multi_krum requires 1 <= m <= n (n={n}, m={m!r})")
    key, finite = _krum_key(G, f)
    order = torch.sort(key, stable=True).indices[:m]
    w = torch.zeros(n, dtype=G.dtype, device=G.device)
    w[order] = 1.0 / m
    return P.weighted_rows(G, w, finite)


# =====================================================================================================
# Bulyan
# =====================================================================================================


def _bulyan_picks(D: Tensor, finite: Tensor, f: int, theta: int) -> Tensor:
    """Iterated Krum on one distance matrix shrunk by masking: ``theta`` row indices in pick order."""
    n = D.shape[0]
    alive = torch.ones(n, dtype=torch.bool, device=D.device)
    picks = []
    for t in range(theta):  # a loop over the theta picks on an n x n matrix (no d-sized work)
        r = n - t
        s = _scores(D, max(r - f - 2, 0), alive)
        cand = alive & finite
        cand = torch.where(cand.any(), cand, alive)
        i = torch.argmin(_rank_key(s, cand))
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

    Implementation of step 2: the beta values closest to the median are a window of the sorted
    values; its start is ``#{j < 2f : s_j + s_{j+beta} < 2 median}`` (exact comparisons, no
    cumulative sums), and the window is averaged with a mask. Garfield's "Bulyan over Multi-Krum"
    differs (it selects Multi-Krum averages); ByzFL's "Meamed" is step 2 alone.
    """
    n, _ = P.check_batch(G, "bulyan")
    P.check_f(f, "bulyan")
    _require("bulyan", _req_bulyan(n, f))
    theta, beta = n - 2 * f, n - 4 * f
    D, finite = _distances(G)
    picks = _bulyan_picks(D, finite, f, theta)
    S = sort_workers(G[picks])  # theta x d, sorted along the worker axis
    s = S.float() if G.dtype in LOW_PRECISION else S
    h = theta // 2
    m2 = 2.0 * s[h] if theta % 2 == 1 else s[h - 1] + s[h]
    pair = s[: theta - beta] + s[beta:]
    if not (all_finite(m2) and all_finite(pair)):
        # values near the dtype maximum: the same comparison on halves (exact scaling, no overflow)
        m2 = s[h] if theta % 2 == 1 else 0.5 * s[h - 1] + 0.5 * s[h]
        pair = 0.5 * s[: theta - beta] + 0.5 * s[beta:]
    start = (pair < m2).sum(dim=0)  # monotone in j: a prefix
    pos = torch.arange(theta, device=G.device)[:, None]
    mask = (pos >= start) & (pos < start + beta)
    out = torch.where(mask, s, torch.zeros((), dtype=s.dtype, device=s.device)).sum(dim=0) / beta
    if not all_finite(out):  # the window's sum overflowed: average it without overflow
        window = torch.gather(s, 0, start + torch.arange(beta, device=G.device)[:, None])  # beta x d
        out = mean_rows(window)
    return out.to(G.dtype)


# =====================================================================================================
# MDA: minimum-diameter averaging
# =====================================================================================================


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
    _require("mda", _req_mda(n, f))
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
    _require("mda", _req_mda(n, f))
    D, finite = _distances(G)
    kept = _mda_subset(D, f)
    w = torch.zeros(n, dtype=G.dtype, device=G.device)
    w[torch.tensor(kept, device=G.device)] = 1.0 / len(kept)
    return P.weighted_rows(G, w, finite)


# =====================================================================================================
# NNM: nearest-neighbour mixing (pre-aggregation)
# =====================================================================================================


def nnm_mixing_matrix(G: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """``(M, finite)``: row i of ``M`` has ``1/(n-f)`` on the n-f nearest rows to ``x_i``, itself
    first (ties: lowest index). Requires ``f < n/2``."""
    return _nnm_matrix(G, f)[:2]


def _nnm_matrix(G: Tensor, f: int) -> tuple[Tensor, Tensor, bool]:
    n, _ = P.check_batch(G, "nnm")
    P.check_f(f, "nnm")
    _require("nnm", _req_half(n, f))
    D, finite, wide = _distances_wide(G)
    Dx = D.clone()
    Dx.fill_diagonal_(-1.0)  # self first, even with duplicates at distance 0
    nbrs = torch.sort(Dx, dim=1, stable=True).indices[:, : n - f]
    M = torch.zeros(n, n, dtype=compute_dtype(G.dtype), device=G.device)  # float32 weights for float16/bfloat16
    M.scatter_(1, nbrs, 1.0 / (n - f))
    return M, finite, wide


def nnm(G: Tensor, f: int) -> Tensor:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023): ``Tensor[n, d]``.

    Row i becomes the mean of its n-f nearest rows (itself included; ties: lowest index), computed
    as one GEMM ``M @ G``. Requires ``f < n/2``. Non-finite input rows are passed through unchanged
    (the rule after NNM sees them as non-finite and ignores them); finite rows never mix them in
    while at most f exist.
    """
    M, finite, wide = _nnm_matrix(G, f)
    Y = P.mix_rows(G, M, finite, check=wide)  # a trusted Gram bounds every row: its means cannot overflow
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()
        Y[bad] = G[bad]
    return Y


# =====================================================================================================
# registered objects
# =====================================================================================================


def _config_int(value: Any, key: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"aggregator.{key} must be an integer >= {minimum}, got {value!r}")


def _config_float(value: Any, key: str, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if positive else value >= 0)
    if not ok:
        raise ConfigError(f"aggregator.{key} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")


@AGGREGATORS.register("krum")
class Krum(Aggregator):
    """Krum (Blanchard et al. 2017): the row with the lowest sum of squared distances to its n-f-2 nearest."""

    name = "krum"

    def __init__(self, f: int = 0):
        super().__init__(f)

    def requirement(self, n: int) -> str | None:
        return _req_krum(n, self.f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return krum(G, self.f)


@AGGREGATORS.register("multi_krum")
class MultiKrum(Aggregator):
    """Multi-Krum: mean of the m rows with the lowest Krum scores (m defaults to n-f)."""

    name = "multi_krum"

    def __init__(self, f: int = 0, m: int | None = None):
        super().__init__(f)
        if m is not None:
            _config_int(m, "m", 1)
        self.m = m

    def requirement(self, n: int) -> str | None:
        problem = _req_krum(n, self.f)
        if problem is None and self.m is not None and self.m > n:
            problem = f"m <= n (n={n}, m={self.m})"
        return problem

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return multi_krum(G, self.f, self.m)

    def __repr__(self) -> str:
        return f"MultiKrum(f={self.f}, m={self.m})"


@AGGREGATORS.register("bulyan")
class Bulyan(Aggregator):
    """Bulyan over Krum (El Mhamdi et al. 2018): n-2f Krum picks, then a coordinate-wise trimmed mean around the median."""

    name = "bulyan"

    def __init__(self, f: int = 0):
        super().__init__(f)

    def requirement(self, n: int) -> str | None:
        return _req_bulyan(n, self.f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return bulyan(G, self.f)


@AGGREGATORS.register("mda")
class MDA(Aggregator):
    """Minimum-diameter averaging: exact mean of the (n-f)-subset of smallest diameter."""

    name = "mda"

    def __init__(self, f: int = 0):
        super().__init__(f)

    def requirement(self, n: int) -> str | None:
        return _req_mda(n, self.f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return mda(G, self.f)


@PREAGGREGATORS.register("nnm")
class NNM(PreAggregator):
    """Nearest-neighbour mixing (Allouah et al. 2023): each row becomes the mean of its n-f nearest rows."""

    name = "nnm"

    def __init__(self, f: int = 0):
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ConfigError(f"nnm.f must be a non-negative integer, got {f!r}")
        super().__init__(f)

    def output_count(self, n: int) -> int:
        return n

    def requirement(self, n: int) -> str | None:
        return _req_half(n, self.f)

    def __call__(self, G: Tensor, ctx: AggregationContext | None = None) -> Tensor:
        return nnm(G, self.f)
