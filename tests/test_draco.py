"""DRACO: the codes on random matrices, and the guarantee in training (same parameters as plain SGD)."""

import pytest
import torch

from byzlearn import config as C
from byzlearn.aggregators import AGGREGATORS, build_aggregator
from byzlearn.coding import CyclicCode, assignment, repetition_groups
from byzlearn.coding import repetition as rep
from byzlearn.coding.simulator import DracoSimulator
from byzlearn.engine import Simulator, make_simulator
from byzlearn.registry import ConfigError

# ----------------------------------------------------------------------------------------- codes


@pytest.mark.parametrize("n,s", [(5, 2), (7, 2), (10, 3), (11, 2), (12, 1), (15, 5), (45, 5), (6, 0)])
def test_cyclic_code_structure_and_exact_decoding(n, s):
    code = CyclicCode(n, s)
    # worker i holds partitions i..i+2s mod n and its encoding row is zero elsewhere
    for i, window in enumerate(assignment("cyclic", n, s)):
        assert sorted(window.tolist()) == sorted(((i + torch.arange(2 * s + 1)) % n).tolist())
        mask = torch.ones(n, dtype=torch.bool)
        mask[window] = False
        assert bool((code.W[i, mask] == 0).all())
    # honest messages lie in span(C1): zero syndromes
    assert torch.allclose(code.C2H @ code.W, torch.zeros(2 * s, n, dtype=torch.complex128), atol=1e-8 * float(code.W.abs().max()))
    g = torch.Generator().manual_seed(n * 100 + s)
    G = torch.randn(n, 257, dtype=torch.float64, generator=g)
    truth = G.sum(0)
    M = code.encode(G)
    # encoding from each worker's own window equals W G
    copies = torch.stack([G[w] for w in code.window])
    torch.testing.assert_close(code.encode_windows(copies), M, rtol=1e-12, atol=1e-9)
    for bad_kind in ("constant", "random", "nan", "scaled"):
        B = M.clone()
        bad = torch.randperm(n, generator=g)[:s]
        if bad_kind == "constant":
            B[bad] = 240.0
        elif bad_kind == "random":
            B[bad] = 1e3 * torch.randn(s, B.shape[1], dtype=torch.float64, generator=g)
        elif bad_kind == "nan":
            B[bad] = float("nan")
        else:
            B[bad] *= -100
        total, status, errors = code.decode(B, g)
        assert status.trusted
        assert sorted(errors.tolist()) == sorted(bad.tolist())
        assert status.located == s
        assert float((total - truth).norm() / truth.norm()) < 1e-9


@pytest.mark.parametrize("n,s", [(7, 2), (10, 3), (15, 3), (45, 5)])
def test_cyclic_detects_more_than_s_errors(n, s):
    g = torch.Generator().manual_seed(1)
    G = torch.randn(n, 300, dtype=torch.float64, generator=g)
    M = CyclicCode(n, s).encode(G)
    correcting, detecting = CyclicCode(n, s), CyclicCode(n, s, correct=0)
    for w in range(s + 1, 2 * s + 1):
        for _ in range(3):
            B = M.clone()
            bad = torch.randperm(n, generator=g)[:w]
            B[bad] += 50 * torch.randn(w, B.shape[1], dtype=torch.float64, generator=g)
            total, status, _ = correcting.decode(B.clone(), g)
            assert status.status == "detected" and not status.trusted and bool((total == 0).all())
            assert detecting.decode(B.clone(), g)[1].status == "detected"
    # correct = 0 also detects any error pattern of weight <= 2s, even colinear (constant) ones
    for w in range(1, 2 * s + 1):
        B = M.clone()
        B[torch.randperm(n, generator=g)[:w]] = 240.0
        assert detecting.decode(B, g)[1].status == "detected"


def test_cyclic_decode_cost_is_linear_in_d_no_loops():
    code = CyclicCode(15, 3)
    g = torch.Generator().manual_seed(0)
    G = torch.randn(15, 40_000, dtype=torch.float64, generator=g)
    B = code.encode(G)
    B[[1, 5, 9]] = 7.0
    total, status, _ = code.decode(B, g)
    assert status.located == 3 and float((total - G.sum(0)).abs().max()) < 1e-8


