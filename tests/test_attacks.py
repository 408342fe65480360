"""Tests of the attack catalogue: exact vectors from the definitions on hand-made honest batches,
random attacks' statistics and determinism, bit-level checks, Mimic's state, and the adaptive
attacks' search against the defender's rule (through ``evaluate``, leaving the rule's state alone)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from byzlearn.aggregators import AGGREGATORS, AggregationContext, Aggregator
from byzlearn.attacks import ATTACKS, AttackContext
from byzlearn.attacks.adaptive import line_maximize
from byzlearn.attacks.omniscient import alie_z
from byzlearn.registry import ConfigError, check_params

# four honest workers, three coordinates; mean (3, 3, 2)
HONEST = [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [2.0, 6.0, 0.0], [6.0, 2.0, 4.0]]
MU = [3.0, 3.0, 2.0]


def make_ctx(honest, f=2, own=None, aggregator=None, seed=0, n=None, round=0):
    honest = torch.as_tensor(honest, dtype=torch.float32) if not torch.is_tensor(honest) else honest
    if own is not None and not torch.is_tensor(own):
        own = torch.as_tensor(own, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    return AttackContext(
        n=n if n is not None else honest.shape[0] + f,
        f=f,
        round=round,
        honest=honest,
        own=own,
        params=torch.zeros(honest.shape[1]),
        aggregator=aggregator,
        generator=g,
    )


def build(name, **params):
    return ATTACKS.build(name, params, "attack")


def test_all_attacks_registered():
    expected = {
        "constant",
        "gaussian",
        "sign_flip",
        "zero",
        "dropped",
        "nan",
        "inf",
        "bit_flip",
        "alie",
        "ipm",
        "mimic",
        "alie_optimal",
        "ipm_optimal",
        "label_flip",
    }
    assert expected <= set(ATTACKS.names())
    for name in expected:  # every one builds from defaults alone
        build(name)


def test_config_types_are_checked():
    with pytest.raises(ConfigError, match="wrong type"):
        check_params(ATTACKS, "alie", {"z": "large"}, "attack")
    with pytest.raises(ConfigError, match="wrong type"):
        check_params(ATTACKS, "sign_flip", {"reference": "median"}, "attack")
    with pytest.raises(ConfigError, match="wrong type"):
        check_params(ATTACKS, "bit_flip", {"bits": "mantissa"}, "attack")
    with pytest.raises(ConfigError, match="unknown key"):
        check_params(ATTACKS, "ipm", {"eps": 0.5}, "attack")
    with pytest.raises(ConfigError):
        build("mimic", warmup=0)  # no target and no warmup: nothing to choose the target with


# -- crude attacks --------------------------------------------------------------------------------


def test_constant_exact():
    out = build("constant", magnitude=-100.0).forge(make_ctx(HONEST, f=3))
    assert out.shape == (3, 3) and out.dtype == torch.float32
    assert torch.equal(out, torch.full((3, 3), -100.0))
    assert torch.equal(build("constant").forge(make_ctx(HONEST, f=1)), torch.full((1, 3), 100.0))


def test_sign_flip_own_and_mean():
    own = [[1.0, -2.0, 0.5], [0.0, 4.0, -8.0]]
    out = build("sign_flip", scale=100.0).forge(make_ctx(HONEST, f=2, own=own))
    assert torch.equal(out, torch.tensor([[-100.0, 200.0, -50.0], [0.0, -400.0, 800.0]]))
    assert build("sign_flip").needs_own_gradients
    mean_flip = build("sign_flip", reference="mean")
    assert not mean_flip.needs_own_gradients and mean_flip.omniscient
    out = mean_flip.forge(make_ctx(HONEST, f=2))
    assert torch.equal(out, torch.tensor([[-3.0, -3.0, -2.0]] * 2))


def test_zero_dropped_nan_inf():
    ctx = make_ctx(HONEST, f=2)
    assert torch.equal(build("zero").forge(ctx), torch.zeros(2, 3))
    assert build("dropped").forge(ctx).shape == (0, 3)
    nan = build("nan").forge(ctx)
    assert nan.shape == (2, 3) and torch.isnan(nan).all()
    inf = build("inf").forge(ctx)
    assert inf.shape == (2, 3) and torch.isposinf(inf).all()


def test_gaussian_statistics_and_determinism():
    d = 100_000
    honest = torch.zeros(3, d)
    out = build("gaussian").forge(make_ctx(honest, f=2, seed=7))
    assert out.shape == (2, d)
    assert abs(float(out.mean())) < 200 * 5 / math.sqrt(2 * d)
    assert abs(float(out.std()) / 200.0 - 1) < 0.01
    assert not torch.equal(out[0], out[1])  # fresh draw per worker
    again = build("gaussian").forge(make_ctx(honest, f=2, seed=7))
    assert torch.equal(out, again)
    other = build("gaussian").forge(make_ctx(honest, f=2, seed=8))
    assert not torch.equal(out, other)
    shifted = build("gaussian", mean=5.0, std=2.0).forge(make_ctx(honest, f=2, seed=1))
    assert abs(float(shifted.mean()) - 5.0) < 0.05 and abs(float(shifted.std()) - 2.0) < 0.02
    around = build("gaussian", std=0.0, center="honest_mean").forge(make_ctx(HONEST, f=2))
    assert torch.allclose(around, torch.tensor([MU] * 2))


@pytest.mark.parametrize("bits,mask", [("sign", -(2**31)), ("exponent", 2**30), ("sign+exponent", -(2**31) + 2**30), (1, 1)])
def test_bit_flip_changes_exact_fraction_and_bits(bits, mask):
    g = torch.Generator().manual_seed(3)
    own = torch.randn(3, 1000, generator=g)
    attack = build("bit_flip", fraction=0.25, bits=bits)
    assert attack.needs_own_gradients
    out = attack.forge(make_ctx(torch.zeros(2, 1000), f=3, own=own))
    assert out.shape == own.shape and out.dtype == torch.float32
    diff = torch.bitwise_xor(own.view(torch.int32), out.view(torch.int32))
    changed = diff != 0
    assert changed.sum(dim=1).tolist() == [250, 250, 250]
    assert bool((diff[changed] == mask).all())
    assert changed[0].tolist() != changed[1].tolist()  # each worker picks its own coordinates
    if bits == "sign":
        assert torch.equal(out[changed], -own[changed])


def test_bit_flip_exponent_blows_up_small_values():
    own = torch.full((1, 10), 0.5)
    out = build("bit_flip", fraction=1.0, bits="exponent").forge(make_ctx(torch.zeros(2, 10), f=1, own=own))
    assert torch.equal(out, torch.full((1, 10), 2.0**127))  # exponent 126 -> 254


# -- ALIE / IPM -----------------------------------------------------------------------------------


def test_ipm_exact():
    out = build("ipm").forge(make_ctx(HONEST, f=3))
    assert torch.allclose(out, torch.tensor([[-0.3, -0.3, -0.2]] * 3))
    out = build("ipm", epsilon=2.0).forge(make_ctx(HONEST, f=1))
    assert torch.allclose(out, torch.tensor([[-6.0, -6.0, -4.0]]))


def test_alie_given_z_matches_numpy():
    X = np.array(HONEST)
    expected = X.mean(axis=0) - 1.5 * X.std(axis=0, ddof=1)
    out = build("alie", z=1.5).forge(make_ctx(HONEST, f=2))
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.tensor(np.stack([expected] * 2), dtype=torch.float32), atol=1e-6)


@pytest.mark.parametrize("n,f", [(25, 5), (51, 12), (10, 2), (20, 9)])
def test_alie_default_z_paper_formula(n, f):
    s = (n // 2 + 1) - f  # floor(n/2 + 1) for integer n
    assert alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), abs=1e-9)
    assert alie_z(n, f, "epfml") == pytest.approx(norm.ppf((n - f - s) / (n - f)), abs=1e-9)


def test_alie_default_z_known_values_and_forge():
    assert alie_z(25, 5) == pytest.approx(0.468, abs=1e-3)
    assert alie_z(25, 5, "epfml") == pytest.approx(0.253, abs=1e-3)
    assert alie_z(51, 12) == pytest.approx(0.599, abs=1e-3)
    X = np.array(HONEST)
    z = norm.ppf((6 - (6 // 2 + 1 - 2)) / 6)  # n = 6, f = 2: s = 2, z = Phi^-1(2/3)
    expected = X.mean(axis=0) - z * X.std(axis=0, ddof=1)
    out = build("alie").forge(make_ctx(HONEST, f=2, n=6))
    assert torch.allclose(out[1], torch.tensor(expected, dtype=torch.float32), atol=1e-6)
    with pytest.raises(ConfigError, match="set attack.z"):
        alie_z(4, 3)  # f >= floor(n/2 + 1): no supporters needed, z undefined


# -- Mimic ----------------------------------------------------------------------------------------


def _rows_equal_some_honest(out, honest):
    assert bool((out == out[0]).all())
    matches = [i for i in range(honest.shape[0]) if torch.equal(out[0], honest[i])]
    assert matches, "mimic must copy an honest row"
    return matches[0]


def test_mimic_copies_one_row_and_keeps_it_after_warmup():
    g = torch.Generator().manual_seed(0)
    attack = build("mimic", warmup=2)
    targets = []
    for r in range(5):
        honest = torch.randn(6, 20, generator=g)
        out = attack.forge(make_ctx(honest, f=3, seed=r, round=r))
        assert out.shape == (3, 20)
        targets.append(_rows_equal_some_honest(out, honest))
    assert targets[2] == targets[3] == targets[4] == targets[1]  # fixed after the warmup's last choice
    assert build("mimic", target=4).forge(make_ctx(torch.arange(12.0).reshape(6, 2), f=2))[0].tolist() == [8.0, 9.0]


def test_mimic_picks_an_extreme_worker_along_the_spread():
    # honest spread along one axis only: the power-iteration direction is +-e_0, so the target is the
    # worker with the largest or the smallest first coordinate
    a = torch.tensor([0.3, -2.0, 1.0, 4.0, -0.5])
    honest = torch.zeros(5, 4) + torch.tensor([1.0, 2.0, 3.0, 4.0])
    honest[:, 0] += a
    for seed in range(4):
        idx = _rows_equal_some_honest(build("mimic").forge(make_ctx(honest, f=2, seed=seed)), honest)
        assert idx in (int(a.argmax()), int(a.argmin()))


def test_mimic_state_round_trip():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(5, 8, generator=g) for _ in range(4)]
    a = build("mimic", warmup=3)
    for r in range(2):
        a.forge(make_ctx(batches[r], f=2, seed=r))
    state = a.state_dict()
    b = build("mimic", warmup=3)
    b.load_state_dict(state)
    for r in (2, 3):
        assert torch.equal(a.forge(make_ctx(batches[r], f=2, seed=r)), b.forge(make_ctx(batches[r], f=2, seed=r)))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["t"] == sb["t"] == 4 and sa["target"] == sb["target"]
    assert torch.equal(sa["z"], sb["z"]) and torch.equal(sa["mu"], sb["mu"])


# -- label flip -----------------------------------------------------------------------------------


def test_label_flip():
    attack = build("label_flip")
    assert attack.poisons_data and attack.needs_own_gradients
    y = torch.arange(10)
    assert attack.poison_labels(y, 10).tolist() == [9 - v for v in range(10)]
    assert attack.poison_labels(torch.tensor([0, 1, 2]), 3).tolist() == [2, 1, 0]
    own = torch.randn(2, 5)
    assert torch.equal(attack.forge(make_ctx(torch.zeros(3, 5), f=2, own=own)), own)


# -- adaptive -------------------------------------------------------------------------------------


def test_line_maximize_budget_and_quality():
    calls = []

    def objective(x):
        calls.append(x)
        return -((x - 37.0) ** 2)

    best, value = line_maximize(objective, evals=20, start=0.0, delta=10.0, ratio=0.8)
    assert len(calls) == 20 and min(calls) >= 0
    assert value == max(objective(x) for x in calls[:20]) and abs(best - 37.0) < 2.0


def test_line_maximize_byzfl_search_probes_only_above_its_best_point():
    """ByzFL 0.0.11's contraction (``_contraction_phase``) tries ``best + delta`` only: on a damage curve that
    peaks at 0.5 and is flat from 1 on (what clipping makes of IPM), it stays on the plateau at 10; the
    two-sided search walks back down and finds the peak. Probe sequence written out from ByzFL's code."""

    def damage(x):
        return 1.0 + x if x < 0.5 else (1.5 - 0.5 * (x - 0.5) if x < 1.5 else 1.2)  # 1.2 on the plateau, 1.5 at 0.5

    calls = []
    best, value = line_maximize(lambda x: calls.append(x) or damage(x), evals=20, search="byzfl")
    expected, b, dl = [0.0, 10.0], 10.0, 20.0 * 0.8  # 10 beats 0 (1.2 > 1.0), 30 does not: delta 20 * 0.8
    expected.append(30.0)
    while len(expected) < 20:
        expected.append(b + dl)
        dl *= 0.8
    assert calls == pytest.approx(expected) and best == 10.0 and value == 1.2
    hump = lambda x: -((x - 4.0) ** 2)  # noqa: E731  (10 is worse than 0: the contraction decides)
    one_sided, two_sided = line_maximize(hump, search="byzfl"), line_maximize(hump)
    assert one_sided[0] >= 6.0 and abs(two_sided[0] - 4.0) < 1.0 and two_sided[1] > one_sided[1]
    attack = ATTACKS.build("ipm_optimal", {"search": "byzfl"}, "attack")
    assert attack.search == "byzfl" and "search='byzfl'" in repr(attack)
    with pytest.raises(ConfigError, match="attack.search"):
        ATTACKS.build("alie_optimal", {"search": "down"}, "attack")


