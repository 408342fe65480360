"""Shejwalkar & Houmansadr (NDSS 2021, §IV): MinMax, MinSum and the AGR-tailored search.

All three send ``m(gamma) = mu + gamma * p`` from every Byzantine worker, ``mu`` the mean of the benign
rows and ``p`` a perturbation (``dev_type`` in vrt1shjwlkr/NDSS21-Model-Poisoning):

- ``"unit_vec"``: ``p = -mu / ||mu||`` (the inverse unit vector; ``p = 0`` when ``mu = 0``);
- ``"sign"``: ``p = -sign(mu)``;
- ``"std"``: ``p = -sigma``, the coordinate-wise standard deviation (ddof = 1, ``torch.std``).

``gamma`` comes from the authors' search (:func:`gamma_search`): ``gamma = step = gamma0``, ``gamma_succ = 0``;
while ``|gamma_succ - gamma| > tau``: a passing test sets ``gamma_succ = gamma`` and moves ``gamma`` up by
``step / 2``, a failing one moves it down by ``step / 2``; ``step`` halves every time. It makes exactly
``ceil(log2(gamma0 / tau))`` tests (20 for ``gamma0 = 10``, ``tau = 1e-5``; 19 for ``gamma0 = 5``) and its
reach is ``< 2 gamma0``.

The MinMax/MinSum tests read squared distances only: ``D = pairwise_sq_distances(H)`` (one ``h x h``
Gram matrix), ``a_i = ||g_i - mu||^2`` from ``D`` and ``b_i = <g_i - mu, p>`` from one matrix-vector
product, so ``||m(gamma) - g_i||^2 = a_i - 2 gamma b_i + gamma^2 ||p||^2`` costs ``O(h)`` per test (no
``O(h^2 d)`` memory, no pass over ``H`` per test).
"""

# No ``from __future__ import annotations``: the registry checks config values against the real
# annotation objects of the constructors.

import dataclasses
import math
from typing import Any, Callable, Literal, get_args

import torch
from torch import Tensor

from ..aggregators.base import AggregationContext
from ..aggregators.distance import pairwise_sq_distances  # the rule module, not functional (it imports the catalogue)
from ..registry import ConfigError
from .base import ATTACKS, Attack, AttackContext
from .gradient import own_gradients, require_honest, rows_of
from .omniscient import column_std

__all__ = [
    "perturbation",
    "gamma_search",
    "distance_terms",
    "min_max_vector",
    "min_sum_vector",
    "agr_tailored_vector",
    "probe_batch",
    "MinMaxAttack",
    "MinSumAttack",
    "AGRTailoredAttack",
]

Perturbation = Literal["unit_vec", "std", "sign"]
Knowledge = Literal["full", "own"]


# -- functional core ------------------------------------------------------------------------------


def perturbation(benign: Tensor, kind: Perturbation, mu: Tensor | None = None) -> Tensor:
    """The perturbation ``p`` (already pointing away from ``mu``): ``-mu/||mu||``, ``-sign(mu)`` or ``-sigma``."""
    mu = benign.mean(dim=0) if mu is None else mu
    if kind == "unit_vec":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if float(norm) > 0 else torch.zeros_like(mu)
    if kind == "sign":
        return -torch.sign(mu)
    if kind == "std":
        return -column_std(benign, mu)
    raise ValueError(f"unknown perturbation {kind!r}; use one of {get_args(Perturbation)}")


def gamma_search(passes: Callable[[float], bool], gamma0: float = 10.0, tau: float = 1e-5) -> tuple[float, int]:
    """NDSS's search: ``(gamma_succ, tests)``, the last ``gamma`` that passed (0 if none) and the tests made."""
    if not gamma0 > 0 or not tau > 0:
        raise ValueError(f"gamma_search needs gamma0 > 0 and tau > 0, got gamma0={gamma0}, tau={tau}")
    gamma, step, succ, tests = float(gamma0), float(gamma0), 0.0, 0
    while abs(succ - gamma) > tau:
        tests += 1
        if passes(gamma):
            succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succ, tests


