"""Shared building blocks of the distance-based rules: finite-row detection, a robust centre, the
centred Gram matrix and pairwise squared distances, weighted row sums that ignore non-finite rows,
and an exact small vertex-cover search (used by MDA).

Precision choice (documented once here, used by every rule in ``distance``):
the Gram matrix is computed in the input dtype, but on rows *centred* at a robust reference row
(the finite row of median norm), in column chunks so that the centred copy never exists in full.
Squared distances from a Gram matrix lose precision when the vectors share a large common
component (``|x_i|^2 + |x_j|^2 - 2<x_i,x_j>`` cancels); centring removes that component, so the
rounding error of ``D_ij`` becomes ``~ eps * (|x_i - c|^2 + |x_j - c|^2)`` instead of
``~ eps * (|x_i|^2 + |x_j|^2)``. The reference row is a median-norm finite row, so with f < n/2 its
norm is at most the largest honest norm and centring never makes the error more than ~4x worse than
no centring, while it typically removes the common (honest mean) component. Callers wanting more
digits pass float64 inputs (the Gram is then accumulated in float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._finite import check_batch, check_f  # noqa: F401  (re-exported for the distance rules)

# Number of matrix elements per column chunk of the centred Gram (keeps the chunk cache-resident).
_CHUNK_ELEMS = 1 << 21


def finite_norms(G: Tensor) -> tuple[Tensor, Tensor]:
    """``(finite, norms)``: rows whose Euclidean norm is finite (no NaN/Inf and no overflow) and the norms.

    A row whose squared norm overflows is treated like a non-finite one (its Gram entries would be
    meaningless anyway). One pass over ``G``.
    """
    norms = torch.linalg.vector_norm(G, dim=1)
    return torch.isfinite(norms), norms


def robust_center(G: Tensor, finite: Tensor, norms: Tensor) -> Tensor:
    """The finite row of (lower) median norm, a cheap reference point near the honest rows when f < n/2."""
    if not bool(finite.any()):
        return torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
    key = torch.where(finite, norms, torch.full_like(norms, float("inf")))
    k = int(finite.sum())
    order = torch.argsort(key, stable=True)
    return G[order[(k - 1) // 2]]


def centered_gram(G: Tensor, finite: Tensor | None = None, center: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(K, finite, c)``: ``K_ij = <x_i - c, x_j - c>`` for finite rows (non-finite rows are zeroed).

    ``c`` defaults to :func:`robust_center`. Rows that are not finite get zero rows/columns in ``K``
    (they never enter the product, so they cannot poison the other entries).
    """
    n, d = G.shape
    if finite is None or center is None:
        fin, norms = finite_norms(G)
        finite = fin if finite is None else finite
        if center is None:
            center = robust_center(G, finite, norms)
    all_finite = bool(finite.all())
    K = torch.zeros(n, n, dtype=G.dtype, device=G.device)
    chunk = max(1024, _CHUNK_ELEMS // max(n, 1))
    for s in range(0, d, chunk):  # loop over column blocks, not coordinates
        X = G[:, s : s + chunk] - center[s : s + chunk]
        if not all_finite:
            X = torch.where(finite[:, None], X, torch.zeros((), dtype=X.dtype, device=X.device))
        K.addmm_(X, X.T)
    K = 0.5 * (K + K.T)  # BLAS need not return an exactly symmetric X @ X.T
    return K, finite, center


# Centre only when the rows share a dominant common component: when the median squared distance
# between finite rows is below this fraction of the largest squared norm.
_CENTRE_BELOW = 0.05


def distance_gram(G: Tensor) -> tuple[Tensor, Tensor]:
    """``(K, finite)``: a Gram matrix good for pairwise distances, in one pass over ``G`` when possible.

    First the raw ``G @ G.T`` (one GEMM; entries between finite rows are exact dot products whatever
    the other rows hold, and a row with NaN/Inf or an overflowing norm shows as a non-finite
    diagonal entry). If the rows share a dominant common component (median squared distance below
    ``_CENTRE_BELOW`` times the largest squared norm), where ``|x_i|^2 + |x_j|^2 - 2<x_i, x_j>``
    would cancel, it is recomputed on centred rows (:func:`centered_gram`). Either way the result
    is the Gram matrix of the rows up to a translation, so distances from it are the same.
    """
    K = G @ G.T
    K = 0.5 * (K + K.T)
    finite = torch.isfinite(K.diagonal())
    if not bool(finite.all()):
        K = torch.where(finite[:, None] & finite[None, :], K, torch.zeros((), dtype=K.dtype, device=K.device))
    m = int(finite.sum())
    if m >= 2:
        idx = torch.nonzero(finite).flatten()
        Kf = K[idx][:, idx]
        diag = Kf.diagonal()
        D = diag[:, None] + diag[None, :] - 2.0 * Kf
        off = D[torch.triu_indices(m, m, 1, device=D.device).unbind()]
        if bool(off.median() < _CENTRE_BELOW * diag.max()):
            K, finite, _ = centered_gram(G, finite)
    return K, finite


def sq_distances_from_gram(K: Tensor, finite: Tensor) -> tuple[Tensor, Tensor]:
    """``(D, finite)``: squared distances from a (centred) Gram matrix, clamped at 0, zero diagonal,
    +inf to and from non-finite rows. Rows whose centred squared norm overflows join the non-finite ones."""
    diag = K.diagonal()
    finite = finite & torch.isfinite(diag)
    D = (diag[:, None] + diag[None, :] - 2.0 * K).clamp_min_(0.0)
    if not bool(finite.all()):
        bad = ~finite
        D.masked_fill_(bad[:, None] | bad[None, :], float("inf"))
    D.masked_fill_(torch.isnan(D), float("inf"))
    D.fill_diagonal_(0.0)
    return D, finite


def weighted_rows(G: Tensor, w: Tensor, finite: Tensor) -> Tensor:
    """``sum_i w_i x_i`` over rows with non-zero weight, never multiplying a non-finite row (0 * NaN = NaN)."""
    w = w.to(dtype=G.dtype, device=G.device)
    if bool(finite.all()):
        return w @ G
    idx = torch.nonzero((w != 0) & finite).flatten()
    return w[idx] @ G[idx]


def mix_rows(G: Tensor, M: Tensor, finite: Tensor) -> Tensor:
    """``M @ G`` where columns of ``M`` on non-finite rows are zero, without touching those rows."""
    M = M.to(dtype=G.dtype, device=G.device)
    if bool(finite.all()):
        return M @ G
    idx = torch.nonzero(finite).flatten()
    return M[:, idx] @ G[idx]


# -- exact vertex cover on small graphs (bitmask adjacency), used by MDA -------------------------------


def vertex_cover_at_most(adj: list[int], C: int, k: int) -> bool:
    """Whether the graph induced by the vertex set ``C`` (bitmask) has a vertex cover of size <= ``k``.

    Bounded search tree: forced moves (degree > k, degree 1), then branching on a max-degree vertex
    (take it, or take all its neighbours). Exact; O(1.47^k * n) in the worst case.
    """
    while True:
        if k < 0:
            return False
        best_v, best_deg, deg_sum, leaf = -1, 0, 0, -1
        m = C
        while m:
            low = m & -m
            v = low.bit_length() - 1
            m ^= low
            dg = (adj[v] & C).bit_count()
            deg_sum += dg
            if dg > best_deg:
                best_v, best_deg = v, dg
            if dg == 1 and leaf < 0:
                leaf = v
        if best_deg == 0:
            return True
        if k == 0 or deg_sum // 2 > k * best_deg:
            return False
        if best_deg > k:  # must be in every cover of size <= k
            C &= ~(1 << best_v)
            k -= 1
            continue
        if leaf >= 0:  # a degree-1 vertex: taking its neighbour is never worse
            u = (adj[leaf] & C).bit_length() - 1
            C &= ~(1 << u)
            k -= 1
            continue
        v = best_v
        if vertex_cover_at_most(adj, C & ~(1 << v), k - 1):
            return True
        C &= ~((1 << v) | (adj[v] & C))
        k -= best_deg