def test_repetition_groups_and_vote():
    groups = repetition_groups(10, 1)  # r = 3: {0,1,2}, {3,4,5}, {6,7,8,9}
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert [a.tolist() for a in assignment("repetition", 10, 1)][9] == [6, 7, 8, 9]
    g = torch.Generator().manual_seed(0)
    P = torch.randn(10, 50, generator=g)
    M = rep.encode(P, groups)
    truth = sum(P[grp].sum(0) for grp in groups)
    B = M.clone()
    B[[0, 5, 9]] = torch.stack([torch.full((50,), float("nan")), 1e9 * torch.ones(50), -M[9]])
    total, status, ok = rep.decode(B, groups, s=1)
    assert torch.equal(total, truth) and status.status == "corrected" and status.located == 3 and bool(ok.all())
    # two adversaries in a group of 3 that disagree: no majority -> detected, not a silent candidate
    B = M.clone()
    B[[0, 1]] = torch.randn(2, 50, generator=g)
    total, status, ok = rep.decode(B, groups, s=1)
    assert status.status == "detected" and status.failed_groups == 1 and ok.tolist() == [False, True, True]
    # tolerance mode: replicas that differ by rounding still vote together
    B = M.clone()
    B[[3, 4]] += 1e-7 * torch.randn(2, 50, generator=g)
    assert rep.decode(B, groups, s=1)[1].status == "detected"  # exact mode: three different values, no majority
    assert rep.decode(B, groups, s=1, tolerance=1e-5)[1].status == "ok"


def test_repetition_exact_mode_needs_s_plus_one_identical():
    groups = repetition_groups(3, 1)
    M = torch.ones(3, 4)
    M[1] += 1e-6
    M[2] += 2e-6
    assert rep.decode(M, groups, s=1)[1].status == "detected"
    assert rep.decode(M, groups, s=1, tolerance=1e-5)[1].trusted


# ---------------------------------------------------------------------------------- training

BASE = ["workers.batch_size=6", "workers.byzantine_set=redraw", "optimizer.lr=0.5", "train.seed=3"]


def _sim(overrides, dataset, double=False):
    sim = make_simulator(C.load(None, BASE + overrides), dataset)
    if double:
        sim.theta.data = sim.theta.data.double()
        sim.x_train = sim.x_train.double()
        sim.x_test = sim.x_test.double()
    return sim


def _train(sim, rounds=4):
    for _ in range(rounds):
        sim.step()
    return sim.theta.detach().clone()


ATTACKS = [
    ["attack.name=constant", "attack.magnitude=240"],
    ["attack.name=sign_flip", "attack.scale=100"],
    ["attack.name=gaussian"],
    ['attack.name="nan"'],
    ["attack.name=dropped"],
]


@pytest.mark.parametrize("n,s", [(9, 1), (10, 3), (11, 2)])
def test_repetition_training_equals_adversary_free_sgd(digits, n, s):
    plain = _train(_sim([f"workers.n={n}"], digits))
    clean = _train(_sim([f"workers.n={n}", "aggregator.name=draco_repetition", f"aggregator.s={s}"], digits))
    assert float((clean - plain).norm() / plain.norm()) < 1e-6  # summation order only (float32)
    for attack in ATTACKS:
        for f in (1, s):
            cfg = [f"workers.n={n}", "aggregator.name=draco_repetition", f"aggregator.s={s}", f"workers.byzantine={f}", *attack]
            sim = _sim(cfg, digits)
            theta = _train(sim)
            assert torch.equal(theta, clean), (attack, f)  # bit-identical: the adversaries changed nothing
            assert sim.aggregator.counters["rounds_detected"] == 0


