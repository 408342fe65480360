"""Rules iterated in Gram space: the geometric median (Weiszfeld, smoothed Weiszfeld; RFA) and centered
clipping (Karimireddy, He, Jaggi, ICML 2021), the maths and the registered objects side by side.

Functional core (re-exported by ``aggregators.functional``):

- :func:`geometric_median` ``(G, eps, max_iter, nu, weights, f)``
- :func:`centered_clipping` ``(G, center, tau, iters, f)``

Both keep their iterate as a combination ``w^T G`` of the rows, so every iteration costs O(n^2) on one
Gram matrix (``_pairwise``) and ``d`` is touched by that matrix and the final combination only. The
conventions of ``distance`` (dtypes, non-finite rows, requirement errors) hold here too.
"""

import math
from typing import Any

import torch
from torch import Tensor

from ..registry import ConfigError
from . import _pairwise as P
from ._finite import LOW_PRECISION, all_finite
from .base import AGGREGATORS, AggregationContext, Aggregator, config_float, config_int
from .requirements import HALF

__all__ = ["geometric_median", "centered_clipping", "GeometricMedian", "CenteredClipping"]


# =====================================================================================================
# Geometric median (Weiszfeld, smoothed Weiszfeld) in Gram space
# =====================================================================================================


def geometric_median(
    G: Tensor,
    eps: float = 1e-6,
    max_iter: int = 100,
    nu: float = 0.0,
    weights: Tensor | None = None,
    f: int | None = None,
    init: str = "mean",
) -> Tensor:
    """Geometric median ``argmin_z sum_i a_i |z - x_i|`` by Weiszfeld's algorithm.

    - Initialisation: the (weighted) mean of the finite rows (as RFA and the geom_median package).
    - ``nu = 0``: Weiszfeld with the Vardi-Zhang step when ``z`` lands on data points (within
      rounding: ``|z - x_k|^2 <= 16 eps_dtype (|x_k - c|^2 + |z - c|^2)``); if the pull of the other
      points does not exceed the coinciding weight, that point is the median and the loop stops.
    - ``nu > 0``: smoothed Weiszfeld (RFA, Pillutla et al.): ``beta_i = a_i / max(nu, |z - x_i|)``.
    - Stops when the relative change of the objective ``sum_i a_i |z - x_i|`` is below ``eps``, or
      after ``max_iter`` iterations (``max_iter = 0`` returns the initial point: the mean, or the
      medoid when there are far rows).
    - Far rows (ours): when some row lies more than ``_FAR`` times the weighted median distance from
      the medoid, the objective is dominated by the far rows and its relative change is tiny long
      before ``z`` has converged (the far rows then drag ``z`` by an amount growing with their
      distance). Then the iterations start at the medoid and the stopping test reads the relative
      change of the objective over the other rows only (every row still pulls ``z``), with the
      objective's decrease computed without cancellation; the result no longer depends on how far
      the far rows are. Batches without far rows run the plain algorithm above, bit for bit.
    - ``weights``: optional non-negative ``a_i`` (default 1). Non-finite rows get weight 0.
    - ``f``: optional; when given, checks the breakdown condition ``f < n/2``.
    - ``init = "zero"`` (ByzFL's ``GeometricMedian``, for comparisons with it): the iterations start at
      the origin, so the first step gives weights ``a_i / max(nu, |x_i|)``; with ``max_iter = 3``,
      ``nu = 0.1``, ``eps = 0`` this is ByzFL's default ``T = 3`` fixed iterations (``max_iter = 0``
      returns the origin). Not robust as a median: three steps from 0 are a reweighted mean.

    All iterations run in Gram space: ``z = w^T G`` stays a convex combination of the rows, so
    ``|z - x_i|^2 = w^T K w - 2 (K w)_i + K_ii`` with the centred Gram ``K``; the iterations cost
    O(n^2) each (in float64) and ``d`` is touched only by ``K`` and the final ``w^T G``.
    """
    n, d = P.check_batch(G, "geometric_median")
    if f is not None:
        P.check_f(f, "geometric_median")
        HALF.check("geometric_median", n, f)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"geometric_median: eps must be >= 0, got {eps!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"geometric_median: max_iter must be a non-negative integer, got {max_iter!r}")
    if not (isinstance(nu, (int, float)) and nu >= 0):
        raise ValueError(f"geometric_median: nu must be >= 0, got {nu!r}")
    if init not in ("mean", "zero"):
        raise ValueError(f"geometric_median: init must be 'mean' or 'zero' (ByzFL's start at the origin), got {init!r}")
    K, finite, s, _ = P.distance_gram(G)  # the Gram of s * G (s = 1 but for hostile float64 inputs)
    a = torch.ones(n, dtype=torch.float64)
    if weights is not None:
        weights = torch.as_tensor(weights).detach().to("cpu", torch.float64).flatten()
        if weights.shape != (n,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError(f"geometric_median: weights must be {n} finite non-negative numbers")
        a = weights.clone()
    a = a * finite.to("cpu", torch.float64)
    if float(a.sum()) <= 0:
        return torch.full((d,), float("nan"), dtype=G.dtype, device=G.device)
    idx = torch.nonzero(a > 0).flatten()
    a = a[idx]
    Kc = K.detach().to("cpu", torch.float64)[idx][:, idx]
    w0 = None
    if init == "zero":  # the first step from the origin, computed from the rows' own norms
        if max_iter == 0:
            return torch.zeros(d, dtype=G.dtype, device=G.device)
        r = torch.linalg.vector_norm(G.index_select(0, idx.to(G.device)).double() * s, dim=1).cpu()
        beta = a / r.clamp_min(max(nu * s, torch.finfo(torch.float64).tiny))
        w0, max_iter = beta / beta.sum(), max_iter - 1
    w = _weiszfeld_gram(Kc, a, eps, max_iter, nu * s, torch.finfo(K.dtype).eps, w0)
    w_full = torch.zeros(n, dtype=torch.float64)
    w_full[idx] = w
    return P.weighted_rows(G, w_full.to(G.device), finite)


# A row is "far" when its distance to the medoid exceeds _FAR times the weighted median distance (the
# committed reproductions' batches reach ~10 under sign flipping and ~1e4 under constant vectors).
_FAR = 100.0


def _far_rows(K: Tensor, a: Tensor) -> tuple[int, Tensor] | None:
    """``(medoid, far)`` when some row is far from the medoid (see ``_FAR``), else ``None``."""
    diag = K.diagonal()
    R = (diag[:, None] + diag[None, :] - 2.0 * K).clamp_min(0.0).sqrt()
    m = int(torch.argmin(R @ a))
    r = R[m]
    order = torch.argsort(r, stable=True)
    cum = torch.cumsum(a[order], 0)
    sigma = float(r[order][int(torch.searchsorted(cum, 0.5 * cum[-1]))])  # weighted lower median
    far = r > _FAR * sigma
    return (m, far) if bool(far.any()) else None


def _decrease(K: Tensor, a: Tensor, w: Tensor, w_new: Tensor, dst: Tensor, dst_new: Tensor) -> float:
    """``F(z) - F(z_new)`` summed from ``d_i - d_i' = (d_i^2 - d_i'^2) / (d_i + d_i')`` with the squared
    differences from the Gram (``dw^T K (w + w') - 2 (K dw)_i``): no cancellation of large distances."""
    dw = w - w_new
    Kdw = K @ dw
    num = Kdw @ (w + w_new) - 2.0 * Kdw
    den = dst + dst_new
    return float(a @ torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den)))


