"""Spectral filters: CAF (Allouah, Guerraoui, Stephan, ICML 2025) and SMEA (Allouah et al., ICML 2023),
the maths and the registered objects side by side.

Both rules look at the largest eigenvalue of an empirical covariance. It is computed exactly in
``n x n`` Gram space: ``sum_i c_i D_i D_i^T / sum(c)`` (``D_i = x_i - mu_c``) has the nonzero
eigenvalues of ``W^{1/2} K_D W^{1/2}``, ``W = diag(c) / sum(c)``, where ``K_D`` is the Gram of the
centred rows, obtained from ONE Gram ``K`` of the rows (``_pairwise.distance_gram``; any
translation of the rows gives the same ``K_D``) as ``K_D = (I - 1 a^T) K (I - a 1^T)``,
``a = c / sum(c)``. The d-dimensional eigenvector is ``D^T W^{1/2} u / sqrt(lambda)`` and the
projections ``D_i . v = (K_D W^{1/2} u)_i / sqrt(lambda)`` need no d-sized work. The n x n work is
float64 on the CPU; ``d`` is touched by the Gram and the final weighted mean only.

``power = "byzfl"`` replaces the eigenpair by ByzFL 0.0.11's single power step from a random
``v0 ~ N(0, I_d)`` (drawn with ``torch.randn(d, generator=...)`` in torch's default dtype, as ByzFL
draws ``torch.randn(d)``: with a generator seeded like torch's global one the vectors are the same
bits); it costs one ``G @ v0`` per draw. At ``d = 1`` both modes coincide.

Conventions of the distance rules hold (dtypes, hostile values, requirement errors): non-finite
rows (or rows whose rescaled squared norm overflows float64) are infinitely far, i.e. weight 0 from
the start in CAF and never in SMEA's subset; with at most ``f`` of them the output is finite.
"""

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from ..registry import ConfigError
from . import _pairwise as P
from .base import AGGREGATORS, AggregationContext, Aggregator, config_int
from .requirements import HALF, Requirement

__all__ = ["caf", "caf_weights", "smea", "smea_subset", "CAF", "SMEA", "CAF_MAX_ITER", "SMEA_MAX_SUBSETS"]

_F64 = torch.float64
CAF_MAX_ITER = 1000  # iterations of CAF at most (ByzFL has no cap; see caf)
SMEA_MAX_SUBSETS = 2_000_000  # C(n, f) subsets at most
_SMEA_CHUNK = 1 << 20  # matrix elements per batch of subset Gram matrices
CAF_REQUIRES = HALF
SMEA_REQUIRES = Requirement(
    f"f < n/2 and C(n, f) <= {SMEA_MAX_SUBSETS:,} (SMEA enumerates every (n-f)-subset; for more use caf)",
    lambda n, f: 2 * f < n and math.comb(n, f) <= SMEA_MAX_SUBSETS,
)


def _check_power(power: str, generator, who: str) -> None:
    if power not in ("exact", "byzfl"):
        raise ValueError(f"{who}: power must be 'exact' (the exact eigenpair) or 'byzfl' (ByzFL's one random power step), got {power!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{who}: generator must be a torch.Generator or None, got {type(generator).__name__}")


def _gram(G: Tensor) -> tuple[Tensor, Tensor, float, bool]:
    """``(K, finite, s, wide)``: the Gram of ``s * G`` up to a translation, float64 on the CPU."""
    K, finite, s, wide = P.distance_gram(G)
    return K.detach().to("cpu", _F64), finite.detach().cpu(), s, wide


class _Projector:
    """``v0 -> (s x_i) . v0`` for the finite rows (0 elsewhere), float64 on the CPU, one ``G @ V`` per call."""

    def __init__(self, G: Tensor, finite: Tensor, s: float, wide: bool, generator):
        self.n, self.d = G.shape
        self.gen, self.dev = generator, generator.device if generator is not None else torch.device("cpu")
        self.idx = torch.nonzero(finite).flatten()
        X = G.detach() if bool(finite.all()) else G.detach()[self.idx.to(G.device)]
        if wide or G.dtype in P.LOW_PRECISION:  # hostile magnitudes: products in the wide dtype, on s * G
            X = X.to(P.wide_dtype(G.dtype)) * s
        self.X = X

    def draw(self) -> Tensor:
        """One ByzFL draw: ``torch.randn(d)`` (default dtype), normalised, as float64."""
        v = torch.randn(self.d, generator=self.gen, device=self.dev).to(_F64)
        return v / torch.linalg.vector_norm(v)

    def __call__(self, V: Tensor) -> Tensor:
        """``V: Tensor[k, d]`` -> ``Tensor[n, k]`` of the projections."""
        out = torch.zeros(self.n, V.shape[0], dtype=_F64)
        out[self.idx] = (self.X @ V.to(self.X.device, self.X.dtype).T).to("cpu", _F64)
        return out


