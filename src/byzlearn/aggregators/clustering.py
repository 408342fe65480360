"""Clustering-based rules: SignGuard (Xu et al., ICDCS 2022) and ClippedClustering (Li et al., IEEE
Trans. Big Data 2023), both with scikit-learn's clustering (imported on first use).

SignGuard follows the official code (JianXu95/SignGuard ``aggregators/signguard.py``,
``signguard_multiclass``): a norm filter ``L M < l_i < R M`` (M the numpy median of the norms), a
MeanShift clustering of sign features on a random block of 10% of the coordinates, the
intersection, every kept row clipped to ``min(l_i, M')`` (``M'`` the lower median, as
``torch.median``), their mean. fedlib's ``Signguard`` is a different rule and is not offered: it
clips every row to M first (so the upper bound never binds), keeps ``0.1 M <= l <= 3 M``, computes
unnormalised features over all coordinates, clusters with ``KMeans(2, random_state=0)`` and keeps
label 1 when more than ``n // 2`` rows carry it, else label 0.

ClippedClustering follows fedlib/Blades ``Clippedclustering(agg="mean", max_tau=1e5,
linkage="average")``: rows clipped to ``tau = min(median of every norm seen so far, max_tau)`` by
``tau / (l_i + 1e-6)``, cosine distances, two agglomerative clusters, the majority cluster's clipped
rows averaged (or their coordinate-wise median).

Non-finite rows (a NaN or ±inf entry) count as rows of infinite norm and never enter an output
(SignGuard: outside the norm filter; ClippedClustering: distance 2 to every row, as fedlib's NaN
cosines, and dropped from the kept cluster). Norms are overflow-safe (float64 for finite rows whose
norm overflows the dtype); float16/bfloat16 are computed in float32 and returned in their dtype.
Neither rule needs ``f``.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..registry import ConfigError
from ._finite import LOW_PRECISION, all_finite, big_row_parts, check_batch, finite_rows, mean_rows, row_norms
from ._pairwise import gram_is_trusted, weighted_rows, wide_gram
from ._sklearn import single_threaded
from .base import AGGREGATORS, AggregationContext, Aggregator
from .coordinatewise import median
from .preaggregation import static_clip
from .requirements import ANY

__all__ = ["signguard", "clipped_clustering", "SignGuard", "ClippedClustering"]

Linkage = Literal["average", "single", "complete"]


def _norms(G: Tensor) -> tuple[Tensor, Tensor]:
    """``(norms, finite)``: float64 L2 norms (``+inf`` for rows with NaN/±inf; the true norm for finite
    rows whose norm overflows the dtype, ``+inf`` only beyond float64) and the finite-row mask."""
    norms = row_norms(G)
    if all_finite(norms):
        return norms.double(), torch.ones(G.shape[0], dtype=torch.bool, device=G.device)
    finite = finite_rows(G)
    out = norms.double()
    big = finite & torch.isinf(out)
    if bool(big.any()):
        m, nu = big_row_parts(G[big])
        out[big] = m * nu
    return out, finite


def _np_median(sorted_values: np.ndarray) -> float:
    """numpy's median of an ascending array (mean of the two middle values for an even count)."""
    k = sorted_values.size
    if k % 2:
        return float(sorted_values[k // 2])
    return 0.5 * float(sorted_values[k // 2 - 1]) + 0.5 * float(sorted_values[k // 2])


# ------------------------------------------------------------------------------------------------
# SignGuard
# ------------------------------------------------------------------------------------------------
def _largest_cluster(F: np.ndarray) -> np.ndarray:
    """Rows of the largest MeanShift cluster of ``F`` (official SignGuard settings; orphans excluded).

    ``estimate_bandwidth`` returns 0 when every point has at least half the points on top of it
    (e.g. all features equal); MeanShift refuses bandwidth 0. Its limit for bandwidth -> 0 is used
    instead: clusters of identical rows, the largest one kept (ties: MeanShift's order, the
    lexicographically largest centre)."""
    from sklearn.cluster import MeanShift, estimate_bandwidth

    with warnings.catch_warnings(), single_threaded():  # MeanShift warns when binning gives one seed per point
        warnings.simplefilter("ignore")
        bandwidth = float(estimate_bandwidth(F, quantile=0.5, n_samples=50))
        if bandwidth > 0:
            try:
                labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(F).labels_
            except ValueError:  # "no point within bandwidth of any seed": use the bandwidth-0 limit
                labels = None
            if labels is not None:
                counts = np.bincount(labels[labels >= 0], minlength=1)
                if counts.sum() == 0:
                    return np.zeros(F.shape[0], dtype=bool)
                return labels == int(np.argmax(counts))
    rows, inverse, counts = np.unique(F, axis=0, return_inverse=True, return_counts=True)
    best = len(counts) - 1 - int(np.argmax(counts[::-1]))  # the last (largest centre) among the biggest groups
    return inverse.reshape(-1) == best


def signguard(G: Tensor, lower: float = 0.1, upper: float = 3.0, block: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """SignGuard (Xu et al., ICDCS 2022, arXiv 2109.05872; official ``signguard_multiclass``): ``Tensor[n, d] -> Tensor[d]``.

    1. ``l_i = ||x_i||``, ``M`` = numpy median of the ``l_i``; ``S1 = {i : lower M < l_i < upper M}`` (strict).
    2. ``k = floor(block d)`` coordinates (at least 1) from ``s = randint(0, d - k)`` (``generator``, or
       torch's default generator when None; one draw per call); per row the fractions of positive,
       zero and negative entries of the block, each column divided by its maximum + 1e-8 (float32).
    3. ``S2`` = the largest cluster of ``MeanShift(bandwidth=estimate_bandwidth(F, quantile=0.5,
       n_samples=50), bin_seeding=True, cluster_all=False)`` (bandwidth 0: see ``_largest_cluster``).
    4. Output ``mean_{i in S1 & S2} x_i min(1, M' / l_i)``, ``M'`` = lower median of the ``l_i``.

    Differences from the official code: a NaN entry counts as a zero in the sign features (as the
    official NaN -> 0) but its row has norm ``+inf`` (the official code zeroes the NaN and keeps the
    row's other entries), so no row with NaN/±inf enters the mean; an empty selection returns the
    zero vector (the official mean over no row is NaN): no step this round, which is what fedlib
    does too and what every other rule reduces to when it trusts no input; ``d < 10`` uses a block
    of one coordinate (the official ``k = 0`` divides by zero).
    """
    check_batch(G, "signguard")
    for name, v in (("lower", lower), ("upper", upper), ("block", block)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"signguard: {name} must be a finite non-negative number, got {v!r}")
    if not 0 < block <= 1:
        raise ValueError(f"signguard: block (the fraction of coordinates in the sign block) must be in (0, 1], got {block!r}")
    if G.dtype in LOW_PRECISION:
        return signguard(G.float(), lower, upper, block, generator).to(G.dtype)
    n, d = G.shape
    norms, finite = _norms(G)
    ordered = torch.sort(norms).values
    M = _np_median(ordered.cpu().numpy())
    S1 = (norms > lower * M) & (norms < upper * M)
    k = max(1, int(block * d))
    gen_device = generator.device if generator is not None else torch.device("cpu")
    s = int(torch.randint(0, max(d - k, 1), (1,), generator=generator, device=gen_device))
    B = G[:, s : s + k]
    pos, neg = (B > 0).sum(dim=1), (B < 0).sum(dim=1)
    counts = torch.stack([pos, k - pos - neg, neg], dim=1).to(torch.float32) / k  # NaN: neither sign, i.e. a zero
    F = counts / (counts.max(dim=0).values + 1e-8)
    S2 = torch.from_numpy(_largest_cluster(F.cpu().numpy())).to(G.device)
    S = S1 & S2 & finite
    M2 = float(ordered[(n - 1) // 2])
    if not bool(S.any()) or M2 == 0.0:  # nothing trusted, or every kept row clipped to norm 0
        return torch.zeros(d, dtype=G.dtype, device=G.device)
    rows = G[S]
    if math.isfinite(M2):
        rows = static_clip(rows, M2, inplace=True)
    return mean_rows(rows)


@AGGREGATORS.register("signguard")
class SignGuard(Aggregator):
    """SignGuard (Xu et al. 2022, official code): norm filter, MeanShift on sign features of a random block, clipped mean; no f."""

    name = "signguard"
    requires = ANY

    def __init__(self, f: int = 0, lower: float = 0.1, upper: float = 3.0, block: float = 0.1):
        super().__init__(f)
        for key, v in (("lower", lower), ("upper", upper)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"aggregator.{key} must be a finite number >= 0 (a multiple of the median norm), got {v!r}")
        if isinstance(block, bool) or not isinstance(block, (int, float)) or not 0 < block <= 1:
            raise ConfigError(f"aggregator.block must be in (0, 1] (fraction of coordinates in the sign block), got {block!r}")
        self.lower, self.upper, self.block = float(lower), float(upper), float(block)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return signguard(G, self.lower, self.upper, self.block, ctx.generator)

    def __repr__(self) -> str:
        return f"SignGuard(lower={self.lower}, upper={self.upper}, block={self.block})"


# ------------------------------------------------------------------------------------------------
# ClippedClustering
# ------------------------------------------------------------------------------------------------
def _cosine_distances(G: Tensor, finite: Tensor) -> np.ndarray:
    """``1 - cos(x_i, x_j)`` in float64 (fedlib's conventions: a zero row has cosine 0, NaN -> 2, a
    non-finite row is at distance 2 from every other row), clamped to [0, 2], zero diagonal."""
    K = None
    if G.dtype not in LOW_PRECISION:
        K = G @ G.T
        K = 0.5 * (K + K.T)
        ok = torch.isfinite(K.diagonal())
        if not bool(ok.all()):
            K = torch.where(ok[:, None] & ok[None, :], K, torch.zeros((), dtype=K.dtype, device=K.device))
        if not gram_is_trusted(G, K, ok):
            K = None
    if K is None:  # hostile values or low precision: the Gram of s * G in a wide dtype (cosines unchanged)
        K, ok, _ = wide_gram(G, torch.zeros(G.shape[1], dtype=G.dtype, device=G.device))
    K = K.double()
    r = K.diagonal().clamp_min(0.0).sqrt()
    den = r[:, None] * r[None, :]
    cos = torch.where(den > 0, K / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(K))
    D = (1.0 - cos).nan_to_num(nan=2.0, posinf=2.0, neginf=0.0).clamp_(0.0, 2.0)
    bad = ~(ok & finite)
    if bool(bad.any()):
        D[bad[:, None] | bad[None, :]] = 2.0
    D.fill_diagonal_(0.0)
    return D.cpu().numpy()


def _clipped_clustering(G: Tensor, tau: float, norms: Tensor, finite: Tensor, linkage: str, agg: str) -> Tensor:
    n, d = G.shape
    zeros = torch.zeros(d, dtype=G.dtype, device=G.device)
    if tau == 0.0:  # every non-zero row is clipped to the zero vector
        return zeros
    # fedlib: x <- x * tau / (l + 1e-6) when l > tau (a positive factor: cosines are those of the raw rows)
    coef = torch.where(norms > tau, tau / (norms + 1e-6), torch.ones_like(norms))
    if n == 1:
        kept = finite.clone()
    else:
        from sklearn.cluster import AgglomerativeClustering

        D = _cosine_distances(G, finite)
        with single_threaded():
            labels = AgglomerativeClustering(metric="precomputed", linkage=linkage, n_clusters=2).fit(D).labels_
        flag = 1 if int(labels.sum()) > n // 2 else 0
        kept = torch.from_numpy(labels == flag).to(G.device) & finite
    k = int(kept.sum())
    if k == 0:
        return zeros
    if agg == "median":
        idx = torch.nonzero(kept).flatten()
        X = (G[idx].double() * coef[idx, None]).to(G.dtype)  # factors <= 1: no overflow
        return median(X)
    return weighted_rows(G, torch.where(kept, coef / k, torch.zeros_like(coef)), finite)


def clipped_clustering(G: Tensor, tau: float, linkage: Linkage = "average", agg: Literal["mean", "median"] = "mean") -> Tensor:
    """ClippedClustering (Li et al. 2023; fedlib ``Clippedclustering``) with an explicit threshold ``tau``.

    Rows with ``l_i > tau`` are scaled by ``tau / (l_i + 1e-6)``; ``D_ij = 1 - cos(x_i, x_j)`` (-inf -> 0,
    +inf and NaN -> 2); ``AgglomerativeClustering(metric="precomputed", linkage, n_clusters=2)``; the
    cluster of label 1 is kept if more than ``n // 2`` rows carry it, else label 0; output the mean (or
    coordinate-wise median) of the kept clipped rows. ``n = 1``: that row, clipped. Rows with NaN/±inf
    are at distance 2 from all others and never enter the output; no kept finite row: the zero vector.
    The caller's ``G`` is never modified. The stateful rule (``ClippedClustering``) sets ``tau`` to
    ``min(median of every norm seen, max_tau)``.
    """
    check_batch(G, "clipped_clustering")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or tau < 0:
        raise ValueError(f"clipped_clustering: tau must be a number >= 0 (inf: no clipping), got {tau!r}")
    if linkage not in ("average", "single", "complete"):
        raise ValueError(f"clipped_clustering: linkage must be 'average', 'single' or 'complete', got {linkage!r}")
    if agg not in ("mean", "median"):
        raise ValueError(f"clipped_clustering: agg must be 'mean' or 'median', got {agg!r}")
    if G.dtype in LOW_PRECISION:
        return clipped_clustering(G.float(), tau, linkage, agg).to(G.dtype)
    norms, finite = _norms(G)
    return _clipped_clustering(G, float(tau), norms, finite, linkage, agg)


@AGGREGATORS.register("clipped_clustering")
class ClippedClustering(Aggregator):
    """ClippedClustering (Li et al. 2023, fedlib): clip to the median of all norms seen, keep the majority cosine cluster; no f.

    State: every norm seen (rows with NaN/±inf count as ``+inf``), kept as one sorted float64 array
    (8 bytes per norm, the exact median in O(1); ``state_dict`` saves it as a tensor, so a resumed run
    is bit-identical). ``window = K`` keeps only the last K norms instead (bounded memory; a variant:
    the published rule uses the whole history).
    """

    name = "clipped_clustering"
    requires = ANY

    def __init__(
        self,
        f: int = 0,
        agg: Literal["mean", "median"] = "mean",
        max_tau: float = 1e5,
        linkage: Linkage = "average",
        window: int | None = None,
    ):
        super().__init__(f)
        if agg not in ("mean", "median"):
            raise ConfigError(f"aggregator.agg must be 'mean' or 'median', got {agg!r}")
        if isinstance(max_tau, bool) or not isinstance(max_tau, (int, float)) or not max_tau > 0:
            raise ConfigError(f"aggregator.max_tau must be a number > 0 (inf: no cap), got {max_tau!r}")
        if linkage not in ("average", "single", "complete"):
            raise ConfigError(f"aggregator.linkage must be 'average', 'single' or 'complete', got {linkage!r}")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"aggregator.window must be a positive integer (norms kept) or unset (all), got {window!r}")
        self.agg, self.max_tau, self.linkage, self.window = agg, float(max_tau), linkage, window
        self.history = np.empty(0, dtype=np.float64)  # sorted (window None) or in arrival order (window K)

    def threshold(self, norms: Tensor) -> float:
        """Record this round's norms and return ``tau = min(median(history), max_tau)``."""
        new = norms.detach().double().cpu().numpy()
        if self.window is None:
            new = np.sort(new)
            self.history = np.insert(self.history, np.searchsorted(self.history, new), new)
            med = _np_median(self.history)
        else:
            self.history = np.concatenate([self.history, new])[-self.window :]
            med = _np_median(np.sort(self.history))
        return min(med, self.max_tau)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        X = G.float() if G.dtype in LOW_PRECISION else G
        norms, finite = _norms(X)
        tau = self.threshold(norms)
        return _clipped_clustering(X, tau, norms, finite, self.linkage, self.agg).to(G.dtype)

    def state_dict(self) -> dict:
        return {"norms": torch.from_numpy(self.history.copy())}

    def load_state_dict(self, state: dict) -> None:
        norms = state.get("norms")
        h = np.empty(0, dtype=np.float64) if norms is None else norms.detach().double().cpu().numpy().copy()
        self.history = np.sort(h) if self.window is None else h[-self.window :]

    def __repr__(self) -> str:
        return f"ClippedClustering(agg={self.agg!r}, max_tau={self.max_tau}, linkage={self.linkage!r}, window={self.window})"