def test_line_maximize_nan_ranks_lowest():
    best, value = line_maximize(lambda x: float("nan") if x < 5 else -abs(x - 20.0), evals=20)
    assert best > 5 and value > -20


def _damage(honest, row, f):
    G = torch.cat([honest, row.expand(f, -1)])
    return float(torch.linalg.vector_norm(G.mean(0) - honest.mean(0)))


@pytest.mark.parametrize("name,default", [("alie_optimal", "alie"), ("ipm_optimal", "ipm")])
def test_optimal_attack_beats_default_against_mean(name, default):
    g = torch.Generator().manual_seed(2)
    honest = torch.randn(7, 50, generator=g) + 1.0
    f = 3
    mean_rule = AGGREGATORS.build("mean", {"f": f}, "aggregator")
    attack = build(name)
    out = attack.forge(make_ctx(honest, f=f, aggregator=mean_rule))
    assert out.shape == (f, 50) and bool((out == out[0]).all())
    found = _damage(honest, out[0], f)
    at_default = _damage(honest, build(default).forge(make_ctx(honest, f=f))[0], f)
    at_zero_strength = _damage(
        honest, (build("alie", z=0.0) if default == "alie" else build("ipm", epsilon=0.0)).forge(make_ctx(honest, f=f))[0], f
    )
    assert found >= at_default and found >= at_zero_strength and found > at_default
    assert attack.last_damage == pytest.approx(found, rel=1e-5)
    assert attack.last_strength > 0


