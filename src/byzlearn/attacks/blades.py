"""The Blades attacks (lishenghui/blades, ``blades/adversaries`` and the old ``src/blades/attackers``) that the
rest of the catalogue does not cover: AttackClippedClustering, SignGuardAdversary and PermutationClient.

The others map onto existing attacks: ``ALIEAdversary`` -> ``alie``, ``IPMAdversary(scale)`` -> ``ipm``
(``epsilon = scale``), ``SignFlipAdversary`` -> ``sign_flip``, ``LabelFlipAdversary`` -> ``label_flip``,
``AdaptiveAdversary`` and ``FangattackClient`` -> ``fang_trmean`` (``shared = true`` / ``false``),
``DistancemaximizationAdversary`` -> ``agr_tailored``. ``NoiseAdversary(mean=0.1, std=0.1)`` (an independent
``N(0.1, 0.1^2 I)`` row per Byzantine worker, train loss reported as -1) is exactly ``gaussian`` with
``mean = 0.1, std = 0.1`` (byzlearn reads no Byzantine loss), so it is not registered again under another
name: use ``{"name": "gaussian", "mean": 0.1, "std": 0.1}``. ``MinMaxAdversary`` is a different search from
NDSS's MinMax (see ``attacks.minmax``) and is not reproduced.
"""

# No ``from __future__ import annotations``: the registry checks config values against the real
# annotation objects of the constructors.

import math

import numpy as np
import torch
from sklearn.cluster import AgglomerativeClustering
from torch import Tensor

from ..aggregators._sklearn import single_threaded
from .base import ATTACKS, Attack, AttackContext
from .gradient import honest_mean, own_gradients, require_honest, rows_of

__all__ = [
    "cosine_distances",
    "clipped_clustering_vectors",
    "signguard_vector",
    "permuted_rows",
    "AttackClippedClustering",
    "SignGuardAttack",
    "PermutationAttack",
]

_EPS = 1e-4  # Blades' angular margin


# -- functional core ------------------------------------------------------------------------------


def _ratio(x: float, y: float) -> float:
    """``x / y`` with IEEE semantics (``+-inf``, ``nan`` for ``y = 0``), as Blades' tensor division."""
    if y != 0:
        return x / y
    return math.nan if x == 0 or x != x else math.copysign(math.inf, x) * math.copysign(1.0, y)


def cosine_distances(H: Tensor) -> Tensor:
    """``1 - cos(g_i, g_j)`` (float64, zero diagonal) from one Gram matrix; a zero row has cosine 0, as
    ``torch.nn.functional.cosine_similarity``. Non-finite entries are left for the caller to fix."""
    K = (H @ H.T).to(torch.float64)
    norms = K.diagonal().clamp_min(0.0).sqrt().clamp_min(1e-8)
    D = 1.0 - K / (norms[:, None] * norms[None, :])
    D.fill_diagonal_(0.0)
    return D


def clipped_clustering_vectors(honest: Tensor, k: int) -> Tensor:
    """Blades ``AttackclippedclusteringAdversary``: ``Tensor[k, d]``, the rows chained client after client.

    1. ``D = 1 - cos`` over the honest rows (``-inf -> 0``, ``inf -> 2``, ``NaN -> 2``), agglomerative
       clustering into 2 clusters (precomputed ``D``, single linkage);
    2. ``theta_c = arccos(1 - min_{i != j} D_ij) - 0.1`` (minimum over all pairs, not across clusters);
    3. ``L`` the majority cluster (label 1 if the labels sum to more than ``h // 2``); ``t = argmax_{l in L}
       (1 - cos(g_l, mu))``, ``theta = arccos(cos(g_t, mu))`` and ``u = H[t] / ||H[t]||``: Blades indexes ``H``
       with ``t``, a position in ``L`` (quirk reproduced; it is the same row only when ``L`` starts at 0);
    4. per Byzantine row: if ``theta + theta_c >= pi``, ``m = -10 mu``; else with ``e = 1e-4``,
       ``a = cos(theta + theta_c - e) - sin(theta + theta_c - e) / tan(theta)``,
       ``b = cos(theta_c - e) + sin(theta_c - e) / tan(theta)``, ``m = 10 (a mu / ||mu|| + b u)``, then
       ``u <- m`` (not normalised) and ``theta <- theta + theta_c - e``.

    The chain is linear in ``mu / ||mu||`` and ``u``: its scalar coefficients are computed first and the rows
    in one batched product.
    """
    h = honest.shape[0]
    if h < 2:
        raise ValueError(f"attack_clipped_clustering needs at least 2 honest rows to cluster, got {h}")
    mu = honest.mean(dim=0)
    D = cosine_distances(honest)
    raw_cross = torch.where(torch.isnan(D), torch.full_like(D, math.inf), D)  # Python's min() skips NaN
    raw_cross.fill_diagonal_(math.inf)
    theta_c = math.acos(max(-1.0, min(1.0, 1.0 - float(raw_cross.min())))) - 0.1
    fixed = D.clone()
    fixed[fixed == -math.inf] = 0.0
    fixed[(fixed == math.inf) | torch.isnan(fixed)] = 2.0
    with single_threaded():
        labels = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="single").fit(fixed.cpu().numpy()).labels_
    flag = 1 if int(np.sum(labels)) > h // 2 else 0
    members = torch.as_tensor(np.flatnonzero(labels == flag), device=honest.device)
    g_mu = (honest @ mu).to(torch.float64)  # <g_i, mu>
    norms = torch.linalg.vector_norm(honest, dim=1).to(torch.float64).clamp_min(1e-8)
    mu_norm = float(torch.linalg.vector_norm(mu))
    dis2mean = 1.0 - g_mu[members] / (norms[members] * max(mu_norm, 1e-8))
    t = int(torch.argmax(dis2mean))
    theta = math.acos(max(-1.0, min(1.0, 1.0 - float(dis2mean[t]))))
    u0 = honest[t] / torch.linalg.vector_norm(honest[t])  # the quirk: t indexes L, used on H
    alpha, beta = [], []  # row r = alpha_r * mu / ||mu|| + beta_r * u0
    al, be = 0.0, 1.0
    for _ in range(k):
        if theta + theta_c >= math.pi:
            al, be = -10.0 * mu_norm, 0.0
        else:
            a = math.cos(theta + theta_c - _EPS) - _ratio(math.sin(theta + theta_c - _EPS), math.tan(theta))
            b = math.cos(theta_c - _EPS) + _ratio(math.sin(theta_c - _EPS), math.tan(theta))
            al, be = 10.0 * (a + b * al), 10.0 * b * be
            theta = theta + theta_c - _EPS
        alpha.append(al)
        beta.append(be)
    unit_mu = mu / mu_norm if mu_norm > 0 else mu
    A = torch.tensor(alpha, dtype=honest.dtype, device=honest.device)[:, None]
    B = torch.tensor(beta, dtype=honest.dtype, device=honest.device)[:, None]
    return A * unit_mu + B * u0


