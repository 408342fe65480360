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

Hostile values: when the input-dtype Gram cannot be trusted (float16/bfloat16 input; a finite row
whose squared norm overflowed; squared norms so large that sums of distances could overflow; or a
batch so small that its squares underflow), :func:`wide_gram` recomputes it in ``wide_dtype``
(float32 for float16, else float64) on rows multiplied by an exact power of two ``s`` (1 unless the
input is float64), centred at the median-norm row. The Gram is then that of ``s * G``: callers
compare distances (unchanged by ``s``) or rescale thresholds (``tau * s``, ``nu * s``). Ordinary
inputs never take this path, so their results are bit for bit those of the input-dtype Gram.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._finite import LOW_PRECISION, all_finite, check_batch, check_f, finite_rows, pow2_scale, row_norms, wide_dtype  # noqa: F401

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


def gram_is_trusted(G: Tensor, K: Tensor, finite: Tensor, center: Tensor | None = None) -> bool:
    """Whether ``K`` (input dtype, rows outside ``finite`` zeroed; centred at ``center`` if given) is
    good for distances: no finite row lost to an overflowing squared norm, every entry finite, the
    largest squared norm below ``max / (4n)`` (sums of n distances stay finite) and, unless every
    row is zero (sits on the centre), above ``tiny / eps`` (squares did not underflow)."""
    if G.dtype in LOW_PRECISION:
        return False
    if not bool(finite.all()) and bool((finite_rows(G) & ~finite).any()):
        return False
    if not bool(torch.isfinite(K).all()):
        return False
    if not bool(finite.any()):
        return True
    info = torch.finfo(G.dtype)
    top = float(K.diagonal()[finite].max())
    if top > info.max / (4 * G.shape[0]):
        return False
    if top < info.tiny / info.eps:
        X = G if center is None else G - center  # a rare pass: only for batches this small
        return top == 0 and not bool((X.abs().amax(dim=1)[finite] > 0).any())
    return True