# =====================================================================================================
# CAF: covariance-bound agnostic filter
# =====================================================================================================


def caf_weights(
    G: Tensor, f: int, power: str = "exact", generator: torch.Generator | None = None, max_iter: int = CAF_MAX_ITER, tau_max: str = "all"
) -> tuple[Tensor, list[float]]:
    """``(a, lams)``: CAF's output weights ``Tensor[n]`` (float64, CPU; the output is ``a^T G``) and the
    largest eigenvalue (``power = "byzfl"``: ByzFL's estimate) of every iteration, in ``G``'s units.
    See :func:`caf`."""
    n, d = P.check_batch(G, "caf")
    P.check_f(f, "caf")
    CAF_REQUIRES.check("caf", n, f)
    _check_power(power, generator, "caf")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"caf: max_iter must be a non-negative integer, got {max_iter!r}")
    if tau_max not in ("all", "active"):
        raise ValueError(f"caf: tau_max must be 'all' (max over every row, ByzFL) or 'active' (rows of positive weight), got {tau_max!r}")
    K, finite, s, wide = _gram(G)
    project = _Projector(G, finite, s, wide, generator) if power == "byzfl" else None
    c = finite.to(_F64)  # non-finite rows: weight 0 from the start
    if float(c.sum()) == 0:
        return torch.full((n,), math.nan, dtype=_F64), []
    best, lam_best, lams = c / c.sum(), math.inf, []
    while float(c.sum()) > n - 2 * f and len(lams) < max_iter:
        a = c / c.sum()
        Ka = K @ a
        KD = K - Ka[:, None] - Ka[None, :] + a @ Ka  # Gram of the rows centred at mu_c = a^T G
        if project is None:  # exact top eigenpair of W^1/2 K_D W^1/2
            r = a.sqrt()
            evals, evecs = torch.linalg.eigh(r[:, None] * KD * r[None, :])
            lam = max(float(evals[-1]), 0.0)
            proj2 = (KD @ (r * evecs[:, -1])).square()  # (D_i . v)^2 * lambda
        else:  # ByzFL: w = Sigma_c v0, lambda = |w|, v = w / |w|
            q = project(project.draw()[None, :])[:, 0]
            y = a * (q - a @ q)  # a_i D_i . v0
            Ky = KD @ y
            lam = math.sqrt(max(float(y @ Ky), 0.0))
            proj2 = Ky.square()  # (D_i . w)^2 = (D_i . v)^2 * lambda^2
        lams.append(lam / (s * s))
        if lam < lam_best:
            lam_best, best = lam, a
        if not lam > 0:  # Sigma_c = 0 (every weighted row at mu_c): nothing left to filter
            break
        tau = torch.where(finite, proj2, 0.0)  # projections scaled by a constant: tau / tau_max is unchanged
        top = tau.max() if tau_max == "all" else tau[c > 0].max()
        if not float(top) > 0:
            break
        c_next = c * (1.0 - tau / top)
        if project is None and torch.equal(c_next, c):  # a fixed point in floating point: it would repeat forever
            break
        c = c_next
    return best, lams


