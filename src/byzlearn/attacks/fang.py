"""Fang, Cao, Jia & Gong (USENIX Security 2020): the full-knowledge local model poisoning attacks on
trimmed mean / median and on Krum / Multi-Krum, in update (gradient) space.

The direction of coordinate ``j`` is ``s_j = sign(mu_j)``, ``mu`` the honest mean (the paper's ``s_j`` is
the sign of the change of global parameter ``j`` without attack; the two agree when the rows are model
deltas).
"""

# No ``from __future__ import annotations``: the registry checks config values against the real
# annotation objects of the constructors.

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from ..aggregators.distance import pairwise_sq_distances  # the rule modules, not functional (it imports the catalogue)
from ..aggregators.krum import krum_scores
from ..registry import ConfigError
from .base import ATTACKS, Attack, AttackContext
from .gradient import own_gradients, require_honest, rows_of
from .minmax import probe_batch
from .omniscient import column_std

__all__ = [
    "uniform",
    "fang_trmean_vectors",
    "fang_partial_vectors",
    "fang_krum_lambda",
    "fang_krum_vector",
    "FangTrimmedMeanAttack",
    "FangKrumAttack",
]

Knowledge = Literal["full", "own"]
Bound = Literal["paper", "ndss"]


# -- functional core ------------------------------------------------------------------------------


def uniform(k: int, like: Tensor, generator: torch.Generator) -> Tensor:
    """``Tensor[k, d]`` of U[0, 1) draws from ``generator`` (on its device), in ``like``'s dtype and device."""
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    out = torch.empty((k, like.shape[-1]), dtype=dtype, device=generator.device).uniform_(0.0, 1.0, generator=generator)
    return out.to(device=like.device, dtype=like.dtype)


def _draw(lo: Tensor, width: Tensor, k: int, generator: torch.Generator, shared: bool) -> Tensor:
    U = uniform(1 if shared else k, lo, generator)
    U.mul_(width).add_(lo)  # lo + U * (hi - lo), in place
    return U.expand(k, -1).clone() if shared else U


def fang_trmean_vectors(honest: Tensor, k: int, generator: torch.Generator, b: float = 2.0, shared: bool = False) -> Tensor:
    """Fang's full-knowledge attack on trimmed mean / median: ``Tensor[k, d]``.

    With ``max_j``/``min_j`` over the honest rows, coordinate ``j`` is drawn uniformly from
    ``[max_j, b max_j]`` (``max_j > 0``) or ``[max_j, max_j / b]`` (``max_j <= 0``) when ``s_j < 0``;
    from ``[min_j / b, min_j]`` (``min_j > 0``) or ``[b min_j, min_j]`` (``min_j <= 0``) when ``s_j > 0``;
    0 when ``s_j = 0``. Independent draws per row and coordinate (paper, old Blades ``np.random.uniform``);
    ``shared = True``: one draw for all rows (new Blades ``AdaptiveAdversary``).
    """
    mu = honest.mean(dim=0)
    mn, mx = honest.amin(dim=0), honest.amax(dim=0)  # two passes beat aminmax along dim 0 ~3x
    s = torch.sign(mu)
    up = torch.where(mx > 0, mx * b, mx / b)  # s < 0: [mx, up]
    down = torch.where(mn > 0, mn / b, mn * b)  # s > 0: [down, mn]
    neg, pos = s < 0, s > 0
    zero = torch.zeros((), dtype=mu.dtype, device=mu.device)
    lo = torch.where(neg, mx, torch.where(pos, down, zero))
    width = torch.where(neg, up - mx, torch.where(pos, mn - down, zero))
    return _draw(lo, width, k, generator, shared)


def fang_partial_vectors(own: Tensor, k: int, generator: torch.Generator, shared: bool = False) -> Tensor:
    """Fang's partial-knowledge variant (NDSS ``fang_attack_trmean_partial``, without its mask bug): ``mu``,
    ``sigma`` (ddof = 1) and ``s = sign(mu)`` from the attackers' own benign rows; coordinate ``j`` drawn from
    ``[mu + 3 sigma, mu + 4 sigma]`` if ``s_j < 0``, ``[mu - 4 sigma, mu - 3 sigma]`` if ``s_j > 0``, 0 if ``s_j = 0``."""
    mu = own.mean(dim=0)
    sigma = column_std(own, mu)
    s = torch.sign(mu)
    lo = torch.where(s < 0, mu + 3 * sigma, mu - 4 * sigma)
    lo = torch.where(s == 0, torch.zeros_like(mu), lo)
    width = torch.where(s == 0, torch.zeros_like(sigma), sigma)
    return _draw(lo, width, k, generator, shared)