def signguard_vector(mu: Tensor, generator: torch.Generator) -> Tensor:
    """Blades ``SignGuardAdversary``: ``[U(0,1)^P, -U(0,1)^N, 0^Z]`` permuted by ``randperm(d)``, with ``P``, ``N``,
    ``Z`` the numbers of positive, negative and zero coordinates of ``mu`` (the sign counts of ``mu``, at random
    positions)."""
    d = mu.numel()
    pos, neg = int((mu > 0).sum()), int((mu < 0).sum())
    g = generator
    dtype = mu.dtype if mu.dtype in (torch.float32, torch.float64) else torch.float32
    v = torch.zeros(d, dtype=dtype, device=g.device)
    torch.rand(pos + neg, generator=g, device=g.device, dtype=dtype, out=v[: pos + neg])
    v[pos : pos + neg].neg_()
    perm = torch.randperm(d, generator=g, device=g.device)
    return v[perm].to(device=mu.device, dtype=mu.dtype)


def permuted_rows(X: Tensor, generator: torch.Generator) -> Tensor:
    """Every row of ``X`` with its coordinates permuted by its own fresh ``randperm(d)`` (old Blades ``PermutationClient``)."""
    g = generator
    out = torch.empty_like(X)
    for i in range(X.shape[0]):  # one randperm per Byzantine row, each an O(d) gather
        perm = torch.randperm(X.shape[1], generator=g, device=g.device).to(X.device)
        out[i] = X[i].index_select(0, perm)
    return out


# -- registered attacks ---------------------------------------------------------------------------


@ATTACKS.register("attack_clipped_clustering")
class AttackClippedClustering(Attack):
    """Blades AttackClippedClustering: rows chained at growing angles from the honest mean, aimed at ClippedClustering.

    Against Li et al.'s angle-based clustering; see :func:`clipped_clustering_vectors`.

    Threat model: omniscient (the round's honest rows). Blades accepts a ``linkage`` parameter but hard-codes
    single linkage; so does this one (no parameter). Blades' ``AgglomerativeClustering(affinity=...)`` keyword
    was removed in scikit-learn 1.4; this uses ``metric="precomputed"``. Cost: one ``h x h`` Gram matrix, the
    clustering of ``h`` points, one batched product for the ``f`` rows.
    """

    name = "attack_clipped_clustering"
    omniscient = True

    def forge(self, ctx: AttackContext) -> Tensor:
        require_honest(ctx)  # clear error when there is no honest row
        if ctx.f == 0:
            return ctx.honest[:0]
        return clipped_clustering_vectors(ctx.honest, ctx.f)


@ATTACKS.register("signguard_attack")
class SignGuardAttack(Attack):
    """Blades SignGuardAdversary: the honest mean's sign counts at random positions, one row for all (vs SignGuard).

    It matches SignGuard's sign statistics; the same row for every Byzantine worker (see :func:`signguard_vector`).

    Threat model: omniscient (the signs of the round's honest mean). Fresh draws (``ctx.generator``) each round.
    """

    name = "signguard_attack"
    omniscient = True

    def forge(self, ctx: AttackContext) -> Tensor:
        mu = honest_mean(ctx)
        if ctx.f == 0:
            return ctx.honest[:0]
        return rows_of(signguard_vector(mu, ctx.generator), ctx.f)


@ATTACKS.register("permutation")
class PermutationAttack(Attack):
    """Old Blades PermutationClient: each Byzantine worker sends its own honest update, coordinates permuted.

    The permutation is a fresh ``randperm(d)`` per worker (from ``ctx.generator``) every round.

    Threat model: not omniscient; each worker sees only its own honest gradient (``needs_own_gradients``).
    """

    name = "permutation"
    needs_own_gradients = True

    def forge(self, ctx: AttackContext) -> Tensor:
        own = own_gradients(ctx, self.name)[: ctx.f]
        return permuted_rows(own, ctx.generator)
