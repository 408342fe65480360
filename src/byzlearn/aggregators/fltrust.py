"""FLTrust (Cao, Fang, Liu & Gong, NDSS 2021, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", Algorithms 1-2).

The server keeps a small clean root set and computes its own update ``g0`` on it each round, with the
clients' local procedure. Each client's update ``g_i`` gets the trust score
``TS_i = ReLU(cos(g_i, g0))``, is rescaled to the server's norm, ``g_i * ||g0|| / ||g_i||``, and the
aggregate is the TS-weighted mean of the rescaled updates.

Sign convention: byzlearn's rows are pseudo-gradients (the server steps ``theta - lr * aggregate``:
a gradient, a momentum, or FedAvg's ``w_start - w_end``), so ``g0`` must be the server's
pseudo-gradient computed the same way; the engine's ``AggregationContext.public_update`` is exactly
that (the server's message on a fresh public minibatch, as an honest worker would send it). Cosines
and the rule are unchanged if every row and ``g0`` are negated together (deltas ``w_end - w_start``
added with ``+lr``, the unofficial zhmzm/FLTrust_pytorch convention); mixing the two conventions
gives every honest row a negative cosine.

Choices where the paper is silent: ``sum TS = 0`` (no row points within 90 degrees of ``g0``) returns
the zero update; a row with NaN/±inf, or of norm 0, gets ``TS = 0``; a ``g0`` that is zero or not
finite trusts no row (zero update). Cosines and the weights are computed in float64 on rows scaled
by their largest entry, so huge finite rows neither overflow nor lose their direction; the weighted
sum never multiplies a non-finite row. float16/bfloat16 are computed in float32 and returned in their
dtype. No ``f`` is needed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..registry import ConfigError
from ._finite import LOW_PRECISION, big_row_parts, check_batch, finite_rows, row_norms
from ._pairwise import weighted_rows
from .base import AGGREGATORS, AggregationContext, Aggregator
from .requirements import ANY

__all__ = ["fltrust", "fltrust_weights", "FLTrust"]


def _unit(v: Tensor) -> tuple[Tensor, float]:
    """``(v / ||v||, ||v||)`` in float64 without overflow (``||v||`` may be inf beyond float64's range)."""
    m, nu = big_row_parts(v.reshape(1, -1))
    m, nu = float(m[0]), float(nu[0])
    if m == 0:
        return torch.zeros_like(v, dtype=torch.float64), 0.0
    return (v.double() / m) / nu, m * nu


def _weights(G: Tensor, g0: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """``(TS, w, norms, ||g0||)``, float64; see :func:`fltrust_weights`."""
    n, d = check_batch(G, "fltrust")
    g0 = torch.as_tensor(g0).to(device=G.device).reshape(-1)
    if g0.numel() != d:
        raise ValueError(f"fltrust: the server update g0 has {g0.numel()} entries but the rows have {d}")
    X = G.float() if G.dtype in LOW_PRECISION else G
    norms = row_norms(X).double()
    zero = torch.zeros(n, dtype=torch.float64, device=G.device)
    u0, n0 = _unit(g0) if bool(torch.isfinite(g0).all()) else (None, 0.0)
    if u0 is None or n0 == 0:  # no trustworthy reference direction
        return zero, zero.clone(), norms, 0.0
    finite = finite_rows(X)
    dots = (X @ u0.to(X.dtype)).double()  # |u0| = 1: no overflow unless a row's own norm overflows
    cos = dots / torch.where(norms > 0, norms, torch.ones_like(norms))
    # rows whose norm or dot overflowed (or whose squares underflowed to a norm of 0): scaled, in float64
    redo = finite & (~torch.isfinite(norms) | ~torch.isfinite(cos) | (norms == 0))
    if bool(redo.any()):
        idx = torch.nonzero(redo).flatten()
        m, nu = big_row_parts(X[idx])
        safe_m = torch.where(m > 0, m, torch.ones_like(m))
        safe_nu = torch.where(nu > 0, nu, torch.ones_like(nu))
        cos[idx] = torch.where(m > 0, ((X[idx].double() / safe_m[:, None]) @ u0) / safe_nu, torch.zeros_like(m))
        norms[idx] = m * nu
    cos = torch.where(finite & (norms > 0), cos, torch.zeros_like(cos)).clamp(max=1.0)
    ts = cos.clamp(min=0.0)
    total = float(ts.sum())
    if total == 0:
        return ts, zero.clone(), norms, n0
    # w_i = TS_i * n0 / (l_i * sum TS), as (TS_i / sum TS) * (n0 / l_i): no intermediate overflow
    w = (ts / total) * (n0 / torch.where(ts > 0, norms, torch.ones_like(norms)))
    return ts, torch.where(ts > 0, w, torch.zeros_like(w)), norms, n0


def fltrust_weights(G: Tensor, g0: Tensor) -> tuple[Tensor, Tensor]:
    """``(TS, w)``, float64 ``Tensor[n]``: the trust scores ``ReLU(cos(g_i, g0))`` and the weights with
    ``fltrust(G, g0) = sum_i w_i g_i``, ``w_i = TS_i ||g0|| / (||g_i|| sum_j TS_j)`` (all zero when ``sum TS = 0``)."""
    ts, w, _, _ = _weights(G, g0)
    return ts, w


def fltrust(G: Tensor, g0: Tensor) -> Tensor:
    """FLTrust (Cao et al., NDSS 2021, Alg. 2): ``sum_i TS_i (||g0|| / ||g_i||) g_i / sum_i TS_i`` -> ``Tensor[d]``.

    ``G: Tensor[n, d]`` the clients' updates, ``g0: Tensor[d]`` the server's update on its root set,
    in the same convention (pseudo-gradients in byzlearn; module docstring). ``TS_i = ReLU(cos(g_i, g0))``;
    a row with NaN/±inf or of norm 0 has ``TS = 0``; ``sum TS = 0`` (or ``g0`` zero / not finite)
    gives the zero vector. The output's norm is at most ``||g0||``.
    """
    ts, w, norms, n0 = _weights(G, g0)
    trusted = ts > 0
    if not bool(trusted.any()):
        return torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
    tiny = torch.finfo(G.dtype).tiny
    if bool(torch.isfinite(norms[trusted]).all()) and not bool((w[trusted] < tiny).any()):
        return weighted_rows(G, w, finite_rows(G))
    # huge rows (weights below the dtype's normal range, or norms beyond float64): unit rows in float64
    idx = torch.nonzero(trusted).flatten()
    m, nu = big_row_parts(G[idx])
    U = (G[idx].double() / m[:, None]) / nu[:, None]
    return (((ts[idx] / float(ts.sum())) * n0) @ U).to(G.dtype)


@AGGREGATORS.register("fltrust")
class FLTrust(Aggregator):
    """FLTrust (Cao et al. 2021): weight each row by ReLU(cos(row, server update)), rescaled to the server's norm; no f.

    Needs the server's own update on its root set every round: ``ctx.public_update()`` (the engine's
    update on a fresh public minibatch, so a run needs ``data.public_size > 0``; the paper uses a root
    set of about 100 examples). ``needs_public_update``: engines that cannot compute it refuse the rule
    before training.
    """

    name = "fltrust"
    requires = ANY
    needs_public_batch = True
    needs_public_update = True  # reads ctx.public_update: the server's own update on its root set

    def __init__(self, f: int = 0):
        super().__init__(f)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        if ctx.public_update is None:
            raise ConfigError(
                "fltrust needs the server's own update on its root set (AggregationContext.public_update): "
                "run it in the byzlearn simulator or parameter server with data.public_size > 0"
            )
        g0 = torch.as_tensor(ctx.public_update()).detach().to(device=G.device).reshape(-1)
        if g0.numel() != G.shape[1]:
            raise ValueError(f"fltrust: public_update returned {g0.numel()} entries for rows of {G.shape[1]}")
        return fltrust(G, g0)