class CountingMean(Aggregator):
    """A stateful test rule: the mean, plus a counter and a running memory updated by every call."""

    name = "counting_mean"

    def __init__(self, f=0):
        super().__init__(f)
        self.count = 0
        self.memory = torch.zeros(1)
        self.probes = 0  # not state: counts evaluate() calls

    def aggregate(self, G, ctx):
        self.count += 1
        self.memory = self.memory + G.mean()
        return G.mean(dim=0)

    def evaluate(self, G, ctx=None):
        self.probes += 1
        assert isinstance(ctx, AggregationContext)
        return super().evaluate(G, ctx)

    def state_dict(self):
        return {"count": self.count, "memory": self.memory.clone()}

    def load_state_dict(self, state):
        self.count, self.memory = state["count"], state["memory"].clone()


@pytest.mark.parametrize("name", ["alie_optimal", "ipm_optimal"])
def test_optimal_attack_probes_with_evaluate_and_keeps_state(name):
    rule = CountingMean(f=2)
    rule(torch.ones(4, 3))  # some prior state
    before = rule.state_dict()
    attack = build(name, evals=12)
    attack.forge(make_ctx(HONEST, f=2, aggregator=rule))
    assert rule.probes == 12
    after = rule.state_dict()
    assert after["count"] == before["count"] == 1 and torch.equal(after["memory"], before["memory"])


def test_optimal_attack_needs_aggregator():
    with pytest.raises(ValueError, match="aggregator"):
        build("alie_optimal").forge(make_ctx(HONEST, f=2))