def distance_terms(benign: Tensor, mu: Tensor, p: Tensor, D: Tensor | None = None) -> tuple[Tensor, Tensor, float]:
    """``(a, b, c)`` (float64) with ``||mu + gamma p - g_i||^2 = a_i - 2 gamma b_i + gamma^2 c``.

    ``a_i = ||g_i - mu||^2 = mean_j D_ij - mean(D) / 2`` from the pairwise squared distances ``D`` (given, or
    :func:`~byzlearn.aggregators.functional.pairwise_sq_distances`: one Gram matrix), ``b_i = <g_i, p> - <mu, p>``
    (one matrix-vector product), ``c = ||p||^2``.
    """
    D = (pairwise_sq_distances(benign) if D is None else D).to(torch.float64)
    a = (D.mean(dim=1) - 0.5 * D.mean()).clamp_min(0.0)
    b = (benign @ p).to(torch.float64) - float(mu.to(torch.float64) @ p.to(torch.float64))
    c = float(torch.linalg.vector_norm(p.to(torch.float64)) ** 2)
    return a, b, c


def _search_vector(benign: Tensor, kind: Perturbation, gamma0: float, tau: float, objective: str) -> tuple[Tensor, float, int]:
    if benign.dim() != 2 or benign.shape[0] == 0:
        raise ValueError(f"min_max/min_sum need a non-empty Tensor[h, d] of benign rows, got shape {tuple(benign.shape)}")
    mu = benign.mean(dim=0)
    p = perturbation(benign, kind, mu)
    D = pairwise_sq_distances(benign).to(torch.float64)
    a, b, c = distance_terms(benign, mu, p, D)
    if objective == "max":  # MinMax: max_i ||m - g_i||^2 <= max_{i,j} ||g_i - g_j||^2
        bound = float(D.max())

        def passes(gamma: float) -> bool:
            return float((a - 2 * gamma * b + gamma * gamma * c).max()) <= bound
    else:  # MinSum: sum_i ||m - g_i||^2 <= min_i sum_j ||g_i - g_j||^2
        bound = float(D.sum(dim=1).min())
        sa, sb, h = float(a.sum()), float(b.sum()), benign.shape[0]

        def passes(gamma: float) -> bool:
            return sa - 2 * gamma * sb + h * gamma * gamma * c <= bound

    gamma, tests = gamma_search(passes, gamma0, tau)
    return mu + gamma * p, gamma, tests


def min_max_vector(benign: Tensor, kind: Perturbation = "unit_vec", gamma0: float = 10.0, tau: float = 1e-5) -> tuple[Tensor, float, int]:
    """MinMax (NDSS ``our_attack_dist``): ``(m, gamma, tests)`` with the largest found ``gamma`` such that
    ``max_i ||m - g_i||^2 <= max_{i,j} ||g_i - g_j||^2``."""
    return _search_vector(benign, kind, gamma0, tau, "max")


def min_sum_vector(benign: Tensor, kind: Perturbation = "unit_vec", gamma0: float = 10.0, tau: float = 1e-5) -> tuple[Tensor, float, int]:
    """MinSum (NDSS ``our_attack_score``): ``(m, gamma, tests)`` with the largest found ``gamma`` such that
    ``sum_i ||m - g_i||^2 <= min_i sum_j ||g_i - g_j||^2``."""
    return _search_vector(benign, kind, gamma0, tau, "sum")


