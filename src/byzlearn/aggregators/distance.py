"""Pairwise squared distances and the selection helpers shared by the distance rules.

The rules live one per module: ``krum`` (Krum, Multi-Krum), ``bulyan``, ``mda``, ``nnm``; the
geometric median and centered clipping, iterated on the same Gram matrix, live in ``iterative``.

Common conventions of the distance rules:

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
- Each rule declares its ``(n, f)`` condition once (``requirements.Requirement``): the function raises
  ``ValueError`` naming it, the object reports the same text from ``requirement(n)``.
"""

import torch
from torch import Tensor

from . import _pairwise as P

__all__ = ["pairwise_sq_distances"]

_INF = float("inf")


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


def scores(D: Tensor, k: int, alive: Tensor | None = None) -> Tensor:
    """Sum of the ``k`` smallest distances to other (alive) rows: ``Tensor[n]``."""
    Dx = D.clone()
    Dx.fill_diagonal_(_INF)
    if alive is not None:
        Dx.masked_fill_(~alive[None, :], _INF)
    if k <= 0:
        return torch.zeros(D.shape[0], dtype=D.dtype, device=D.device)
    return Dx.topk(k, dim=1, largest=False).values.sum(dim=1)


def rank_key(scores: Tensor, candidates: Tensor) -> Tensor:
    """Sort key: candidates by score (an infinite score becomes the largest finite value, so that
    candidates always rank before non-candidates, whose key is +inf)."""
    big = torch.finfo(scores.dtype).max
    s = torch.where(torch.isinf(scores) | torch.isnan(scores), torch.full_like(scores, big), scores)
    return torch.where(candidates, s, torch.full_like(scores, _INF))
