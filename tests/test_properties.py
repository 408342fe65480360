"""Property-based tests of every registered rule and pre-aggregator under hostile values (hypothesis).

The rules are read from the registries when this module loads, so a rule registered later is covered
without new code (by the family property of its name, or by "the output is finite" for an unknown
name). Entries that cannot run on a plain batch are listed in ``SKIPPED`` with the reason, and that
reason is asserted. Each example: a random honest batch (float64, float32, float16 or bfloat16; d from
1 to 10,000; n at the rule's smallest admissible size or a few more), ``f`` of its rows replaced
by hostile rows (NaN, ±inf, 1e38, the dtype's maximum, rows whose norm overflows, rows a million
honest scales away, denormals, copies of an honest row) at random positions or first.
Deterministic (``derandomize``), bounded example counts.
"""

import math
import os
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import byzlearn.engine  # noqa: F401  (registers every rule, the DRACO entries included)
from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS, AggregationContext, build_aggregator
from byzlearn.learned import CoordinatewiseRNN, save_aggregator
from byzlearn.learned.preprocess import MAX_RATIO
from byzlearn.registry import ConfigError

# 40 examples per rule in CI; BYZLEARN_PROPERTY_EXAMPLES=N for a longer search (README, "Reliability")
SETTINGS = settings(
    derandomize=True,
    max_examples=int(os.environ.get("BYZLEARN_PROPERTY_EXAMPLES", "40")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
FAR = ["nan_row", "nan_entry", "inf", "-inf", "big", "max", "huge_norm", "far"]  # far from honest rows of scale 1
HOSTILE = FAR + ["denormal", "copy"]

# entries that cannot run on a plain gradient batch, and the words their refusal must contain
SKIPPED = {"draco_repetition": "runs only in the DRACO engine", "draco_cyclic": "runs only in the DRACO engine"}
# family of each known rule (an unknown, newer rule gets "finite")
FAMILY = {
    "mean": "mean",
    "median": "coordinatewise",
    "trimmed_mean": "coordinatewise",
    "krum": "krum",
    "multi_krum": "average",
    "mda": "average",
    "bulyan": "average",
    "geometric_median": "geometric_median",
    "centered_clipping": "centered_clipping",
    "zeno": "zeno",
    "learned": "learned",
    # Meamed averages the n-f values nearest the median: a near hostile value can pull it just outside
    # the honest range (so "average", not "coordinatewise"); far and non-finite values never enter.
    "meamed": "average",
    "faba": "average",
    # MoNNA trusts row idx (its guarantee needs it honest; here hostile rows may sit there) and CGE
    # keeps small-norm rows wherever they are: finite only here, their properties are in
    # tests/test_rules_monna_family.py
    "monna": "finite",
    "cge": "finite",
    # every kept row is clipped: to the lower median norm (SignGuard, at most the largest honest norm when
    # f < n/2), to tau (ClippedClustering), to the server update's norm (FLTrust)
    "signguard": "clipped_to_honest_norm",
    "clipped_clustering": "clipped_to_tau",
    "fltrust": "fltrust",
    # SMEA's chosen (n-f)-subset avoids every far row (their covariance dwarfs the honest one). CAF's
    # default (ByzFL's max over every row, capped at 1000 iterations) can leave in a far row much smaller
    # than another one, and DnC looks along one direction only: finite here, their robustness on the
    # batches they are built for is in tests/test_rules_spectral.py
    "smea": "average",
    "caf": "finite",
    "dnc": "finite",
}
RULES = sorted(set(AGGREGATORS.names()) - set(SKIPPED))
PRES = sorted(PREAGGREGATORS.names())


def test_every_registry_entry_is_tested_or_skipped_for_a_stated_reason():
    assert set(RULES) | set(SKIPPED) == set(AGGREGATORS.names()) and not set(RULES) & set(SKIPPED)
    for name, reason in SKIPPED.items():
        agg = build_aggregator({"name": name}, f_default=1)
        with pytest.raises(ConfigError, match=reason):
            agg(torch.zeros(3, 2))


# ---------------------------------------------------------------- context for the rules that need one
def public_loss(P: torch.Tensor) -> torch.Tensor:
    """A public-batch loss for Zeno and ARNN: half the mean squared distance to 1 (float64)."""
    return 0.5 * (P.double() - 1.0).square().mean(dim=1)


@pytest.fixture(scope="module")
def learned_paths(tmp_path_factory):
    """Untrained aggregators of both encoders (the paper's RNN, our set-ARNN) saved as ``byzlearn meta-train`` does."""
    root = tmp_path_factory.mktemp("learned")
    card = {
        "method": "learned",
        "p": 10.0,
        "preprocess": "seed",
        "loss_scale": 10.0,
        "output": "gradient",
        "step_scale": 0.1,
        "probe_lr": 0.5,
        "server_lr": 0.5,
        "probe": "step",
    }
    torch.manual_seed(0)
    save_aggregator(CoordinatewiseRNN(workers=24), card, root / "rnn")
    save_aggregator(CoordinatewiseRNN(encoder="set", loss_info=True), {**card, "preprocess": "floor"}, root / "set_arnn")
    return [str(root / "rnn"), str(root / "set_arnn")]


def build(name: str, f: int, learned_paths, variant: int = 0):
    extra = {"path": learned_paths[variant % 2]} if name == "learned" else {}
    return build_aggregator({"name": name, **extra}, f_default=f)


def smallest_n(agg, f: int) -> int:
    n = 2 * f + 1
    while agg.requirement(n) is not None:
        n += 1
    return max(n, 3)


# ---------------------------------------------------------------- batches
def hostile_row(kind: str, d: int, dtype: torch.dtype, honest: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    info = torch.finfo(dtype)
    sign = torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0).double()
    row = honest[0].double().clone()
    if kind == "nan_row":
        row[:] = math.nan
    elif kind == "nan_entry":
        row[torch.randint(d, (1,), generator=g)] = math.nan
    elif kind in ("inf", "-inf"):
        row[torch.randint(d, (1,), generator=g)] = math.inf if kind == "inf" else -math.inf
    elif kind == "big":
        row = 1e38 * sign  # +-inf in float16
    elif kind == "max":
        row = info.max * sign
    elif kind == "huge_norm":
        row = info.max / 2 * torch.ones(d, dtype=torch.float64)  # norm above the maximum once d >= 5
        row[0] = info.max / 2 if d == 1 else -info.max / 4
    elif kind == "far":  # finite, ~1e6 honest scales away (less where the dtype ends)
        scale = float(honest.double().abs().max()) or 1.0
        row = row + min(1e6 * scale, info.max / 4) * sign
    elif kind == "denormal":
        row = info.tiny / 8 * sign
    elif kind != "copy":
        raise AssertionError(kind)
    return row.to(dtype)


@dataclass
class Batch:
    G: torch.Tensor  # the batch handed to the rule
    honest: torch.Tensor  # its honest rows
    bad: list  # its hostile rows
    kinds: list  # their kinds
    f: int
    ctx: AggregationContext

    def far_or_copies(self) -> bool:
        """Every hostile row is non-finite, a copy of an honest row, or farther from every honest row
        than 10 honest diameters (a "big" row is not far from honest rows of scale 1e153)."""
        M = float(self.honest.double().abs().max()) or 1.0
        H = self.honest.double() / M
        diam = float(torch.cdist(H, H).max())
        for row in self.bad:
            x = row.double() / M
            if not bool(torch.isfinite(row).all()) or any(torch.equal(row, h) for h in self.honest):
                continue
            if not float((H - x).norm(dim=1).min()) > 10 * diam + 1e-12:
                return False
        return True


def batch(n_of, dtype, d, f, extra, scale, kinds, hostile_first, seed) -> Batch:
    """``n = n_of(f) + extra`` rows, ``f`` of them hostile (the first ``f`` kinds; f = 0: an honest batch),
    placed first or at random positions."""
    info = torch.finfo(dtype)
    kinds = kinds[:f]
    n = n_of(f) + extra
    # honest scales: ordinary ones, and ones whose squares overflow or underflow the dtype
    scale = {"1": 1.0, "1e-3": 1e-3, "1e2": 1e2, "sqrt(max)/4": math.sqrt(info.max) / 4, "sqrt(tiny)": math.sqrt(info.tiny)}[scale]
    g = torch.Generator().manual_seed(seed)
    honest = min(scale, 1.0) * 5.0 * (seed % 2) + scale * torch.randn(n - len(kinds), d, generator=g, dtype=torch.float64)
    honest = honest.to(dtype)
    bad = [hostile_row(k, d, dtype, honest, g) for k in kinds]
    rows = list(honest) + bad
    order = torch.arange(n).roll(len(kinds)) if hostile_first else torch.randperm(n, generator=g)
    G = torch.stack([rows[i] for i in order.tolist()])
    g0 = (honest.double() / honest.shape[0]).sum(0).to(dtype)  # FLTrust's server update: the honest mean
    ctx = AggregationContext(
        params=torch.zeros(d, dtype=dtype),
        lr=0.1,
        public_loss=public_loss,
        public_update=lambda: g0,
        generator=torch.Generator().manual_seed(1),
    )
    return Batch(G, honest, bad, kinds, f, ctx)


BATCHES = given(
    dtype=st.sampled_from(DTYPES),
    d=st.sampled_from([1, 2, 3, 17, 256, 10_000]),
    f=st.sampled_from([0, 1, 2, 2, 3, 3]),
    extra=st.integers(0, 3),
    scale=st.sampled_from(["1", "1e-3", "1e2", "sqrt(max)/4", "sqrt(max)/4", "sqrt(tiny)"]),
    kinds=st.lists(st.sampled_from(HOSTILE), min_size=3, max_size=3),
    hostile_first=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)


def tolerance(honest: torch.Tensor) -> float:
    """Rounding slack for an output computed from these honest values (in their dtype)."""
    return 8 * torch.finfo(honest.dtype).eps * (float(honest.double().abs().max()) + 1e-30) + 1e-300


def inside_honest_range(out: torch.Tensor, honest: torch.Tensor) -> bool:
    H = honest.double()
    tol = tolerance(honest)
    o = out.double()
    return bool(((o >= H.min(0).values - tol) & (o <= H.max(0).values + tol)).all())


# ---------------------------------------------------------------- the rules
def check_rule(name: str, agg, b: Batch):
    G, honest, kinds = b.G, b.honest, b.kinds
    out = agg(G.clone(), b.ctx)
    family = FAMILY.get(name, "finite")
    assert out.shape == (G.shape[1],) and out.dtype == G.dtype, name
    if family == "mean":  # not robust: the exact mean (without overflow) whenever every row is finite
        if bool(torch.isfinite(G).all()):
            ref = (G.double() / G.shape[0]).sum(0)
            slack = 4 * G.shape[0] * torch.finfo(G.dtype).eps * float(G.double().abs().max()) + 1e-300
            assert torch.isfinite(out).all() and bool(((out.double() - ref).abs() <= slack).all())
        return
    assert torch.isfinite(out).all(), (name, kinds, G.dtype)
    k, h = len(kinds), honest.shape[0]
    M = float(honest.double().abs().max()) or 1.0  # norms of honest rows near the float64 maximum: in units of M
    if family == "coordinatewise":  # Yin et al.: within the honest values of each coordinate, whatever the others
        assert inside_honest_range(out, honest), (name, kinds)
    elif family == "krum" and b.far_or_copies():  # the selected row is an honest one
        assert any(torch.equal(out, row) for row in honest), (name, kinds)
    elif family == "average" and b.far_or_copies():  # an average of honest rows only
        assert inside_honest_range(out, honest), (name, kinds)
    elif family == "zeno" and b.far_or_copies() and not inside_honest_range(out, honest):
        # Zeno filters by descent on the public loss, not by distance: a far row kept must descend. Each row it
        # averages scores at least the worst honest row (at most b >= k rows are dropped), so with this convex
        # loss the output's step is no worse than the worst honest step plus the honest rows' penalty.
        lr = b.ctx.lr
        rho = agg.rho if agg.rho is not None else lr / agg.rho_ratio
        H = honest.double()
        pen = H.square().mean(1) if agg.penalty == "mean_square" else H.square().sum(1)
        after = public_loss(-lr * torch.cat([H, out.double().unsqueeze(0)]))  # params are 0
        bound = float(after[:-1].max() + rho * pen.max())
        slack = 16 * torch.finfo(G.dtype).eps * (abs(bound) + float(after[-1].abs())) + 1e-300
        assert float(after[-1]) <= bound + slack, (name, kinds, float(after[-1]), bound)
    elif family == "geometric_median":  # breakdown bound: |z - c| <= r / sqrt(1 - (k/h)^2), honest rows in B(c, r)
        H = honest.double() / M
        c = H.mean(0)
        r = float((H - c).norm(dim=1).max())
        bound = r / math.sqrt(1 - (k / h) ** 2)
        dist = float((out.double() / M - c).norm())
        assert dist <= 1.01 * bound + tolerance(honest) / M * math.sqrt(G.shape[1]), (kinds, dist, bound)
    elif family in ("clipped_to_honest_norm", "clipped_to_tau", "fltrust"):  # a mean of rows clipped to a norm bound
        if family == "clipped_to_honest_norm":
            bound = float((honest.double() / M).norm(dim=1).max())
        elif family == "clipped_to_tau":
            import numpy as np

            bound = min(float(np.median(agg.history)), agg.max_tau) / M  # tau of this call (history includes it)
        else:
            bound = float((b.ctx.public_update().double() / M).norm())
        work_eps = torch.finfo(torch.float64 if G.dtype == torch.float64 else torch.float32).eps
        slack = 1 + 8 * torch.finfo(G.dtype).eps + 4 * G.shape[1] * work_eps
        assert float((out.double() / M).norm()) <= bound * slack + tolerance(honest) / M * math.sqrt(G.shape[1]), (name, kinds)
    elif family == "centered_clipping":  # iters steps of at most tau each from v_0 = 0
        assert float(out.double().norm()) <= agg.iters * agg.tau * (1 + 1e-2)
    elif family == "learned":  # rows beyond MAX_RATIO x the median norm are shortened: the aggregate cannot follow them
        top = float((honest.double() / M).norm(dim=1).max())
        bound = 5 * math.sqrt(G.shape[0]) * MAX_RATIO * top + tolerance(honest) / M
        assert float((out.double() / M).norm()) <= bound, (kinds,)


@pytest.mark.parametrize("name", RULES)
def test_rule_keeps_its_property_under_hostile_rows(name, learned_paths):
    cache = {}

    def get(f, variant):
        key = (f, variant % 2 if name == "learned" else 0)
        if key not in cache:
            cache[key] = build(name, f, learned_paths, variant)
        return cache[key]

    @SETTINGS
    @BATCHES
    def run(**kw):
        variant = kw["seed"] % 2  # learned: the paper's RNN or our set-ARNN
        b = batch(lambda f: smallest_n(get(f, variant), f), **kw)
        agg = get(b.f, variant)
        if hasattr(agg, "reset"):
            agg.reset()  # centered clipping: v_0 = 0 in every example
        check_rule(name, agg, b)

    run()


# ---------------------------------------------------------------- the pre-aggregators and chains
def check_pre(name: str, chain, b: Batch):
    G, honest, kinds, ctx = b.G, b.honest, b.kinds, b.ctx
    pre = chain.pre[0]
    rows = pre(G.clone(), ctx)
    out = chain(G.clone(), ctx)
    assert out.shape == (G.shape[1],) and out.dtype == G.dtype
    assert torch.isfinite(out).all(), (name, chain.rule.name, kinds, G.dtype)
    # rounding: of the output to its dtype, and of the norms (float32 for float16/bfloat16) over d entries
    work_eps = torch.finfo(torch.float64 if G.dtype == torch.float64 else torch.float32).eps
    tol = 1 + 8 * torch.finfo(G.dtype).eps + 4 * G.shape[1] * work_eps
    M = float(honest.double().abs().max()) or 1.0
    if name == "clipping":  # every row of norm at most c, non-finite rows zeroed
        assert torch.isfinite(rows).all() and bool((rows.double().norm(dim=1) <= pre.c * tol).all())
    elif name == "arc":  # the k >= f largest rows clipped to a norm that an honest row reaches
        top = float((honest.double() / M).norm(dim=1).max())
        assert torch.isfinite(rows).all() and bool(((rows.double() / M).norm(dim=1) <= top * tol + 1e-300).all())
    if chain.rule.name != "median":
        return
    if name == "clipping":  # clipping maps rows one by one: the median lies within the clipped honest rows
        assert inside_honest_range(out, pre(honest.clone(), ctx)), (name, kinds)
    elif name in ("bucketing", "nnm") and b.far_or_copies():  # honest buckets / honest rows mix honest rows only
        assert inside_honest_range(out, honest), (name, kinds)


@pytest.mark.parametrize("name", PRES)
@pytest.mark.parametrize("rule", ["mean", "median"])
def test_pre_aggregator_chain_stays_finite_and_robust(name, rule):
    if rule == "mean" and name in ("bucketing", "nnm"):
        pytest.skip(f"{name} + mean is not robust: a NaN row poisons its bucket / its own mixed row, which the mean keeps")

    def chain(f):
        return build_aggregator({"name": rule, "pre": [name]}, f_default=f)

    @SETTINGS
    @BATCHES
    def run(**kw):
        b = batch(lambda f: smallest_n(chain(f), f), **kw)
        check_pre(name, chain(b.f), b)

    run()
