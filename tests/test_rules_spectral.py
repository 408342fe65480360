"""CAF, SMEA and DnC: the spec's worked examples, naive d x d references (numpy ``eigh`` of the
covariance, ``torch.linalg.svd``), brute-force subset search, ByzFL's recorded outputs, invariances,
robustness, hostile values, requirements, dtypes and seeded randomness.

ByzFL agreement (``tests/data/byzfl_rules.json``, recorded from ByzFL 0.0.11 by
``/work/byzfl-venv/bin/python benchmarks/record_byzfl_rules.py --rules caf smea``):

- ``d = 1`` (numpy float64 input): ByzFL's power step from ``v0 = +-1`` is exact there, so both our
  modes must give ByzFL's output to rounding. CAF needs ``max_iter`` above the default cap for one
  case (ByzFL runs 100,104 iterations there; the default ``CAF_MAX_ITER`` = 1000 stops earlier and
  the output differs by 7.6e-3, which is asserted too).
- ``d > 1`` (torch float32 input after ``torch.manual_seed(seed)``): ByzFL draws ``torch.randn(d)``
  from torch's global generator, which our ``power="byzfl"`` reproduces bit for bit with
  ``torch.Generator().manual_seed(seed)``; the outputs then agree to float32 rounding. The exact
  mode is checked against numpy ``eigh`` of the d x d covariance instead.
"""

import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import byzlearn.aggregators.dnc as DN
import byzlearn.aggregators.spectral as SP
from byzlearn.aggregators import AGGREGATORS, AggregationContext, build_aggregator
from byzlearn.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from record_byzfl_rules import checksum, make_batch  # noqa: E402  (pure Python, no ByzFL import)