def fang_krum_lambda(honest: Tensor, c: int, bound: Bound = "paper") -> float:
    """The start ``lambda_0`` of Fang's Krum attack, in update space with ``w_Re := mu``:

    ``lambda_0 = min_i sum_{l in Gamma_i} ||g_l - g_i|| / ((m - 2c - 1) sqrt(d)) + max_i ||g_i - mu|| / sqrt(d)``

    (``m = h + c`` workers, ``c`` attackers, distances not squared, ``Gamma_i`` the nearest other honest rows).
    ``bound = "paper"``: ``|Gamma_i| = m - c - 2``; ``"ndss"``: ``|Gamma_i| = m - 2c - 2`` (``compute_lambda_fang``,
    which also counts zero distances between duplicate rows as 10000). All from one ``h x h`` Gram matrix.
    """
    h, d = honest.shape
    m = h + c
    D = pairwise_sq_distances(honest).to(torch.float64)
    to_mu = (D.mean(dim=1) - 0.5 * D.mean()).clamp_min(0.0).sqrt()  # ||g_i - mu||^2 = mean_j D_ij - mean(D) / 2
    R = D.clamp_min(0.0).sqrt()
    if bound == "ndss":
        R = torch.where(R == 0, torch.full_like(R, 10000.0), R)
        k = m - 2 * c - 2
    else:
        R.fill_diagonal_(float("inf"))
        k = m - c - 2
    k = max(0, min(k, h - 1))
    nearest = R.sort(dim=1).values[:, :k].sum(dim=1)
    denominator = max(m - 2 * c - 1, 1) * d**0.5
    return float(nearest.min() / denominator + to_mu.max() / d**0.5)


def fang_krum_vector(
    honest: Tensor, k: int, krum_f: int | None = None, byzantine: Tensor | None = None, bound: Bound = "paper", stop: float = 1e-5
) -> tuple[Tensor, float, int, bool]:
    """Fang's Krum attack (NDSS gradient-space ``get_malicious_updates_fang``): ``(m, lambda, evaluations, selected)``.

    ``m = -lambda s`` with ``lambda`` halved from :func:`fang_krum_lambda` while ``lambda > stop`` until Krum
    (``krum_scores`` with ``krum_f``, default ``k``) on ``k`` copies placed with the honest rows
    (:func:`probe_batch`) selects a copy; if it never does, ``m = mu - lambda s`` (``selected = False``).
    """
    mu = honest.mean(dim=0)
    s = torch.sign(mu)
    f = k if krum_f is None else krum_f
    lam = fang_krum_lambda(honest, k, bound)
    G, rows = probe_batch(honest, k, byzantine)
    crafted = torch.zeros(G.shape[0], dtype=torch.bool, device=G.device)
    crafted[rows] = True
    evaluations = 0
    while lam > stop:
        m = -lam * s
        G.index_copy_(0, rows, m.unsqueeze(0).expand(k, -1))
        evaluations += 1
        if bool(crafted[torch.argmin(krum_scores(G, f))]):  # argmin: the lowest index among ties, as krum
            return m, lam, evaluations, True
        lam *= 0.5
    return mu - lam * s, lam, evaluations, False


# -- registered attacks ---------------------------------------------------------------------------


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"attack.{key} must be true or false, got {value!r}")
    return value


