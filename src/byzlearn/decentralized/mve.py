"""Minimum-volume-ellipsoid averaging (the MVE-based averaging rule of El-Mhamdi et al., NeurIPS 2021).

``mve_average(G, f)``: among the ``(q - f)``-subsets of the ``q`` rows of ``G``, take the one whose
minimum-volume enclosing ellipsoid (MVEE) is smallest and return the mean of its rows. (The paper's
rule is stated from memory of its text, not verified against it; see docs/DESIGN.md.)

Exact computation, and where it stops being practical:

- Subsets: ``C(q, f)`` of them (``q = n - f`` received vectors): 6 at n = 7, f = 1; 560 at n = 19,
  f = 3; 65 780 at n = 31, f = 5; 3.1e7 at n = 61, f = 10. Every subset needs its own ellipsoid, so
  the cost is combinatorial in f, like MDA's naive search but without MDA's pruning (a diameter is
  one pairwise distance; a volume is not decided by any pair).
- Dimension: all rows lie in the affine hull of the ``q`` received vectors (dimension <= q - 1), so
  the vectors are first expressed in an orthonormal basis of that hull from one ``q x q`` Gram
  matrix (``O(q^2 d)``); after that nothing depends on d.
- Volume in the subset's own affine hull, compared as (dimension, log-volume): a subset spanning
  fewer dimensions has zero volume in a higher-dimensional one and wins. When the ``m = q - f``
  points are affinely independent (always the case for generic vectors with d >= m - 1, i.e. model
  and gradient vectors), the MVEE of a simplex is known in closed form (uniform weights, Khachiyan's
  fixed point): ``log vol = 1/2 log det(centred scatter) + const(m)``. Otherwise (d < m - 1, e.g. the
  slides' 3-dimensional example) the MVEE is computed by Khachiyan's algorithm, batched over the
  subsets, ``O(iterations * C(q, f) * m * k^2)`` for k = the affine dimension.
- ``max_subsets`` (default 200 000) refuses instances beyond that with a ``ConfigError``: at n = 31,
  f = 5 one node's call costs ~65k small eigen-decompositions (about a second on 2 CPU cores); past
  a few hundred thousand subsets per node per round the rule is impractical.
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
    """log-volume (up to a constant) of the MVEE of each point set ``P: [S, m, k]`` (full-dimensional)."""
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
    return 0.5 * torch.linalg.slogdet(Sc * k).logabsdet


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
    Pc = P - P.mean(dim=1, keepdim=True)
    # affine dimension of each subset and the scatter in its own hull
    ev = torch.linalg.eigvalsh(Pc @ Pc.transpose(1, 2))  # [S, m] (m x m Gram has the same nonzero spectrum)
    scale = ev.max(dim=1, keepdim=True).values.clamp(min=1e-300)
    nz = ev > scale * 1e-10
    dim = nz.sum(dim=1)
    logvol = torch.where(nz, torch.log(ev.clamp(min=1e-300)), torch.zeros_like(ev)).sum(dim=1) * 0.5
    simplex = dim == m - 1
    if bool((~simplex & ok).any()):  # more points than dimension + 1: Khachiyan in each subset's hull
        idx = torch.nonzero(~simplex & ok).flatten()
        for kdim in dim[idx].unique().tolist():
            sel = idx[dim[idx] == kdim]
            if kdim == 0:
                logvol[sel] = 0.0
                continue
            if kdim == 1:  # points on a line: the ellipsoid is the segment
                proj = Pc[sel] @ torch.linalg.eigh(Pc[sel].transpose(1, 2) @ Pc[sel])[1][:, :, -1:]
                logvol[sel] = torch.log((proj.amax(dim=(1, 2)) - proj.amin(dim=(1, 2))).clamp(min=1e-300))
                continue
            # orthonormal basis of each subset's hull from its own scatter
            _, vecs = torch.linalg.eigh(Pc[sel].transpose(1, 2) @ Pc[sel])  # [s, k, k]
            B = vecs[:, :, -kdim:]
            logvol[sel] = _khachiyan_logvol(Pc[sel] @ B)
    dim = torch.where(ok, dim, torch.full_like(dim, 10**9))
    # lexicographic (dimension, log-volume); ties: first (lexicographically lowest) subset
    key = dim.double() * 1e6 + logvol.clamp(-1e5, 1e5)
    best = int(torch.argmin(key))
    return subsets[best].tolist()


def mve_average(G: Tensor, f: int, max_subsets: int = 200_000) -> Tensor:
    """Mean of the rows of the minimum-volume-ellipsoid ``(q - f)``-subset (see :func:`mve_subset`)."""
    kept = mve_subset(G, f, max_subsets)
    return G[kept].mean(dim=0)