def wide_gram(G: Tensor, center: Tensor | None = None) -> tuple[Tensor, Tensor, float]:
    """``(K, finite, s)``: ``K_ij = <s x_i - s c, s x_j - s c>`` in ``wide_dtype``, for the hostile cases.

    ``s`` is 1, or for float64 input the power of two that brings the median-norm finite row's
    largest entry into [0.5, 1) (rows up to ~1e150 times larger still square to finite numbers;
    beyond that they join the non-finite rows). ``c`` defaults to that median-norm row.
    Non-finite rows (and rows whose rescaled squared norm overflows) get zero rows/columns.
    """
    n, d = G.shape
    W = wide_dtype(G.dtype)
    finite = finite_rows(G)
    ref = robust_center(G, finite, row_norms(G))
    s = pow2_scale(float(ref.abs().max())) if G.dtype == torch.float64 and d > 0 else 1.0
    c = (ref if center is None else center).to(W) * s
    K = torch.zeros(n, n, dtype=W, device=G.device)
    chunk = max(1024, _CHUNK_ELEMS // max(n, 1))
    for a in range(0, d, chunk):  # loop over column blocks, not coordinates
        X = G[:, a : a + chunk].to(W) * s - c[a : a + chunk]
        X = torch.where(finite[:, None], X, torch.zeros((), dtype=W, device=G.device))
        K.addmm_(X, X.T)
    K = 0.5 * (K + K.T)
    finite = finite & torch.isfinite(K.diagonal())
    ok = finite[:, None] & finite[None, :]
    if not bool(ok.all()):
        K = torch.where(ok, K, torch.zeros((), dtype=W, device=G.device))
    return K, finite, s


def distance_gram(G: Tensor) -> tuple[Tensor, Tensor, float, bool]:
    """``(K, finite, s, wide)``: the Gram matrix of ``s * G`` up to a translation, good for pairwise
    distances, and whether it came from :func:`wide_gram` (else every finite row's squared norm is
    below ``max / (4n)``, so no mean of rows can overflow).

    First the raw ``G @ G.T`` (one GEMM; entries between finite rows are exact dot products whatever
    the other rows hold, and a row with NaN/Inf or an overflowing norm shows as a non-finite
    diagonal entry). If the rows share a dominant common component (median squared distance below
    ``_CENTRE_BELOW`` times the largest squared norm), where ``|x_i|^2 + |x_j|^2 - 2<x_i, x_j>``
    would cancel, it is recomputed on centred rows (:func:`centered_gram`). Either way the result
    is the Gram matrix of the rows up to a translation, so distances from it are the same. ``s = 1``
    there; hostile inputs (:func:`gram_is_trusted` false) get :func:`wide_gram` instead.
    """
    if G.dtype in LOW_PRECISION:
        return (*wide_gram(G), True)
    K = G @ G.T
    K = 0.5 * (K + K.T)
    finite = torch.isfinite(K.diagonal())
    if not bool(finite.all()):
        K = torch.where(finite[:, None] & finite[None, :], K, torch.zeros((), dtype=K.dtype, device=K.device))
    if not gram_is_trusted(G, K, finite):
        return (*wide_gram(G), True)
    m = int(finite.sum())
    if m >= 2:
        idx = torch.nonzero(finite).flatten()
        Kf = K[idx][:, idx]
        diag = Kf.diagonal()
        D = diag[:, None] + diag[None, :] - 2.0 * Kf
        off = D[torch.triu_indices(m, m, 1, device=D.device).unbind()]
        if bool(off.median() < _CENTRE_BELOW * diag.max()):
            K, finite, _ = centered_gram(G, finite)
    return K, finite, 1.0, False


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
    """``sum_i w_i x_i`` over rows with non-zero weight, never multiplying a non-finite row (0 * NaN = NaN).

    float16/bfloat16 are combined in float32; a combination that overflows although its rows are
    finite (rows near the dtype maximum) is recomputed in ``wide_dtype`` (float64: on halved rows).
    """
    dtype = G.dtype
    if dtype in LOW_PRECISION:
        return weighted_rows(G.float(), w, finite).to(dtype)
    wx = w.to(dtype=dtype, device=G.device)
    idx = None if bool(finite.all()) else torch.nonzero((wx != 0) & finite).flatten()
    out = wx @ G if idx is None else wx[idx] @ G[idx]
    if not all_finite(out):
        out = _wide_mix(G, w.reshape(1, -1), idx)[0]
    return out


def mix_rows(G: Tensor, M: Tensor, finite: Tensor, check: bool = True) -> Tensor:
    """``M @ G`` where columns of ``M`` on non-finite rows are zero, without touching those rows.

    Same low-precision and overflow handling as :func:`weighted_rows`; ``check = False`` skips the
    overflow test (a pass over the output) when the caller knows the rows are small enough.
    """
    dtype = G.dtype
    if dtype in LOW_PRECISION:
        return mix_rows(G.float(), M, finite, check).to(dtype)
    idx = None if bool(finite.all()) else torch.nonzero(finite).flatten()
    Mx = M.to(dtype=dtype, device=G.device)
    out = Mx @ G if idx is None else Mx[:, idx] @ G[idx]
    if check and not all_finite(out):
        out = _wide_mix(G, M, idx)
    return out


def _wide_mix(G: Tensor, M: Tensor, idx: Tensor | None) -> Tensor:
    """``M[:, idx] @ G[idx]`` in ``wide_dtype``, for float64 on halved rows (no intermediate overflow)."""
    dtype = G.dtype
    W = wide_dtype(dtype)
    half = 0.5 if dtype == W else 1.0  # powers of two: exact
    Mw = M.to(dtype=W, device=G.device)
    Gi = G if idx is None else G[idx]
    Mw = Mw if idx is None else Mw[:, idx]
    return ((Mw @ (Gi.to(W) * half)) / half).to(dtype)


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
