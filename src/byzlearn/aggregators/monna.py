"""MoNNA, the mean of the nearest neighbours of a trusted vector (Farhadkhani, Guerraoui, Gupta,
Hoang, Pinot, Stephan, "Robust collaborative learning with linear gradient overhead", ICML 2023).

MoNNA is the peer-to-peer rule of that paper: an honest node ``idx`` averages the ``n - f`` vectors
nearest to its own (trusted) vector ``x_idx``, itself included. The maths (function) and the
registered object live together, like the other rule modules; ByzFL 0.0.11 ``MoNNA(f, idx)`` is
the same rule (its tie order, ``argpartition``, is unspecified; ours is stated below).
"""

import math

import torch
from torch import Tensor

from ..registry import ConfigError
from ._finite import big_row_parts, check_batch, check_f, compute_dtype, finite_rows, mean_rows
from .base import AGGREGATORS, AggregationContext, Aggregator
from .requirements import HALF

__all__ = ["monna", "monna_neighbours", "MoNNA"]

REQUIRES = HALF  # f < n/2; idx < n is checked beside it (it depends on idx, not on f)


def _check_idx(idx: int, n: int, who: str) -> None:
    if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < n:
        raise ValueError(f"{who} requires 0 <= idx < n (n={n}, idx={idx!r})")


def _distance_key(G: Tensor, idx: int, finite: Tensor) -> Tensor:
    """Sort key ``Tensor[n]`` (float64): ``||x_i - x_idx||`` for finite rows, ``+inf`` for non-finite
    rows, ``-1`` for ``idx`` itself.

    Computed in the input dtype (float32 for float16/bfloat16). Rows whose difference or its norm
    overflows, or whose squared distance may underflow (distance below ``sqrt(tiny) / eps``), are
    recomputed in float64 as ``2 m ||y / m||`` on the halved differences ``y`` (``m = max |y_j|``:
    no overflow or underflow). A distance still beyond float64 becomes its largest finite value,
    so that finite rows rank before non-finite ones. With a non-finite ``x_idx`` no distance
    exists: every finite row gets that largest value.
    """
    n = G.shape[0]
    big = torch.finfo(torch.float64).max
    if not bool(finite[idx]):
        key = torch.full((n,), big, dtype=torch.float64, device=G.device)
    else:
        X = G.to(compute_dtype(G.dtype))
        dist = torch.linalg.vector_norm(X - X[idx], dim=1)
        info = torch.finfo(X.dtype)
        key = dist.to(torch.float64)
        suspect = finite & ~(torch.isfinite(dist) & (dist >= math.sqrt(info.tiny) / info.eps))
        suspect[idx] = False
        if bool(suspect.any()):  # rare: only those rows, in float64
            rows = torch.nonzero(suspect).flatten()
            m, nu = big_row_parts(G[rows].to(torch.float64) * 0.5 - G[idx].to(torch.float64) * 0.5)
            key[rows] = 2.0 * m * nu
        key = key.nan_to_num(nan=big, posinf=big)
    key = torch.where(finite, key, math.inf)
    key[idx] = -1.0  # the trusted vector is always one of its own neighbours
    return key


def _neighbours(G: Tensor, f: int, idx: int) -> tuple[Tensor, Tensor]:
    n, _ = check_batch(G, "monna")
    check_f(f, "monna")
    REQUIRES.check("monna", n, f)
    _check_idx(idx, n, "monna")
    finite = finite_rows(G)
    return torch.argsort(_distance_key(G, idx, finite), stable=True)[: n - f], finite


def monna_neighbours(G: Tensor, f: int, idx: int = 0) -> Tensor:
    """The ``n - f`` row indices MoNNA averages (``LongTensor``, nearest first): the rows nearest to
    ``x_idx`` in Euclidean distance, ``idx`` first, ties towards the lowest index, non-finite rows
    (infinitely far) last. See :func:`monna`."""
    return _neighbours(G, f, idx)[0]


def monna(G: Tensor, f: int, idx: int = 0) -> Tensor:
    """MoNNA (Farhadkhani et al., ICML 2023) of ``G: Tensor[n, d]`` around the trusted row ``idx``.

    ``N`` = the ``n - f`` rows with the smallest ``||x_i - x_idx||_2`` (``x_idx`` included);
    output ``(1/(n-f)) sum_{i in N} x_i``. Requires ``f < n/2`` and ``0 <= idx < n`` (ByzFL's
    checks; the paper's guarantee needs ``x_idx`` honest, which no rule can check). O(nd).

    Ties: equally distant rows are taken lowest index first (ByzFL's ``argpartition`` leaves the
    choice unspecified). Non-finite rows (NaN/±inf entries) are infinitely far: they enter ``N``
    only when more than ``f`` rows are non-finite, and are then left out of the average (it is
    taken over the finite members of ``N``). Finite rows keep their real distances up to the
    dtype's maximum (see ``_distance_key``). A non-finite ``x_idx`` has no distances: ``N`` is then
    ``idx`` and the lowest-index finite rows, and the output the mean of those finite rows.
    float16/bfloat16 are computed in float32 and returned in their dtype; the mean does not
    overflow (``_finite.mean_rows``).
    """
    N, finite = _neighbours(G, f, idx)
    kept = N[finite[N]]
    return mean_rows(G[kept] if kept.numel() else G[N])


@AGGREGATORS.register("monna")
class MoNNA(Aggregator):
    """MoNNA (Farhadkhani et al. 2023): the mean of the n-f rows nearest to the trusted row idx; needs f < n/2, idx < n."""

    name = "monna"
    requires = REQUIRES

    def __init__(self, f: int = 0, idx: int = 0):
        super().__init__(f)
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ConfigError(f"aggregator.idx must be a non-negative integer (the trusted row), got {idx!r}")
        self.idx = idx

    def requirement(self, n: int) -> str | None:
        problem = super().requirement(n)
        if problem is None and not self.idx < n:
            problem = f"idx < n (n={n}, idx={self.idx})"
        return problem

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return monna(G, self.f, self.idx)

    def __repr__(self) -> str:
        return f"MoNNA(f={self.f}, idx={self.idx})"