def test_repetition_replicated_compute_votes_on_independent_replicas(digits):
    cfg = ["workers.n=10", "aggregator.name=draco_repetition", "aggregator.s=3", "aggregator.compute=replicated"]
    clean = _train(_sim(cfg, digits), 3)
    sim = _sim(cfg + ["workers.byzantine=3", "attack.name=gaussian"], digits)
    assert torch.equal(_train(sim, 3), clean)
    assert sim.aggregator.counters["errors_located"] == 9 and sim.aggregator.counters["rounds_detected"] == 0


@pytest.mark.parametrize("n,s", [(9, 1), (10, 3), (11, 2), (7, 3)])
def test_cyclic_training_equals_adversary_free_sgd_float64(digits, n, s):
    plain = _train(_sim([f"workers.n={n}"], digits, double=True))
    for attack in ATTACKS:
        cfg = [f"workers.n={n}", "aggregator.name=draco_cyclic", f"aggregator.s={s}", f"workers.byzantine={s}", *attack]
        sim = _sim(cfg, digits, double=True)
        theta = _train(sim)
        assert theta.dtype == torch.float64
        assert float((theta - plain).norm() / plain.norm()) < 1e-6, attack
        assert sim.aggregator.counters["rounds_corrected"] == 4


def test_cyclic_replicated_float32(digits):
    plain = _train(_sim(["workers.n=10"], digits))
    cfg = [
        "workers.n=10",
        "aggregator.name=draco_cyclic",
        "aggregator.s=2",
        "aggregator.compute=replicated",
        "workers.byzantine=2",
        "attack.name=sign_flip",
        "attack.scale=100",
    ]
    theta = _train(_sim(cfg, digits))
    assert float((theta - plain).norm() / plain.norm()) < 1e-5


def test_beyond_s_detected_then_skipped_or_fallback(digits):
    n, s = 15, 2
    cfg = [f"workers.n={n}", "aggregator.name=draco_cyclic", f"aggregator.s={s}", "workers.byzantine=4", "attack.name=gaussian"]
    sim = _sim(cfg, digits)
    theta0 = sim.theta.detach().clone()
    _train(sim, 3)
    c = sim.aggregator.counters
    assert c["rounds_detected"] == 3 and c["rounds_skipped"] == 3
    assert torch.equal(sim.theta, theta0)  # garbage was not applied
    m = sim.extra_metrics()
    assert m["draco_rounds_detected"] == 3 and "draco_decode_ms" in m
    fb = _sim(cfg + ["aggregator.fallback=geometric_median"], digits)
    _train(fb, 3)
    assert fb.aggregator.counters["fallback_used"] == 3 and not torch.equal(fb.theta, theta0)
    assert bool(torch.isfinite(fb.theta).all())


def test_config_and_engine_selection(digits, tmp_path):
    assert {"draco_repetition", "draco_cyclic"} <= set(AGGREGATORS.names())
    agg = build_aggregator({"name": "draco_cyclic", "s": 2}, f_default=1)
    with pytest.raises(ConfigError, match="DRACO engine"):
        agg(torch.zeros(5, 3))
    with pytest.raises(ConfigError, match="2s \\+ 1"):
        _sim(["workers.n=4", "aggregator.name=draco_repetition", "aggregator.s=2"], digits)
    with pytest.raises(ConfigError, match="fallback"):
        build_aggregator({"name": "draco_repetition", "fallback": "nope"}, f_default=1)
    assert type(_sim(["workers.n=5"], digits)) is Simulator
    assert isinstance(_sim(["workers.n=5", "aggregator.name=draco_cyclic", "aggregator.s=1"], digits), DracoSimulator)
    from byzlearn.experiments.runner import run

    cfg = C.load(
        None,
        BASE
        + [
            "workers.n=7",
            "aggregator.name=draco_cyclic",
            "aggregator.s=1",
            "workers.byzantine=1",
            "train.rounds=4",
            "train.eval_every=2",
            "data.name=digits",
            "attack.name=constant",
        ],
    )
    summary = run(cfg, tmp_path / "r", progress=False)
    assert summary["draco_rounds_corrected"] == 4 and summary["draco_rounds_detected"] == 0
