"""Minimum-volume-ellipsoid averaging (the MVE-based averaging rule of El-Mhamdi et al., NeurIPS 2021).

``mve_average(G, f)``: among the ``(q - f)``-subsets of the ``q`` rows of ``G``, take the one whose
minimum-volume enclosing ellipsoid (MVEE) is smallest and return the mean of its rows. The seed names
an MVE-based averaging agreement (n >= 6f + 1) without defining it and the paper's text was not
available here: this is MDA's construction with the ellipsoid's volume in place of the diameter
(docs/DESIGN.md, "As built").

Exact computation, and where it stops being practical:

- Subsets: ``C(q, f)`` of them (``q = n - f`` received vectors): 6 at n = 7, f = 1; 560 at n = 19,
  f = 3; 65 780 at n = 31, f = 5; 3.1e7 at n = 61, f = 10. Every subset needs its own ellipsoid, so
  the cost is combinatorial in f, like MDA's naive search but without MDA's pruning (a diameter is
  one pairwise distance; a volume is not decided by any pair).
- Dimension: all rows lie in the affine hull of the ``q`` received vectors (dimension <= q - 1), so
  the vectors are first expressed in an orthonormal basis of that hull from one ``q x q`` Gram
  matrix (``O(q^2 d)``); after that nothing depends on d.
- Volume in the subset's own affine hull. When the ``m = q - f`` points are affinely independent
  (always the case for generic vectors with d >= m - 1, i.e. model and gradient vectors), the MVEE of
  a simplex is known in closed form (uniform weights, Khachiyan's fixed point): semi-axes
  ``sqrt((m - 1) * eigenvalues of the covariance)``. Otherwise (d < m - 1, e.g. the slides'
  3-dimensional example, or repeated vectors) the MVEE is computed by Khachiyan's algorithm, batched
  over the subsets, ``O(iterations * C(q, f) * m * k^2)`` for k = the affine dimension.
- Subsets are compared by the geometric mean of their ellipsoid's semi-axes (log-volume divided by the
  dimension of their hull). In general position all subsets have dimension m - 1 and this is the
  minimum volume itself. It differs only for degenerate subsets: compared by volume, a subset spanning
  fewer dimensions has volume zero and always wins, so Byzantine vectors that repeat each other (f
  copies of one vector) or lie in the affine hull of some honest ones would be chosen however far
  away they are (MVE in dimension d >= q has no breakdown point without this); ``tests/test_agreement.py``
  shows both attacks failing.
- ``max_subsets`` (default 200 000) refuses instances beyond that with a ``ConfigError``: at n = 31,
  f = 5 one node's call costs ~65k small eigen-decompositions (about 2 s on one CPU thread, see
  BENCHMARKS.md); past a few hundred thousand subsets per node per round the rule is impractical.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ..registry import ConfigError


def _affine_coordinates(G: Tensor) -> Tensor:
    """Rows of ``G`` as coordinates in an orthonormal basis of their affine hull (``[q, k]``, float64)."""
    X = G.double()
    c = X.mean(dim=0, keepdim=True)
    Xc = X - c
    K = Xc @ Xc.T
    w, U = torch.linalg.eigh(K)
    tol = max(float(w.max()), 0.0) * 1e-12 + 1e-300
    keep = w > tol
    return U[:, keep] * torch.sqrt(w[keep]).unsqueeze(0)  # Xc = U sqrt(w) (basis)^T


def _khachiyan_logvol(P: Tensor, iters: int = 300, tol: float = 1e-5) -> Tensor:
    """Sum of the log semi-axes of the MVEE of each point set ``P: [S, m, k]`` (full-dimensional), Khachiyan's algorithm."""
    S, m, k = P.shape
    Q = torch.cat([P, torch.ones(S, m, 1, dtype=P.dtype)], dim=2)  # [S, m, k+1]
    u = torch.full((S, m), 1.0 / m, dtype=P.dtype)
    for _ in range(iters):
        X = torch.einsum("smi,sm,smj->sij", Q, u, Q)
        M = torch.einsum("smi,sij,smj->sm", Q, torch.linalg.inv(X), Q)
        Mj, j = M.max(dim=1)
        step = (Mj - k - 1) / ((k + 1) * (Mj - 1))
        if float(step.max()) < tol:
            break
        u = u * (1 - step).unsqueeze(1)
        u[torch.arange(S), j] += step
    c = torch.einsum("sm,smk->sk", u, P)
    Sc = torch.einsum("smi,sm,smj->sij", P, u, P) - c.unsqueeze(2) * c.unsqueeze(1)
    return 0.5 * torch.linalg.slogdet(Sc * k).logabsdet  # sum of the log semi-axes