def _weiszfeld_gram(K: Tensor, a: Tensor, eps: float, max_iter: int, nu: float, eps_dtype: float, w0: Tensor | None = None) -> Tensor:
    diag = K.diagonal()

    def dist(w: Tensor) -> tuple[Tensor, Tensor]:
        Kw = K @ w
        zz = w @ Kw
        return (zz - 2.0 * Kw + diag).clamp_min(0.0).sqrt(), zz

    far = _far_rows(K, a) if K.shape[0] > 2 and w0 is None else None
    core = None if far is None else ~far[1]
    if w0 is not None:
        w = w0
    elif far is None:
        w = a / a.sum()
    else:  # far rows: start at the medoid, test convergence on the other rows (see geometric_median)
        w = torch.zeros_like(a)
        w[far[0]] = 1.0

    def objective(dst: Tensor) -> float:
        return float(a @ dst) if core is None else float(a[core] @ dst[core])

    dst, zz = dist(w)
    obj = objective(dst)
    for _ in range(max_iter):  # iterations on n x n matrices only
        if nu > 0:
            beta = a / dst.clamp_min(nu)
            w_new = beta / beta.sum()
        else:
            near = dst.square() <= 16.0 * eps_dtype * (diag + zz).clamp_min(0.0)
            if bool(near.any()):  # z sits on data point(s): Vardi-Zhang step
                far_ = ~near
                if not bool(far_.any()):
                    break
                eta = float(a[near].sum())
                beta = torch.where(far_, a / torch.where(far_, dst, torch.ones_like(dst)), torch.zeros_like(a))
                T = beta / beta.sum()
                diff = T - w
                r = float(beta.sum()) * math.sqrt(max(float(diff @ (K @ diff)), 0.0))
                if r <= eta:
                    break  # the coinciding point is the geometric median
                w_new = (1.0 - eta / r) * T + (eta / r) * w
            else:
                beta = a / dst
                w_new = beta / beta.sum()
        dst_new, zz_new = dist(w_new)
        obj_new = objective(dst_new)
        if nu == 0 and (obj_new > obj if core is None else _decrease(K, a, w, w_new, dst, dst_new) < 0):
            break  # Weiszfeld decreases the objective; an increase is rounding: keep the better point
        done = abs(obj - obj_new) <= eps * obj
        w, dst, zz, obj = w_new, dst_new, zz_new, obj_new
        if done:
            break
    return w