BIG = 10**6  # a max_iter above every recorded ByzFL run


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def rand(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# naive references: the definitions in d-space
# ------------------------------------------------------------------------------------------------
def ref_caf(X, f, tau_max="all", max_iter=BIG):
    """CAF with numpy ``eigh`` of the d x d weighted covariance: ``(output, lambdas)``."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    c, best, lam_best, lams = np.ones(n), X.mean(0), np.inf, []
    while c.sum() > n - 2 * f and len(lams) < max_iter:
        mu = c @ X / c.sum()
        D = X - mu
        evals, evecs = np.linalg.eigh((D.T * c) @ D / c.sum())
        lam, v = max(evals[-1], 0.0), evecs[:, -1]
        lams.append(lam)
        if lam < lam_best:
            lam_best, best = lam, mu
        if lam <= 0:
            break
        tau = (D @ v) ** 2
        top = tau.max() if tau_max == "all" else tau[c > 0].max()
        c = c * (1 - tau / top)
    return best, lams


def ref_caf_byzfl(X, f, generator):
    """ByzFL 0.0.11's CAF loop verbatim (one power step per iteration), drawing from ``generator``."""
    X = X.double()
    n, d = X.shape
    c, lam_best, best = torch.ones(n, dtype=torch.float64), math.inf, None
    while float(c.sum()) > n - 2 * f:
        mu = (c[:, None] * X).sum(0) / c.sum()
        D = X - mu
        v0 = torch.randn(d, generator=generator).double()
        v0 = v0 / v0.norm()
        w = (c[:, None] * D * (D @ v0)[:, None]).sum(0) / c.sum()
        v = w / w.norm()
        lam = float(v @ w)
        if lam < lam_best:
            lam_best, best = lam, mu
        tau = (D @ v) ** 2
        c = c * (1 - tau / tau.max())
    return best


def ref_smea(X, f):
    """Brute force: numpy ``eigvalsh`` of every subset's covariance, the first smallest."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    best, best_lam = None, np.inf
    for S in itertools.combinations(range(n), n - f):
        Y = X[list(S)]
        D = Y - Y.mean(0)
        lam = np.linalg.eigvalsh(D.T @ D / len(S))[-1]
        if lam < best_lam:
            best, best_lam = list(S), lam
    return best, best_lam


def ref_dnc_good(X, f, b, niters, c, generator):
    """fedlib's DnC loop (``torch.linalg.svd``), the same ``randperm`` draws."""
    n, d = X.shape
    good = set(range(n))
    for _ in range(niters):
        r = torch.randperm(d, generator=generator)[:b]
        Y = X[:, r].double()
        Yc = Y - Y.mean(0)
        v = torch.linalg.svd(Yc, full_matrices=False)[2][0]
        s = (Yc @ v) ** 2
        good &= set(torch.argsort(s, stable=True)[: n - int(c * f)].tolist())
    return good


# ------------------------------------------------------------------------------------------------
# the spec's worked examples
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("power", ["exact", "byzfl"])
def test_caf_spec_example_d1(power):
    X = t64([[0], [1], [2], [10]])
    a, lams = SP.caf_weights(X, 1, power=power, generator=gen(0))
    assert len(lams) == 37
    assert abs(float(SP.caf(X, 1, power=power, generator=gen(0))) - 1.10818684) < 5e-9
    # iteration 1: mu = 3.25, then c = [0.7682, 0.8889, 0.9657, 0]; iteration 2's mean has the smaller lambda
    a2, lams2 = SP.caf_weights(X, 1, power=power, max_iter=2)
    assert abs(lams2[0] - float(X.var(unbiased=False))) < 1e-12 and lams2[1] < lams2[0]
    c1 = (a2 / a2.max() * 0.9657).tolist()
    assert [round(x, 4) for x in c1] == [0.7682, 0.8889, 0.9657, 0.0]


def test_smea_spec_example():
    X = t64([[0], [1], [2], [10]])
    S, lam = SP.smea_subset(X, 1)
    assert S == [0, 1, 2] and abs(lam - 2 / 3) < 1e-12
    assert float(SP.smea(X, 1)) == 1.0
    assert float(SP.smea(X, 1, power="byzfl", generator=gen(3))) == 1.0


def test_dnc_spec_example():
    X = t64([[1, 0], [1.1, 0.1], [0.9, -0.1], [5, 5]])
    assert DN.dnc_good(X, 1).tolist() == [True, True, True, False]
    torch.testing.assert_close(DN.dnc(X, 1), t64([1.0, 0.0]), atol=1e-15, rtol=0)
    # the scores of the spec: lambda u_i^2 from the 4 x 4 Gram = ((Y_i - mu) . v)^2 from the SVD
    Yc = X - X.mean(0)
    v = torch.linalg.svd(Yc, full_matrices=False)[2][0]
    torch.testing.assert_close((Yc @ v) ** 2, t64([2.5625, 2.1322, 3.0323, 23.0625]), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------
# exact eigenvalues from the Gram = numpy's d x d covariance; brute-force subsets; fedlib's DnC
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau_max", ["all", "active"])
@pytest.mark.parametrize("seed", range(8))
def test_caf_exact_matches_dxd_eigh_reference(seed, tau_max):
    n, d = 6 + seed % 4, 1 + seed % 5
    f = (n - 1) // 2 if seed % 2 else 1
    X = rand(n, d, seed)
    X[:f] += 3.0  # a cluster the filter must work through
    a, lams = SP.caf_weights(X, f, tau_max=tau_max, max_iter=BIG)
    ref, ref_lams = ref_caf(X.numpy(), f, tau_max)
    assert len(lams) == len(ref_lams)
    np.testing.assert_allclose(lams, ref_lams, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(SP.caf(X, f, tau_max=tau_max, max_iter=BIG).numpy(), ref, rtol=1e-9, atol=1e-12)
    if tau_max == "active":
        assert len(lams) <= 2 * f  # each iteration zeroes a weighted row


@pytest.mark.parametrize("seed", range(6))
def test_caf_byzfl_mode_is_byzfl_loop_with_the_same_draws(seed):
    n, d, f = 7 + seed, 2 + seed, 1 + seed % 3
    X = rand(n, d, seed)
    X[0] += 4.0
    ours = SP.caf(X, f, power="byzfl", generator=gen(seed), max_iter=BIG)
    torch.testing.assert_close(ours, ref_caf_byzfl(X, f, gen(seed)), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_smea_choice_is_brute_force(seed):
    n, d = 5 + seed % 4, 1 + seed % 4
    f = [0, 1, (n - 1) // 2][seed % 3]
    X = rand(n, d, seed)
    X[: min(f, 2)] += 2.5
    S, lam = SP.smea_subset(X, f)
    ref_S, ref_lam = ref_smea(X.numpy(), f)
    assert S == ref_S
    assert abs(lam - ref_lam) <= 1e-10 * max(1.0, ref_lam)
    torch.testing.assert_close(SP.smea(X, f), X[ref_S].mean(0), rtol=1e-12, atol=1e-14)


def test_smea_ties_pick_the_first_subset():
    X = t64([[0.0], [1.0], [2.0], [3.0]])  # {0,1,2} and {1,2,3} tie exactly
    assert SP.smea_subset(X, 1)[0] == [0, 1, 2]


@pytest.mark.parametrize("seed", range(4))
def test_smea_byzfl_mode_is_the_byzfl_estimate(seed):
    n, d, f = 6, 3 + seed, 2
    X = rand(n, d, seed)
    g = gen(seed)
    best, best_lam = None, math.inf
    for S in itertools.combinations(range(n), n - f):  # ByzFL's loop
        Y = X[list(S)]
        D = Y - Y.mean(0)
        v0 = torch.randn(d, generator=g).double()
        v0 = v0 / v0.norm()
        w = (D * (D @ v0)[:, None]).sum(0)
        lam = float((w / w.norm()) @ w)
        if lam < best_lam:
            best, best_lam = list(S), lam
    S, lam = SP.smea_subset(X, f, power="byzfl", generator=gen(seed))
    assert S == best and abs(lam - best_lam / (n - f)) < 1e-10


@pytest.mark.parametrize("seed", range(5))
def test_dnc_matches_fedlib_loop_with_the_same_permutations(seed):
    n, d, f, b = 9, 40, 2, 7 + seed
    X = rand(n, d, seed)
    X[:f, : d // 2] += 1.5
    good = DN.dnc_good(X, f, b=b, niters=3, generator=gen(seed))
    assert set(torch.nonzero(good).flatten().tolist()) == ref_dnc_good(X, f, b, 3, 1.0, gen(seed))


# ------------------------------------------------------------------------------------------------
# ByzFL's recorded outputs
# ------------------------------------------------------------------------------------------------
def byzfl_cases(rule):
    doc = json.loads((ROOT / "tests" / "data" / "byzfl_rules.json").read_text())
    assert doc["recorded_with"]["byzfl"] == "0.0.11"
    cases = doc[rule]
    assert len(cases) >= 20
    for c in cases:
        rows = make_batch(c["seed"], c["n"], c["d"], c["shift"])
        assert checksum(rows) == c["checksum"]
        c["rows"] = rows
    return cases


@pytest.mark.parametrize("power", ["exact", "byzfl"])
def test_caf_agrees_with_byzfl_at_d1(power):
    cases = [c for c in byzfl_cases("caf") if c["d"] == 1]
    assert len(cases) == 8
    capped = []
    for c in cases:
        X = t64(c["rows"])
        ref = t64(c["output"])
        out = SP.caf(X, c["f"], power=power)  # the default cap
        if len(SP.caf_weights(X, c["f"], power=power)[1]) < SP.CAF_MAX_ITER:
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
            continue
        capped.append(float((out - ref).abs().max()))
        if power == "exact":  # without the cap: ByzFL's 100,104 iterations, ByzFL's output
            a, lams = SP.caf_weights(X, c["f"], max_iter=BIG)
            assert len(lams) == 100_104
            torch.testing.assert_close(a @ X, ref, rtol=1e-12, atol=1e-12)
    assert len(capped) == 1 and 1e-3 < capped[0] < 1e-2  # the default cap stops that case early


def test_caf_byzfl_mode_agrees_with_byzfl_at_d_above_1():
    cases = [c for c in byzfl_cases("caf") if c["d"] > 1]
    assert len(cases) == 16
    moved = 0
    for c in cases:
        X = torch.tensor(c["rows"], dtype=torch.float32)
        ref = t64(c["output"])
        out = SP.caf(X, c["f"], power="byzfl", generator=gen(c["torch_seed"]), max_iter=BIG)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
        other = SP.caf(X, c["f"], power="byzfl", generator=gen(c["torch_seed"] + 1), max_iter=BIG)
        moved += float((other.double() - ref).abs().max()) > 1e-4
    assert moved >= 8  # the draws matter: another seed gives another output


@pytest.mark.parametrize("power", ["exact", "byzfl"])
def test_smea_agrees_with_byzfl(power):
    cases = byzfl_cases("smea")
    for c in cases:
        if c["d"] == 1:
            X, g = t64(c["rows"]), None
        elif power == "byzfl":
            X, g = torch.tensor(c["rows"], dtype=torch.float32), gen(c["torch_seed"])
        else:  # the exact mode at d > 1: against the brute-force d x d eigh reference (ByzFL's estimate is random)
            X = t64(c["rows"])
            if c["d"] > 10:
                continue  # d = 100: the d x d reference is slow; the byzfl mode covers these cases
            torch.testing.assert_close(SP.smea(X, c["f"]), X[ref_smea(X.numpy(), c["f"])[0]].mean(0), rtol=1e-12, atol=1e-14)
            continue
        out = SP.smea(X, c["f"], power=power, generator=g)
        torch.testing.assert_close(out.double(), t64(c["output"]), rtol=0, atol=1e-12 if c["d"] == 1 else 1e-6)


# ------------------------------------------------------------------------------------------------
# invariances
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_row_permutation_invariance(seed):
    n, d, f = 8, 4, 3
    X = rand(n, d, seed)
    X[:2] += 2.0
    perm = torch.randperm(n, generator=gen(100 + seed))
    for fn in (lambda Y: SP.caf(Y, f, max_iter=BIG), lambda Y: SP.caf(Y, f, tau_max="active"), lambda Y: SP.smea(Y, f)):
        torch.testing.assert_close(fn(X[perm]), fn(X), rtol=1e-9, atol=1e-11)
    assert SP.smea_subset(X[perm], f)[0] == sorted(torch.argsort(perm)[SP.smea_subset(X, f)[0]].tolist())


@pytest.mark.parametrize("seed", range(3))
def test_translation_equivariance(seed):
    n, d, f = 9, 5, 2
    X = rand(n, d, seed)
    X[:f] += 3.0
    t = 50.0 * rand(1, d, 200 + seed)[0]
    fns = {
        "caf": lambda Y: SP.caf(Y, f, max_iter=BIG),
        "caf_byzfl": lambda Y: SP.caf(Y, f, power="byzfl", generator=gen(seed)),
        "smea": lambda Y: SP.smea(Y, f),
        "dnc": lambda Y: DN.dnc(Y, f, b=3, niters=4, generator=gen(seed)),
    }
    for name, fn in fns.items():
        torch.testing.assert_close(fn(X + t), fn(X) + t, rtol=1e-9, atol=1e-9, msg=name)


# ------------------------------------------------------------------------------------------------
# robustness: f far outliers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("far", [1e3, 1e6, 1e30])
def test_far_outliers_are_filtered(far):
    n, d, f = 10, 6, 3
    honest = rand(n - f, d, 7)
    direction = torch.ones(d, dtype=torch.float64) / math.sqrt(d)
    bad = torch.stack([far * (1 + k) * direction for k in range(f)])  # a line of outliers
    X = torch.cat([bad, honest])
    mean = honest.mean(0)
    torch.testing.assert_close(SP.smea(X, f), mean, rtol=1e-12, atol=1e-12)
    for out in (SP.caf(X, f, tau_max="active"), SP.caf(X, f)):
        assert float((out - mean).norm()) < 0.3 * float((honest - mean).norm(dim=1).max())
    # DnC looks along one direction from the mean of all rows: the middle of a line of outliers can
    # score below honest rows, so it gets a cluster (the paper's attacks move the f rows together)
    Y = torch.cat([far * direction + 0.1 * rand(f, d, 8), honest])
    torch.testing.assert_close(DN.dnc(Y, f), mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(DN.dnc(Y, f, b=2, generator=gen(1)), mean, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(DN.dnc(X, f), mean)  # the line defeats it at this size


def test_caf_default_cap_with_a_far_zero_weight_row():
    """One row 1e6 away: after it is zeroed it keeps the largest tau, so ByzFL's loop runs ~1e12
    iterations; the default cap stops at 1000 and the output is a near-uniform mean of the honest rows."""
    honest = rand(9, 4, 3)
    X = torch.cat([1e6 * torch.ones(1, 4, dtype=torch.float64), honest])
    a, lams = SP.caf_weights(X, 2)
    assert len(lams) == SP.CAF_MAX_ITER and float(a[0]) == 0.0
    assert float((SP.caf(X, 2) - honest.mean(0)).norm()) < 1e-3
    assert len(SP.caf_weights(X, 2, tau_max="active")[1]) <= 4


def test_caf_default_keeps_a_far_row_next_to_a_much_farther_one():
    """ByzFL's max over every row: once the 1e38 row is zeroed it holds max tau, so the 1e6 row loses
    almost no weight (the documented limitation); the max over weighted rows removes both."""
    honest = rand(5, 3, 0)
    X = torch.cat([1e38 * torch.ones(1, 3, dtype=torch.float64), 1e6 * torch.ones(1, 3, dtype=torch.float64), honest])
    assert float(SP.caf(X, 2).min()) > 1e5
    out = SP.caf(X, 2, tau_max="active")
    assert bool((out >= honest.min(0).values).all() and (out <= honest.max(0).values).all())


# ------------------------------------------------------------------------------------------------
# hostile values
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["nan", "inf", "-inf", "nan_entry", "huge"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_non_finite_and_huge_rows(kind, dtype):
    n, d, f = 9, 5, 3
    honest = rand(n - f, d, 11, dtype)
    bad = torch.zeros(f, d, dtype=dtype)
    if kind == "nan":
        bad[:] = math.nan
    elif kind in ("inf", "-inf"):
        bad[:, 1] = math.inf if kind == "inf" else -math.inf
    elif kind == "nan_entry":
        bad = honest[:f].clone()
        bad[:, 2] = math.nan
    else:
        bad[:] = torch.finfo(dtype).max / 2
    X = torch.cat([honest[:2], bad, honest[2:]])
    mean = honest.double().mean(0)
    outs = {
        "caf": SP.caf(X, f),
        "caf_byzfl": SP.caf(X, f, power="byzfl", generator=gen(0)),
        "smea": SP.smea(X, f),
        "smea_byzfl": SP.smea(X, f, power="byzfl", generator=gen(0)),
        "dnc": DN.dnc(X, f),
        "dnc_sub": DN.dnc(X, f, b=2, generator=gen(0)),
    }
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for name, out in outs.items():
        assert out.dtype == dtype and bool(torch.isfinite(out).all()), (name, kind)
        assert bool((out.double() >= honest.double().min(0).values - tol).all()), name
        assert bool((out.double() <= honest.double().max(0).values + tol).all()), name
    for name in ("smea", "smea_byzfl", "dnc", "dnc_sub"):  # the f bad rows are never chosen / never good
        torch.testing.assert_close(outs[name].double(), mean, rtol=0, atol=tol, msg=name)


def test_all_rows_non_finite_and_f0():
    X = torch.full((3, 2), math.nan, dtype=torch.float64)
    assert bool(torch.isnan(SP.caf(X, 0)).all()) and bool(torch.isnan(SP.smea(X, 0)).all())
    assert torch.equal(DN.dnc(X, 0), torch.zeros(2, dtype=torch.float64))  # no good row: no update
    Y = rand(5, 3, 2)
    for out in (SP.caf(Y, 0), SP.smea(Y, 0), DN.dnc(Y, 0)):
        torch.testing.assert_close(out, Y.mean(0), rtol=1e-12, atol=1e-14)  # f = 0: the mean (ByzFL's CAF: None)


def test_identical_rows_stop_at_lambda_zero():
    X = torch.ones(5, 3, dtype=torch.float64)
    a, lams = SP.caf_weights(X, 2)
    assert lams == [0.0] and torch.equal(SP.caf(X, 2), X[0])
    assert torch.equal(SP.caf(X, 2, power="byzfl", generator=gen(0)), X[0])


def test_dnc_empty_good_set_gives_zero():
    X = rand(4, 30, 5)
    for seed in range(50):  # niters * floor(c f) = 6 >= n: some draws leave no good row
        if not bool(DN.dnc_good(X, 2, b=1, niters=3, c=1.0, generator=gen(seed)).any()):
            assert torch.equal(DN.dnc(X, 2, b=1, niters=3, generator=gen(seed)), torch.zeros(30, dtype=torch.float64))
            return
    pytest.fail("no draw emptied the good set")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_returns_its_dtype(dtype):
    X = rand(9, 6, 4).to(dtype)
    X[0] = 100.0
    ref = X.double()
    pairs = {"caf": (SP.caf(X, 2), SP.caf(ref, 2)), "smea": (SP.smea(X, 2), SP.smea(ref, 2)), "dnc": (DN.dnc(X, 2), DN.dnc(ref, 2))}
    for name, (out, want) in pairs.items():
        assert out.dtype == dtype and bool(torch.isfinite(out).all()), name
        torch.testing.assert_close(out.double(), want, rtol=0, atol=0.05, msg=name)


# ------------------------------------------------------------------------------------------------
# requirements and configuration
# ------------------------------------------------------------------------------------------------
def test_requirements_value_error_and_config_error():
    X = torch.zeros(5, 2)
    for fn in (SP.caf, SP.smea):
        with pytest.raises(ValueError, match=r"f < n/2 .*n=5, f=3"):
            fn(X, 3)
    with pytest.raises(ValueError, match=r"dnc requires n - floor\(c\*f\) >= 1"):
        DN.dnc(X, 5)
    DN.dnc(X, 5, c=0.5)  # floor(2.5) = 2 rows dropped: allowed
    for name, f in (("caf", 3), ("smea", 3), ("dnc", 5)):
        agg = build_aggregator({"name": name}, f_default=f)
        assert agg.requirement(5) is not None and agg.requirement(11) is None
        with pytest.raises(ConfigError, match=f"aggregator {name!r} cannot run with n=5"):
            agg(X)


def test_smea_subset_cap():
    assert math.comb(30, 14) > SP.SMEA_MAX_SUBSETS >= math.comb(23, 11)
    with pytest.raises(ValueError, match="2,000,000.*use caf"):
        SP.smea(torch.zeros(30, 2), 14)
    agg = build_aggregator({"name": "smea"}, f_default=14)
    assert "2,000,000" in agg.requirement(30)
    with pytest.raises(ConfigError, match="C\\(n, f\\)"):
        agg(torch.zeros(30, 2))


@pytest.mark.parametrize(
    "section",
    [
        {"name": "caf", "power": "lanczos"},
        {"name": "caf", "max_iter": 0},
        {"name": "caf", "tau_max": "some"},
        {"name": "smea", "power": "power"},
        {"name": "dnc", "b": 0},
        {"name": "dnc", "niters": 0},
        {"name": "dnc", "c": -1.0},
        {"name": "dnc", "c": math.inf},
    ],
)
def test_bad_parameters_are_config_errors(section):
    with pytest.raises(ConfigError):
        build_aggregator(section, f_default=1)


def test_function_parameter_checks():
    X = rand(5, 2, 0)
    with pytest.raises(ValueError, match="power"):
        SP.caf(X, 1, power="x")
    with pytest.raises(ValueError, match="tau_max"):
        SP.caf(X, 1, tau_max="x")
    with pytest.raises(ValueError, match="max_iter"):
        SP.caf(X, 1, max_iter=-1)
    with pytest.raises(ValueError, match="b must be"):
        DN.dnc(X, 1, b=0)
    with pytest.raises(ValueError, match="expected a gradient batch"):
        SP.smea(torch.zeros(3), 1)


def test_registered_objects_use_the_context_generator():
    assert {"caf", "smea", "dnc"} <= set(AGGREGATORS.names())
    X = rand(9, 30, 6)
    X[:2] += 1.0
    agg = build_aggregator({"name": "dnc", "b": 5, "niters": 3}, f_default=2)
    assert repr(agg) == "DnC(f=2, b=5, niters=3, c=1.0)"
    torch.testing.assert_close(agg(X, AggregationContext(generator=gen(4))), DN.dnc(X, 2, b=5, niters=3, generator=gen(4)))
    caf = build_aggregator({"name": "caf", "power": "byzfl"}, f_default=2)
    torch.testing.assert_close(caf(X, AggregationContext(generator=gen(4))), SP.caf(X, 2, power="byzfl", generator=gen(4)))
    torch.testing.assert_close(build_aggregator({"name": "smea"}, f_default=2)(X), SP.smea(X, 2))


def test_dnc_is_deterministic_given_a_seeded_generator():
    X = rand(12, 200, 8)
    X[:3, :50] += 0.7
    a = DN.dnc(X, 3, b=20, niters=5, generator=gen(9))
    assert torch.equal(a, DN.dnc(X, 3, b=20, niters=5, generator=gen(9)))
    g = gen(9)
    DN.dnc(X, 3, b=20, niters=5, generator=g)
    h = gen(9)
    for _ in range(5):  # exactly niters permutations of range(d) were drawn
        torch.randperm(200, generator=h)
    assert torch.equal(g.get_state(), h.get_state())
    goods = {tuple(DN.dnc_good(X, 3, b=20, niters=5, generator=gen(s)).tolist()) for s in range(10)}
    assert len(goods) > 1  # the draws matter
    g = gen(9)
    DN.dnc(X, 3, b=500, generator=g)  # b >= d: no draw
    assert torch.equal(g.get_state(), gen(9).get_state())