def probe_batch(honest: Tensor, k: int, byzantine: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(G, rows)``: a ``Tensor[h + k, d]`` with the honest rows where the engine puts them (in order, around
    the Byzantine positions ``rows``) and the ``k`` Byzantine rows left to fill. ``byzantine`` is
    ``AttackContext.byzantine``; when it is unknown (``None``) or does not fit, the Byzantine rows come
    first, as in the NDSS code's ``cat((mal_updates, all_updates))``."""
    h, d = honest.shape
    total = h + k
    if byzantine is None or byzantine.numel() != k or (k and int(byzantine.max()) >= total):
        rows = torch.arange(k, device=honest.device)
    else:
        rows = byzantine.to(device=honest.device, dtype=torch.long)
    keep = torch.ones(total, dtype=torch.bool, device=honest.device)
    keep[rows] = False
    G = torch.empty((total, d), dtype=honest.dtype, device=honest.device)
    G[keep] = honest
    return G, rows


def agr_tailored_vector(
    honest: Tensor,
    k: int,
    aggregate: Callable[[Tensor], Tensor],
    kind: Perturbation = "sign",
    gamma0: float = 5.0,
    tau: float = 1e-5,
    byzantine: Tensor | None = None,
) -> tuple[Tensor, float, int]:
    """AGR-tailored search (NDSS ``our_attack_trmean``/``our_attack_median``): ``(m, gamma, evaluations)``.

    A test at ``gamma`` places ``k`` copies of ``m(gamma)`` with the honest rows (:func:`probe_batch`) and
    passes when ``loss = ||aggregate(G) - mu||`` exceeds the previous test's loss (initially -1); a NaN
    loss fails. ``aggregate`` is called once per test.
    """
    mu = honest.mean(dim=0)
    p = perturbation(honest, kind, mu)
    G, rows = probe_batch(honest, k, byzantine)
    prev = [-1.0]

    def passes(gamma: float) -> bool:
        G.index_copy_(0, rows, (mu + gamma * p).unsqueeze(0).expand(k, -1))
        loss = float(torch.linalg.vector_norm(aggregate(G).to(mu.dtype) - mu))
        ok = prev[0] < loss
        prev[0] = loss
        return ok

    gamma, tests = gamma_search(passes, gamma0, tau)
    return mu + gamma * p, gamma, tests


# -- registered attacks ---------------------------------------------------------------------------


def _check(perturbation: Any, gamma0: Any, tau: Any) -> tuple[float, float]:
    if perturbation not in get_args(Perturbation):
        raise ConfigError(f"attack.perturbation must be one of {get_args(Perturbation)}, got {perturbation!r}")
    for key, value in (("gamma0", gamma0), ("tau", tau)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"attack.{key} must be a positive number, got {value!r}")
    return float(gamma0), float(tau)


class _DistanceSearch(Attack):
    """MinMax / MinSum: one search per round on the benign rows (honest, or the attackers' own)."""

    objective = "max"

    def __init__(self, perturbation: Perturbation = "unit_vec", gamma0: float = 10.0, tau: float = 1e-5, knowledge: Knowledge = "full"):
        self.gamma0, self.tau = _check(perturbation, gamma0, tau)
        if knowledge not in get_args(Knowledge):
            raise ConfigError(
                f"attack.knowledge must be 'full' (the honest rows) or 'own' (the attackers' own gradients), got {knowledge!r}"
            )
        self.perturbation, self.knowledge = perturbation, knowledge
        self.omniscient = knowledge == "full"
        self.needs_own_gradients = knowledge == "own"
        self.last_gamma: float | None = None  # the gamma of the latest round (for logging)
        self.last_tests = 0

    def forge(self, ctx: AttackContext) -> Tensor:
        benign = own_gradients(ctx, self.name) if self.knowledge == "own" else ctx.honest
        if self.knowledge == "full":
            require_honest(ctx)  # clear error when there is no honest row
        if ctx.f == 0:
            return benign[:0]
        m, self.last_gamma, self.last_tests = _search_vector(benign, self.perturbation, self.gamma0, self.tau, self.objective)
        return rows_of(m, ctx.f)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(perturbation={self.perturbation!r}, gamma0={self.gamma0}, tau={self.tau}, knowledge={self.knowledge!r})"
        )


@ATTACKS.register("min_max")
class MinMaxAttack(_DistanceSearch):
    """MinMax (Shejwalkar & Houmansadr, NDSS 2021): all send the farthest mu + gamma p within the benign rows' diameter.

    AGR-agnostic: ``m`` is no farther from any benign row than the benign rows are from each other.

    Threat model: ``knowledge = "full"`` (default) omniscient, the round's honest rows (the NDSS
    full-knowledge notebooks); ``knowledge = "own"`` not omniscient, the Byzantine workers' own honest
    gradients stand in for the benign ones (the "unknown benign gradients" notebooks). The rule is not used.

    Test: ``max_i ||m - g_i||^2 <= max_{i,j} ||g_i - g_j||^2`` (squared, as ``our_attack_dist``), searched by
    :func:`gamma_search` (``gamma0 = 10`` as the CIFAR-10 notebooks, ``tau = 1e-5``; 20 tests, no rule
    evaluation). ``perturbation`` as in the module docstring (default ``unit_vec``, the function's default;
    the CIFAR-10 cells use ``std``). All Byzantine workers send the same vector. Blades' ``MinMaxAdversary``
    (``p = -sigma``, unsquared strict test, bisection on [0, 5] to 0.01) is a different search, not this one.
    """

    name = "min_max"
    objective = "max"