def mve_subset(G: Tensor, f: int, max_subsets: int = 200_000) -> list[int]:
    """Sorted row indices of the ``(q - f)``-subset of ``G: Tensor[q, d]`` with the smallest MVEE."""
    q = G.shape[0]
    if not isinstance(f, int) or f < 0 or q - f < 1:
        raise ConfigError(f"mve: need 0 <= f < q, got q={q}, f={f}")
    if f == 0:
        return list(range(q))
    total = math.comb(q, f)
    if total > max_subsets:
        raise ConfigError(
            f"mve: C({q}, {f}) = {total} subsets exceed max_subsets = {max_subsets}; the exact minimum-volume "
            "ellipsoid is combinatorial in f (one ellipsoid per subset) and impractical at this size"
        )
    finite = torch.isfinite(G).all(dim=1)
    m = q - f
    if int(finite.sum()) >= m and bool((G[finite] == G[finite][:1]).all()):
        return torch.nonzero(finite).flatten()[:m].tolist()  # all finite rows equal: any subset of them
    if int(finite.sum()) < m:
        raise ConfigError(f"mve: fewer than q - f = {m} finite rows")
    Y = torch.zeros(q, 1, dtype=torch.float64)
    if bool(finite.any()):
        Yf = _affine_coordinates(G[finite])
        Y = torch.zeros(q, max(Yf.shape[1], 1), dtype=torch.float64)
        Y[finite, : Yf.shape[1]] = Yf
    subsets = torch.tensor(list(itertools.combinations(range(q), m)), dtype=torch.long)  # lexicographic
    ok = finite[subsets].all(dim=1)
    P = Y[subsets]  # [S, m, k]
    # repeated vectors count once: the MVEE of a set is that of its distinct points, so each point gets
    # weight 1 / (distinct points * its multiplicity) in the subset's centre and covariance
    _, row_id = torch.unique(torch.where(finite.unsqueeze(1), G, torch.zeros_like(G)), dim=0, return_inverse=True)
    ids = row_id[subsets]
    mult = (ids.unsqueeze(2) == ids.unsqueeze(1)).sum(dim=2).double()  # [S, m]
    distinct = (1.0 / mult).sum(dim=1).round()
    u = 1.0 / (distinct.unsqueeze(1) * mult)
    Pc = P - (u.unsqueeze(2) * P).sum(dim=1, keepdim=True)
    # affine dimension of each subset and its weighted covariance, in its own hull
    A = Pc * u.sqrt().unsqueeze(2)
    ev = torch.linalg.eigvalsh(A @ A.transpose(1, 2))  # [S, m] (the m x m Gram has the covariance's nonzero spectrum)
    scale = ev.max(dim=1, keepdim=True).values.clamp(min=1e-300)
    nz = ev > scale * 1e-10
    dim = nz.sum(dim=1)
    # sum of the log semi-axes of each subset's MVEE in its own hull; for a simplex (dim + 1 distinct
    # points) the MVEE has uniform weights on them: semi-axes sqrt(dim * eigenvalue of the covariance)
    kdims = dim.clamp(min=1).double().unsqueeze(1)
    log_axes = torch.where(nz, 0.5 * torch.log((kdims * ev).clamp(min=1e-300)), torch.zeros_like(ev)).sum(dim=1)
    simplex = dim == distinct.long() - 1
    if bool((~simplex & ok).any()):  # more points than dimension + 1: Khachiyan in each subset's hull
        idx = torch.nonzero(~simplex & ok).flatten()
        for kdim in dim[idx].unique().tolist():
            sel = idx[dim[idx] == kdim]
            if kdim == 0:
                continue
            if kdim == 1:  # points on a line: the ellipsoid is the segment, its semi-axis half its length
                proj = Pc[sel] @ torch.linalg.eigh(Pc[sel].transpose(1, 2) @ Pc[sel])[1][:, :, -1:]
                log_axes[sel] = torch.log((0.5 * (proj.amax(dim=(1, 2)) - proj.amin(dim=(1, 2)))).clamp(min=1e-300))
                continue
            # orthonormal basis of each subset's hull from its own scatter
            _, vecs = torch.linalg.eigh(Pc[sel].transpose(1, 2) @ Pc[sel])  # [s, k, k]
            B = vecs[:, :, -kdim:]
            log_axes[sel] = _khachiyan_logvol(Pc[sel] @ B)
    # compare the geometric-mean semi-axis (log-volume / dimension, in each subset's own hull): in general
    # position every subset has dimension m - 1 and this orders them exactly by volume; a degenerate subset
    # (Byzantine vectors that repeat each other or lie in the affine hull of honest ones) does not win by
    # having zero volume in the higher dimension, however far its vectors are
    key = torch.where(dim > 0, log_axes / kdims.squeeze(1), torch.full_like(log_axes, -math.inf))
    key = torch.where(ok, key, torch.full_like(key, math.inf))
    best = int(torch.argmin(key))  # ties: the first (lexicographically lowest) subset
    return subsets[best].tolist()


def mve_average(G: Tensor, f: int, max_subsets: int = 200_000) -> Tensor:
    """Mean of the rows of the minimum-volume-ellipsoid ``(q - f)``-subset (see :func:`mve_subset`)."""
    kept = mve_subset(G, f, max_subsets)
    return G[kept].mean(dim=0)