@ATTACKS.register("fang_trmean")
class FangTrimmedMeanAttack(Attack):
    """Fang et al. (USENIX Security 2020) attack on trimmed mean / median: coordinates drawn beyond the honest extremes.

    Each coordinate is pushed beyond the honest extremes against its direction ``s_j = sign(mu_j)`` (see
    :func:`fang_trmean_vectors`, ``b = 2``).

    Threat model: ``knowledge = "full"`` (default) omniscient, the round's honest rows (the paper's full
    knowledge; the rule need not be known); ``knowledge = "own"`` not omniscient, the partial-knowledge
    variant on the attackers' own honest gradients (:func:`fang_partial_vectors`).

    Independent draws per Byzantine row and coordinate from ``ctx.generator`` (paper, old Blades);
    ``shared = True`` sends one draw from every row (new Blades). The NDSS ``get_malicious_updates_fang_trmean``
    applies the ``mu_j > 0`` mask to both ranges (it returns the sum of the two draws where ``mu_j > 0`` and 0
    elsewhere); that bug is not reproduced. No search: one pass for the statistics, one for the draws.
    """

    name = "fang_trmean"

    def __init__(self, shared: bool = False, knowledge: Knowledge = "full"):
        self.shared = _flag(shared, "shared")
        if knowledge not in get_args(Knowledge):
            raise ConfigError(
                f"attack.knowledge must be 'full' (the honest rows) or 'own' (the attackers' own gradients), got {knowledge!r}"
            )
        self.knowledge = knowledge
        self.omniscient = knowledge == "full"
        self.needs_own_gradients = knowledge == "own"

    def forge(self, ctx: AttackContext) -> Tensor:
        if self.knowledge == "own":
            own = own_gradients(ctx, self.name)
            return fang_partial_vectors(own, ctx.f, ctx.generator, self.shared) if ctx.f else own[:0]
        require_honest(ctx)  # clear error when there is no honest row
        return fang_trmean_vectors(ctx.honest, ctx.f, ctx.generator, 2.0, self.shared)

    def __repr__(self) -> str:
        return f"FangTrimmedMeanAttack(shared={self.shared}, knowledge={self.knowledge!r})"


@ATTACKS.register("fang_krum")
class FangKrumAttack(Attack):
    """Fang et al. (USENIX Security 2020) attack on Krum / Multi-Krum: all send -lambda sign(mu), Krum's pick.

    In update space (NDSS code): the largest ``lambda = lambda_0 / 2^t`` for which Krum selects a crafted row.

    Threat model: omniscient (the round's honest rows) and knowing the rule is Krum; the defender's object
    is not probed, Krum is byzlearn's ``krum_scores`` with ``f = ctx.f`` on the batch laid out as the engine
    will lay it (Byzantine rows at ``ctx.byzantine``; ties go to the lowest index, as ``krum``).
    byzlearn's score sums the ``n - f - 2`` smallest squared distances to *other* rows (the paper); the NDSS
    ``multi_krum`` counts the row's own zero distance among them.

    ``lambda_0`` is the paper's upper bound with ``w_Re := mu`` (:func:`fang_krum_lambda`, ``bound = "paper"``,
    or ``"ndss"`` for ``compute_lambda_fang``'s neighbour count); ``lambda`` is halved while ``lambda > 1e-5``;
    if Krum never picks a crafted row, all send ``mu - lambda * sign(mu)``. Cost: one ``h x h`` Gram for
    ``lambda_0``, then at most ``ceil(log2(lambda_0 / 1e-5))`` Krum evaluations (one ``(h+f) x (h+f)`` Gram each),
    kept in ``last_evaluations``. The paper's other ``c - 1`` models near the first (radius unverified) are
    not reproduced: all copies are identical, as the NDSS code.
    """

    name = "fang_krum"
    omniscient = True

    def __init__(self, bound: Bound = "paper"):
        if bound not in get_args(Bound):
            raise ConfigError(f"attack.bound must be 'paper' or 'ndss', got {bound!r}")
        self.bound = bound
        self.last_lambda: float | None = None
        self.last_evaluations = 0
        self.last_selected = False

    def forge(self, ctx: AttackContext) -> Tensor:
        require_honest(ctx)  # clear error when there is no honest row
        if ctx.f == 0:
            return ctx.honest[:0]
        m, self.last_lambda, self.last_evaluations, self.last_selected = fang_krum_vector(
            ctx.honest, ctx.f, ctx.f, ctx.byzantine, self.bound
        )
        return rows_of(m, ctx.f)

    def __repr__(self) -> str:
        return f"FangKrumAttack(bound={self.bound!r})"