def caf(
    G: Tensor, f: int, power: str = "exact", generator: torch.Generator | None = None, max_iter: int = CAF_MAX_ITER, tau_max: str = "all"
) -> Tensor:
    """CAF, the covariance-bound agnostic filter (Allouah, Guerraoui, Stephan, ICML 2025, Algorithm 2;
    ByzFL 0.0.11 ``CAF(f)``). Requires ``f < n/2``.

    ``c = 1``; while ``sum(c) > n - 2f``: ``mu_c = sum_i c_i x_i / sum(c)``, ``(lambda, v)`` the top
    eigenpair of ``Sigma_c = sum_i c_i (x_i - mu_c)(x_i - mu_c)^T / sum(c)``,
    ``tau_i = ((x_i - mu_c) . v)^2``, ``c_i <- c_i (1 - tau_i / max_j tau_j)``; return the ``mu_c``
    of the smallest ``lambda`` met (ties: the first).

    What we could check of the paper: its Algorithm 2 takes ``x_1..x_n`` and ``0 <= f < n/2`` (the
    acmrep reproducibility record of the ICML paper); ByzFL's documentation (the authors' library)
    states the dominant eigenvector and maximum eigenvalue of ``Sigma_c`` ("using the power
    method") and ``max_j tau_j``; the paper's own text was not reachable, so the exact eigenpair
    (default) is our reading of it and ``max_j`` over every row (ByzFL's code) is kept as default.

    - ``power = "exact"`` (default): the exact eigenpair, in Gram space (module docstring), O(n^3)
      per iteration after one Gram. ``"byzfl"``: ByzFL's single power step from one
      ``v0 ~ N(0, I_d)`` per iteration (from ``generator``; torch's default generator when None),
      ``lambda = |Sigma_c v0|`` and ``v = Sigma_c v0 / lambda``; its output is random.
    - ``tau_max = "all"`` (default, ByzFL): the max runs over every row, zero-weight rows included.
      Then the loop is not bounded by ``f``: a zero-weight far row keeps the largest ``tau`` and the
      weights shrink by a factor ``1 - lambda / tau_max`` only (1 - 1e-12 for a row 1e6 away), so
      it is capped at ``max_iter`` iterations (default ``CAF_MAX_ITER`` = 1000; the spec's worked
      example needs 37) and also stops at a floating-point fixed point (exact mode: the weights no
      longer change, every further iteration would be the same). With two far rows of very
      different sizes the cap can leave the smaller one in. ``"active"``: the max over rows of
      positive weight (the classic weighted filter): each iteration zeroes a weighted row, so it
      stops after at most ``2f`` iterations.
    - ``f = 0``: the loop does not run and the output is the mean (ByzFL returns None). ``lambda = 0``
      (all weighted rows equal): that mean is returned (ByzFL divides 0 by 0).
    - Non-finite rows get weight 0 from the start and are left out of ``max_j tau_j``.
    """
    a, _ = caf_weights(G, f, power, generator, max_iter, tau_max)
    if not bool(torch.isfinite(a).all()):
        return torch.full((G.shape[1],), math.nan, dtype=G.dtype, device=G.device)
    return P.weighted_rows(G, a.to(G.device), P.finite_rows(G))


# =====================================================================================================
# SMEA: smallest maximum eigenvalue averaging
# =====================================================================================================


def _subset_batches(n: int, m: int, size: int):
    """The ``m``-subsets of ``range(n)`` in ``itertools.combinations`` order, as ``LongTensor[B, m]`` batches of ``size``."""
    combos = itertools.combinations(range(n), m)
    while True:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, size)), dtype=np.int64)
        if flat.size == 0:
            return
        yield torch.from_numpy(flat.reshape(-1, m))


