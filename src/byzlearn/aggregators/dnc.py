"""DnC, Divide-and-Conquer (Shejwalkar & Houmansadr, "Manipulating the Byzantine: optimizing model
poisoning attacks and defenses for federated learning", NDSS 2021, Algorithm 2), the maths and the
registered object side by side.

The top right singular vector of the centred ``n x b`` subsample ``Y - mu`` comes from its ``n x n``
Gram: with ``(lambda, u)`` the top eigenpair of the centred Gram ``K_c``, ``v = (Y - mu)^T u /
sqrt(lambda)`` and the outlier score is ``s_i = ((Y_i - mu) . v)^2 = lambda u_i^2``; no SVD of the
``n x b`` matrix. Conventions of the distance rules hold (dtypes, hostile values: the subsample's
Gram is ``_pairwise.distance_gram``; non-finite rows are never good).
"""

import math

import torch
from torch import Tensor

from . import _pairwise as P
from .base import AGGREGATORS, AggregationContext, Aggregator, config_float, config_int
from .requirements import Requirement

__all__ = ["dnc", "dnc_good", "DnC"]

_F64 = torch.float64


def _requirement(c: float) -> Requirement:
    """DnC keeps ``n - floor(c f)`` rows per iteration: at least one must remain."""
    return Requirement(f"n - floor(c*f) >= 1 (c={c})", lambda n, f: n - int(c * f) >= 1)


def _check(G: Tensor, f: int, b: int, niters: int, c: float) -> tuple[int, int]:
    n, d = P.check_batch(G, "dnc")
    P.check_f(f, "dnc")
    for key, value in (("b", b), ("niters", niters)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"dnc: {key} must be an integer >= 1, got {value!r}")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ValueError(f"dnc: c must be a finite number >= 0 (the filtering fraction), got {c!r}")
    _requirement(c).check("dnc", n, f)
    return n, d


def dnc_good(G: Tensor, f: int, b: int = 10000, niters: int = 5, c: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """DnC's good set: ``BoolTensor[n]`` (CPU). See :func:`dnc`."""
    n, d = _check(G, f, b, niters, c)
    keep = n - int(c * f)
    finite = P.finite_rows(G).cpu()
    good = finite.clone()
    gen_device = generator.device if generator is not None else torch.device("cpu")
    for _ in range(niters if b < d else 1):  # b >= d: every iteration sees all coordinates, the same scores
        if b < d:
            r = torch.randperm(d, generator=generator, device=gen_device)[:b]
            Y = G[:, r.to(G.device)]
        else:
            Y = G
        K, fin, _, _ = P.distance_gram(Y)  # Gram of s * Y up to a translation (scores are compared only)
        fin = fin.cpu() & finite
        idx = torch.nonzero(fin).flatten()
        score = torch.full((n,), math.inf, dtype=_F64)
        if idx.numel():
            Kf = K.detach().to("cpu", _F64)[idx][:, idx]
            Kc = Kf - Kf.mean(dim=0, keepdim=True) - Kf.mean(dim=1, keepdim=True) + Kf.mean()
            evals, evecs = torch.linalg.eigh(Kc)
            score[idx] = evals[-1].clamp_min(0.0) * evecs[:, -1].square()
        kept = torch.zeros(n, dtype=torch.bool)
        kept[torch.argsort(score, stable=True)[:keep]] = True  # ties: the lowest index is kept
        good &= kept
    return good


def dnc(G: Tensor, f: int, b: int = 10000, niters: int = 5, c: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """DnC (Shejwalkar & Houmansadr, NDSS 2021, Algorithm 2; fedlib/Blades ``DnC``) of ``G: Tensor[n, d]``.

    ``good = all rows``; ``niters`` times: draw ``b`` coordinates without replacement
    (``torch.randperm(d, generator)[:b]``, as fedlib; all ``d`` when ``b >= d``), ``Y = G[:, r]``,
    ``mu`` = the mean of the rows of ``Y``, ``v`` = the top right singular vector of ``Y - mu``,
    ``s_i = ((Y_i - mu) . v)^2``, keep the ``n - floor(c f)`` rows of smallest score (ties: lowest
    index), ``good = good & kept``. Output: the mean of the good rows. Requires
    ``n - floor(c f) >= 1``.

    Defaults ``b = 10000``, ``niters = 5``, ``c = 1.0`` are fedlib's / Blades'
    (``DnC(num_byzantine, sub_dim=10000, num_iters=5, filter_frac=1.0)``, whose docstring cites the
    paper); the paper's own text was not reachable to confirm them (the SignGuard repository's DnC
    uses ``niters = 1``, ``b = 1000``, ``c = (n-1)/n``). ``c`` is the filtering fraction: ``c f``
    rows are removed per iteration.

    - Randomness: ``niters`` permutations of ``range(d)`` from ``generator`` (torch's default CPU
      generator when None, as fedlib's ``torch.randperm``); none when ``b >= d`` (every iteration
      would see the same coordinates, so one is computed).
    - Empty ``good`` (possible when ``n <= niters floor(c f)``): the paper averages the good set and
      states nothing for an empty one; the average over no row is taken as no update, the zero
      vector (as fedlib).
    - Non-finite rows are never good; ``mu`` and ``v`` are computed from the finite rows.
    """
    good = dnc_good(G, f, b, niters, c, generator)
    if not bool(good.any()):
        return torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
    w = good.to(_F64) / int(good.sum())
    return P.weighted_rows(G, w.to(G.device), P.finite_rows(G))


@AGGREGATORS.register("dnc")
class DnC(Aggregator):
    """DnC (Shejwalkar & Houmansadr 2021): drop the c*f rows farthest along the top singular vector of random coordinate subsets."""

    name = "dnc"

    def __init__(self, f: int = 0, b: int = 10000, niters: int = 5, c: float = 1.0):
        super().__init__(f)
        config_int(b, "b", 1)
        config_int(niters, "niters", 1)
        config_float(c, "c", positive=False)
        self.b, self.niters, self.c = b, niters, float(c)
        self.requires = _requirement(self.c)

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return dnc(G, self.f, self.b, self.niters, self.c, ctx.generator)

    def __repr__(self) -> str:
        return f"DnC(f={self.f}, b={self.b}, niters={self.niters}, c={self.c})"