@ATTACKS.register("min_sum")
class MinSumAttack(_DistanceSearch):
    """MinSum (Shejwalkar & Houmansadr, NDSS 2021): all send the farthest mu + gamma p no less central than a benign row.

    AGR-agnostic: the sum of squared distances from ``m`` to the benign rows is at most the smallest such sum
    of a benign row.

    Threat model: as ``min_max`` (``knowledge = "full"`` omniscient; ``"own"`` the attackers' own gradients).

    Test: ``sum_i ||m - g_i||^2 <= min_i sum_j ||g_i - g_j||^2``, with ``min`` as the authors' code
    (``our_attack_score``); the paper's wording can be read as ``max``, which allows a larger ``gamma``.
    Same search and defaults as ``min_max`` (20 tests, no rule evaluation).
    """

    name = "min_sum"
    objective = "sum"


@ATTACKS.register("agr_tailored")
class AGRTailoredAttack(Attack):
    """AGR-tailored attack (Shejwalkar & Houmansadr, NDSS 2021): mu + gamma p, gamma searched against the defender's rule.

    NDSS ``our_attack_trmean``/``our_attack_median``; old Blades ``DistancemaximizationAdversary``.

    Threat model: omniscient and knowing the rule: the round's honest rows and ``ctx.aggregator``, probed with
    ``evaluate`` (its state restored) on the batch laid out as the engine will lay it (Byzantine rows at
    ``ctx.byzantine``), with the round's aggregation context (``lr``, public batch) and a private generator
    reset to one seed (drawn from ``ctx.generator``) before every probe.

    Same ``m(gamma)`` and search as ``min_max``; the test passes when ``||AGR(f copies of m, H) - mu||`` exceeds
    the previous probe's value (initially -1). Defaults as old Blades: ``perturbation = "sign"``,
    ``gamma0 = 5``, ``tau = 1e-5``: 19 rule evaluations a round (``ceil(log2(gamma0 / tau))``). Old Blades'
    ``MediantailoredClient`` is this search with ``perturbation = "std"``, ``gamma0 = 10`` against a median.
    """

    name = "agr_tailored"
    omniscient = True

    def __init__(self, perturbation: Perturbation = "sign", gamma0: float = 5.0, tau: float = 1e-5):
        self.gamma0, self.tau = _check(perturbation, gamma0, tau)
        self.perturbation = perturbation
        self.last_gamma: float | None = None
        self.last_tests = 0

    def forge(self, ctx: AttackContext) -> Tensor:
        require_honest(ctx)  # clear error when there is no honest row
        if ctx.f == 0:
            return ctx.honest[:0]
        aggregate = rule_probe(ctx, self.name)
        m, self.last_gamma, self.last_tests = agr_tailored_vector(
            ctx.honest, ctx.f, aggregate, self.perturbation, self.gamma0, self.tau, ctx.byzantine
        )
        return rows_of(m, ctx.f)

    def __repr__(self) -> str:
        return f"AGRTailoredAttack(perturbation={self.perturbation!r}, gamma0={self.gamma0}, tau={self.tau})"


def rule_probe(ctx: AttackContext, who: str) -> Callable[[Tensor], Tensor]:
    """``G -> ctx.aggregator.evaluate(G, probe context)``: the round's context with a private generator,
    reset to one seed before every probe, and ``owns_batch = False`` (the probe batch is reused)."""
    if ctx.aggregator is None or not hasattr(ctx.aggregator, "evaluate"):
        raise ValueError(
            f"attack {who!r} searches against the defender's rule and needs ctx.aggregator (an Aggregator with .evaluate), got None"
        )
    g = ctx.generator
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
    probe_gen = torch.Generator(device=ctx.honest.device)
    if isinstance(ctx.aggregation, AggregationContext):
        agg_ctx = dataclasses.replace(ctx.aggregation, generator=probe_gen, owns_batch=False)
    else:
        agg_ctx = AggregationContext(round=ctx.round, params=ctx.params, generator=probe_gen)
    rule = ctx.aggregator

    def aggregate(G: Tensor) -> Tensor:
        probe_gen.manual_seed(seed)
        return rule.evaluate(G, agg_ctx)

    return aggregate