def smea_subset(G: Tensor, f: int, power: str = "exact", generator: torch.Generator | None = None) -> tuple[list[int], float]:
    """``(S, lam)``: SMEA's subset (sorted row indices) and its criterion (``lambda_max`` of the
    covariance of ``X_S``, or ByzFL's estimate divided by ``|S|`` for ``power = "byzfl"``), in ``G``'s
    units. See :func:`smea`."""
    n, d = P.check_batch(G, "smea")
    P.check_f(f, "smea")
    SMEA_REQUIRES.check("smea", n, f)
    _check_power(power, generator, "smea")
    m = n - f
    K, finite, s, wide = _gram(G)
    if int(finite.sum()) < m:  # more than f non-finite rows: no finite subset exists
        return torch.nonzero(finite).flatten().tolist(), math.nan
    project = _Projector(G, finite, s, wide, generator) if power == "byzfl" else None
    best, best_lam = None, math.inf
    size = max(1, _SMEA_CHUNK // (m * m))
    if project is not None:  # the draws V: Tensor[size, d] too
        size = min(size, max(1, _SMEA_CHUNK // max(d, 1)))
    for S in _subset_batches(n, m, size):
        ok = finite[S].all(dim=1)
        if project is not None:  # one draw per subset, every subset (ByzFL's stream), in order
            V = torch.stack([project.draw() for _ in range(S.shape[0])])
        if not bool(ok.any()):
            continue
        S = S[ok]
        Kb = K[S[:, :, None], S[:, None, :]]
        Kc = Kb - Kb.mean(dim=1, keepdim=True) - Kb.mean(dim=2, keepdim=True) + Kb.mean(dim=(1, 2), keepdim=True)
        if project is None:
            lam = torch.linalg.eigvalsh(Kc)[:, -1]
        else:  # ByzFL: |sum_{i in S} D_i (D_i . v0)|
            Q = torch.gather(project(V[ok]), 0, S.T).T  # Q[b, i] = x_{S_bi} . v0_b
            Q = Q - Q.mean(dim=1, keepdim=True)
            lam = torch.einsum("bi,bij,bj->b", Q, Kc, Q).clamp_min(0.0).sqrt()
        j = int(torch.argmin(lam))  # the first minimum of the batch
        if float(lam[j]) < best_lam:  # strict: the first minimum over all subsets
            best, best_lam = S[j].tolist(), float(lam[j])
    return best, best_lam / m / (s * s)


def smea(G: Tensor, f: int, power: str = "exact", generator: torch.Generator | None = None) -> Tensor:
    """SMEA, smallest maximum eigenvalue averaging (Allouah et al., "On the privacy-robustness-utility
    trilemma in distributed learning", ICML 2023; ByzFL 0.0.11 ``SMEA(f)``).

    Over every subset ``S`` of ``n - f`` rows, in ``itertools.combinations`` order, take the one with
    the smallest ``lambda_max`` of the empirical covariance of ``X_S`` (ties: the first such subset)
    and return the mean of its rows. Requires ``f < n/2`` and ``C(n, f) <= SMEA_MAX_SUBSETS``
    (2,000,000; beyond it the enumeration is refused: use fewer workers, a smaller f, or ``caf``).

    ``power = "exact"`` (default, the paper's criterion): ``lambda_max`` of the centred
    ``(n-f) x (n-f)`` Gram of ``X_S`` taken from the one ``n x n`` Gram, by batched ``eigvalsh`` in
    chunks of about 2^20 matrix elements: O(C(n, f) (n - f)^3) after one O(n^2 d) Gram.
    ``"byzfl"``: ByzFL's estimate ``|sum_{i in S} D_i (D_i . v0)|`` with a fresh normalised
    ``v0 ~ N(0, I_d)`` per subset (from ``generator``), at most the exact value: its choice is random
    and can differ; it costs one ``G @ V`` per chunk (O(C(n, f) n d) in all, as ByzFL).
    Subsets with a non-finite row are never chosen (a ByzFL draw is still consumed for them); with
    more than ``f`` non-finite rows the output is the mean of the finite rows.
    """
    S, _ = smea_subset(G, f, power, generator)
    n = G.shape[0]
    if not S:
        return torch.full((G.shape[1],), math.nan, dtype=G.dtype, device=G.device)
    w = torch.zeros(n, dtype=_F64)
    w[torch.tensor(S)] = 1.0 / len(S)
    return P.weighted_rows(G, w.to(G.device), P.finite_rows(G))


# =====================================================================================================
# registered objects
# =====================================================================================================


def _config_power(power) -> None:
    if power not in ("exact", "byzfl"):
        raise ConfigError(f"aggregator.power must be 'exact' (exact eigenpair) or 'byzfl' (ByzFL's random power step), got {power!r}")


@AGGREGATORS.register("caf")
class CAF(Aggregator):
    """CAF (Allouah, Guerraoui, Stephan 2025): filter weights along the top eigenvector until n-2f weight remains; needs f < n/2."""

    name = "caf"
    requires = CAF_REQUIRES

    def __init__(self, f: int = 0, power: str = "exact", max_iter: int = CAF_MAX_ITER, tau_max: str = "all"):
        super().__init__(f)
        _config_power(power)
        config_int(max_iter, "max_iter", 1)
        if tau_max not in ("all", "active"):
            raise ConfigError(f"aggregator.tau_max must be 'all' (ByzFL: every row) or 'active' (rows of positive weight), got {tau_max!r}")
        self.power, self.max_iter, self.tau_max = power, max_iter, tau_max

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return caf(G, self.f, self.power, ctx.generator, self.max_iter, self.tau_max)

    def __repr__(self) -> str:
        return f"CAF(f={self.f}, power={self.power!r}, max_iter={self.max_iter}, tau_max={self.tau_max!r})"


@AGGREGATORS.register("smea")
class SMEA(Aggregator):
    """SMEA (Allouah et al. 2023): mean of the (n-f)-subset whose covariance has the smallest top eigenvalue; needs f < n/2."""

    name = "smea"
    requires = SMEA_REQUIRES

    def __init__(self, f: int = 0, power: str = "exact"):
        super().__init__(f)
        _config_power(power)
        self.power = power

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return smea(G, self.f, self.power, ctx.generator)

    def __repr__(self) -> str:
        return f"SMEA(f={self.f}, power={self.power!r})"
