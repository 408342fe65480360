"""Nearest-neighbour mixing (Allouah, Farhadkhani, Guerraoui et al., AISTATS 2023): the pre-aggregation and its object.

Conventions (dtypes, non-finite rows, ties) are those of ``distance``.
"""

import torch
from torch import Tensor

from ..registry import ConfigError
from . import _pairwise as P
from ._finite import compute_dtype
from .base import PREAGGREGATORS, AggregationContext, PreAggregator
from .distance import _distances_wide
from .requirements import HALF

__all__ = ["nnm", "nnm_mixing_matrix", "NNM"]


def nnm_mixing_matrix(G: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """``(M, finite)``: row i of ``M`` has ``1/(n-f)`` on the n-f nearest rows to ``x_i``, itself
    first (ties: lowest index). Requires ``f < n/2``."""
    return _nnm_matrix(G, f)[:2]


def _nnm_matrix(G: Tensor, f: int) -> tuple[Tensor, Tensor, bool]:
    n, _ = P.check_batch(G, "nnm")
    P.check_f(f, "nnm")
    HALF.check("nnm", n, f)
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


@PREAGGREGATORS.register("nnm")
class NNM(PreAggregator):
    """Nearest-neighbour mixing (Allouah et al. 2023): each row becomes the mean of its n-f nearest rows."""

    name = "nnm"
    requires = HALF

    def __init__(self, f: int = 0):
        if isinstance(f, bool) or not isinstance(f, int) or f < 0:
            raise ConfigError(f"nnm.f must be a non-negative integer, got {f!r}")
        super().__init__(f)

    def output_count(self, n: int) -> int:
        return n

    def __call__(self, G: Tensor, ctx: AggregationContext | None = None) -> Tensor:
        return nnm(G, self.f)