# =====================================================================================================
# Centered clipping
# =====================================================================================================


def centered_clipping(G: Tensor, center: Tensor | None = None, tau: float = 10.0, iters: int = 3, f: int | None = None) -> Tensor:
    """Centered clipping (Karimireddy, He, Jaggi, ICML 2021, "Learning from History").

    ``v_0 = center`` (zeros when None; the object passes the previous round's output),
    ``v_{l+1} = v_l + (1/n) sum_i clip_tau(x_i - v_l)``, ``clip_tau(z) = z min(1, tau/|z|)``,
    ``iters`` = L steps; returns ``v_L``. Non-finite rows contribute nothing (as if they had sent
    ``v_l``); the factor stays ``1/n``. ``f`` is optional: when given, checks ``f < n/2`` (the
    breakdown bound we enforce; the paper proves robustness for a small constant Byzantine
    fraction and we do not encode its constant).

    Runs in Gram space: ``v_l = v_0 + a_l^T (G - v_0)`` for a coefficient vector ``a_l``, so with
    ``K = (G - v_0)(G - v_0)^T`` (one GEMM, centred at ``v_0``) every step costs O(n^2):
    ``|x_i - v_l|^2 = K_ii - 2 (K a)_i + a^T K a`` and ``a_{l+1} = a_l (1 - sum_i c_i / n) + c / n``
    with ``c_i = min(1, tau / |x_i - v_l|)``. ``d`` is touched by ``K`` and the final
    ``v_0 (1 - sum a) + a^T G`` only, whatever ``iters``. A finite row clipped this way counts
    whatever its size: when ``K`` would overflow in the input dtype (or the dtype is float16/bfloat16)
    it is computed in a wider one (``_pairwise.wide_gram``, on ``s * G`` with ``tau * s``).
    """
    n, d = P.check_batch(G, "centered_clipping")
    if f is not None:
        P.check_f(f, "centered_clipping")
        HALF.check("centered_clipping", n, f)
    if not (isinstance(tau, (int, float)) and tau > 0):
        raise ValueError(f"centered_clipping: tau must be > 0, got {tau!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"centered_clipping: iters must be a non-negative integer, got {iters!r}")
    if center is None:
        v0 = torch.zeros(d, dtype=G.dtype, device=G.device)
    else:
        if tuple(center.shape) != (d,):
            raise ValueError(f"centered_clipping: center must have shape ({d},), got {tuple(center.shape)}")
        v0 = center.detach().to(dtype=G.dtype, device=G.device)
    if iters == 0:
        return v0.clone()
    s = 1.0
    if G.dtype in LOW_PRECISION:
        K, finite, s = P.wide_gram(G, v0)
    else:
        finite, _ = P.finite_norms(G)
        K, finite, _ = P.centered_gram(G, finite, v0)
        finite = finite & torch.isfinite(K.diagonal())
        if not P.gram_is_trusted(G, K, finite, v0):  # e.g. a finite row's squared distance overflows
            K, finite, s = P.wide_gram(G, v0)
    K = K.detach().to("cpu", torch.float64)
    fin = finite.to("cpu", torch.float64)
    tau = tau * s
    diag = K.diagonal()
    a = torch.zeros(n, dtype=torch.float64)
    for _ in range(iters):  # L steps on n x n matrices
        Ka = K @ a
        norms = (diag - 2.0 * Ka + a @ Ka).clamp_min(0.0).sqrt()
        c = torch.clamp(tau / norms, max=1.0) * fin  # |z| = 0: tau/0 = inf -> 1; non-finite rows: 0
        a = a * (1.0 - float(c.sum()) / n) + c / n
    if s == 1.0 and G.dtype not in LOW_PRECISION:
        out = v0 * (1.0 - float(a.sum())) + P.weighted_rows(G, a.to(G.device), finite)
        if all_finite(out):
            return out
    W = P.wide_dtype(G.dtype)  # hostile inputs: the combination in the wide dtype (tiny a_i on huge rows)
    rows = P.weighted_rows(G.to(W), a.to(G.device), finite)
    return (v0.to(W) * (1.0 - float(a.sum())) + rows).to(G.dtype)


# =====================================================================================================
# registered objects
# =====================================================================================================


@AGGREGATORS.register("geometric_median")
class GeometricMedian(Aggregator):
    """Geometric median by (smoothed, nu > 0) Weiszfeld iterations in Gram space; robust for f < n/2.

    Per-row weights (e.g. sample counts, as in RFA) may be passed per round in
    ``ctx.extras["weights"]`` (``Tensor[n]``, non-negative); default: equal weights.
    """

    name = "geometric_median"
    requires = HALF

    def __init__(self, f: int = 0, eps: float = 1e-6, max_iter: int = 100, nu: float = 0.0, init: str = "mean"):
        super().__init__(f)
        config_float(eps, "eps", positive=False)
        config_int(max_iter, "max_iter", 0)
        config_float(nu, "nu", positive=False)
        if init not in ("mean", "zero"):
            raise ConfigError(f"aggregator.init must be 'mean' or 'zero' (ByzFL's start at the origin), got {init!r}")
        self.eps, self.max_iter, self.nu, self.init = float(eps), max_iter, float(nu), init

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        weights = ctx.extras.get("weights") if ctx is not None else None
        return geometric_median(G, self.eps, self.max_iter, self.nu, weights=weights, init=self.init)

    def __repr__(self) -> str:
        init = "" if self.init == "mean" else f", init={self.init!r}"
        return f"GeometricMedian(f={self.f}, eps={self.eps}, max_iter={self.max_iter}, nu={self.nu}{init})"


@AGGREGATORS.register("centered_clipping")
class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy et al. 2021): iters clipped steps from the previous round's output."""

    name = "centered_clipping"
    # The paper proves robustness for a small constant Byzantine fraction; we enforce the
    # breakdown bound f < n/2 (more Byzantine than honest rows can move the output at will).
    requires = HALF

    def __init__(self, f: int = 0, tau: float = 10.0, iters: int = 3):
        super().__init__(f)
        config_float(tau, "tau", positive=True)
        config_int(iters, "iters", 0)
        self.tau, self.iters = float(tau), iters
        self.center: Tensor | None = None

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        center = self.center
        if center is not None and center.shape != (G.shape[1],):
            raise ValueError(
                f"centered_clipping: the stored center has {center.shape[0]} coordinates but the batch has "
                f"{G.shape[1]}; call reset() when the model changes"
            )
        out = centered_clipping(G, center, self.tau, self.iters)
        self.center = out.detach().clone()
        return out

    def reset(self) -> None:
        self.center = None

    def state_dict(self) -> dict[str, Any]:
        return {"center": None if self.center is None else self.center.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        c = state.get("center")
        self.center = None if c is None else torch.as_tensor(c).detach().clone()

    def __repr__(self) -> str:
        return f"CenteredClipping(f={self.f}, tau={self.tau}, iters={self.iters})"
