"""Coordinate-wise median and trimmed mean: exact values, numpy references, invariances, robustness."""

import math

import numpy as np
import pytest
import torch

from byzlearn.aggregators import AGGREGATORS, AggregationContext, build_aggregator
from byzlearn.aggregators import functional as F
from byzlearn.aggregators._finite import finite_rows, row_norms, sort_workers
from byzlearn.aggregators.coordinatewise import Median, TrimmedMean
from byzlearn.registry import ConfigError

inf, nan = math.inf, math.nan


def t(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


# ---------------------------------------------------------------- exact values by hand
def test_median_odd_exact():
    G = t([[1.0, 10.0], [5.0, -2.0], [3.0, 7.0]])
    assert torch.equal(F.median(G), t([3.0, 7.0]))


def test_median_even_is_mean_of_middle_values():
    G = t([[1.0, 4.0], [2.0, 0.0], [10.0, 8.0], [4.0, 1.0]])
    # column 0 sorted: 1 2 4 10 -> (2+4)/2 = 3 ; column 1: 0 1 4 8 -> 2.5
    out = F.median(G)
    assert torch.equal(out, t([3.0, 2.5]))
    assert not torch.equal(out, torch.median(G, dim=0).values)  # torch returns the lower middle


def test_trimmed_mean_exact_f1_f2():
    G = t([[1.0, -5.0], [2.0, 0.0], [3.0, 2.0], [100.0, 4.0], [-50.0, 1.0]])
    # f=1: col0 sorted -50 1 2 3 100 -> mean(1,2,3)=2 ; col1 -5 0 1 2 4 -> mean(0,1,2)=1
    assert torch.equal(F.trimmed_mean(G, 1), t([2.0, 1.0]))
    # f=2: middle value only = median
    assert torch.equal(F.trimmed_mean(G, 2), t([2.0, 1.0]))
    G6 = t([[1.0], [2.0], [3.0], [4.0], [50.0], [-9.0]])
    assert torch.equal(F.trimmed_mean(G6, 2), t([2.5]))  # sorted -9 1 2 3 4 50 -> (2+3)/2
    assert torch.equal(F.trimmed_mean(G6, 1), t([2.5]))  # (1+2+3+4)/4
    assert torch.equal(F.trimmed_mean(G6, 0), G6.mean(0))


# ---------------------------------------------------------------- references on random data
@pytest.mark.parametrize("n", [1, 2, 5, 8, 11, 30])
def test_median_matches_numpy(n):
    g = torch.Generator().manual_seed(n)
    G = torch.randn(n, 257, generator=g, dtype=torch.float64)
    assert np.allclose(F.median(G).numpy(), np.median(G.numpy(), axis=0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n,f", [(3, 1), (7, 2), (10, 3), (21, 10), (40, 7)])
def test_trimmed_mean_matches_sorted_slice(n, f):
    g = torch.Generator().manual_seed(100 + n)
    G = torch.randn(n, 300, generator=g, dtype=torch.float64)
    ref = np.sort(G.numpy(), axis=0)[f : n - f].mean(axis=0)
    assert np.allclose(F.trimmed_mean(G, f).numpy(), ref, rtol=0, atol=1e-12)


def test_parallel_sort_path_matches_torch_sort():
    # d above the threaded-sort threshold: the numpy block sort must agree with torch.sort
    g = torch.Generator().manual_seed(0)
    G = torch.randn(6, 70_000, generator=g)
    G[2, ::7] = nan
    S = sort_workers(G)
    ref = torch.sort(torch.where(G.isnan(), inf, G), dim=0).values
    assert torch.equal(torch.nan_to_num(S, nan=inf), ref)
    assert torch.isnan(S[-1, ::7]).all() and not torch.isnan(S[:-1]).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtypes_preserved(dtype):
    G = torch.tensor([[1.0, 2.0], [3.0, -1.0], [2.0, 0.5], [8.0, 4.0]], dtype=dtype)
    m, tm = F.median(G), F.trimmed_mean(G, 1)
    assert m.dtype == dtype and tm.dtype == dtype
    assert torch.equal(m.float(), torch.tensor([2.5, 1.25]))
    assert torch.equal(tm.float(), torch.tensor([2.5, 1.25]))


def test_autograd_path():
    G = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    F.trimmed_mean(G, 1).sum().backward()
    # each coordinate: 3 of the 5 entries get weight 1/3
    assert torch.allclose(G.grad.sum(0), torch.ones(4, dtype=torch.float64))
    assert ((G.grad == 0) | (G.grad - 1 / 3).abs().lt(1e-12)).all()


# ---------------------------------------------------------------- invariances
@pytest.mark.parametrize("rule", ["median", "trimmed"])
def test_permutation_invariance_and_translation_equivariance(rule):
    fn = F.median if rule == "median" else (lambda G: F.trimmed_mean(G, 2))
    g = torch.Generator().manual_seed(3)
    G = torch.randn(9, 50, generator=g, dtype=torch.float64)
    perm = torch.randperm(9, generator=g)
    assert torch.equal(fn(G[perm]), fn(G))
    shift = torch.randn(50, generator=g, dtype=torch.float64)
    assert torch.allclose(fn(G + shift), fn(G) + shift, atol=1e-12)
    assert torch.allclose(fn(3.0 * G), 3.0 * fn(G), atol=1e-12)


# ---------------------------------------------------------------- robustness
def _honest_and_byz(n=11, f=3, d=40, seed=5):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n - f, d, generator=g, dtype=torch.float64)
    return H, g


def _inside(out, H):
    return bool(((out >= H.min(0).values) & (out <= H.max(0).values)).all())


@pytest.mark.parametrize("rule", ["median", "trimmed"])
def test_far_outliers_stay_in_honest_range(rule):
    H, g = _honest_and_byz()
    B = torch.full((3, H.shape[1]), 1e6, dtype=torch.float64)
    B[1] = -1e6
    G = torch.cat([H, B])
    out = F.median(G) if rule == "median" else F.trimmed_mean(G, 3)
    assert _inside(out, H)
    assert not _inside(F.mean(G), H)


@pytest.mark.parametrize("rule", ["median", "trimmed"])
@pytest.mark.parametrize("n", [10, 11])
def test_non_finite_rows_survived(rule, n):
    f = 4
    H, g = _honest_and_byz(n=n, f=f)
    d = H.shape[1]
    B = torch.stack([torch.full((d,), nan), torch.full((d,), inf), torch.full((d,), -inf), torch.randn(d, generator=g) * 1e9])
    B[3, ::3] = nan
    B = B.to(torch.float64)
    for G in (torch.cat([H, B]), torch.cat([B, H])[torch.randperm(n, generator=g)]):
        for dtype in (torch.float64, torch.float32):
            Gd = G.to(dtype)
            out = F.median(Gd) if rule == "median" else F.trimmed_mean(Gd, f)
            assert torch.isfinite(out).all()
            assert _inside(out.double(), H.to(dtype).double())


def test_median_nan_does_not_propagate_torch_path():
    # bfloat16 goes through torch.sort (with NaN mapped to +inf)
    G = torch.tensor([[nan, 1.0], [1.0, nan], [2.0, 3.0]], dtype=torch.bfloat16)
    assert torch.equal(F.median(G).float(), torch.tensor([2.0, 3.0]))


# ---------------------------------------------------------------- requirements and registry
def test_function_requirement_errors():
    G = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="n > 2f"):
        F.trimmed_mean(G, 2)
    with pytest.raises(ValueError, match="non-negative"):
        F.trimmed_mean(G, -1)
    with pytest.raises(ValueError, match=r"Tensor\[n, d\]"):
        F.median(torch.zeros(3))


def test_object_requirement_errors():
    with pytest.raises(ConfigError, match=r"n > 2f"):
        Median(f=2).check(4)
    Median(f=2).check(5)
    with pytest.raises(ConfigError, match=r"n > 2f"):
        TrimmedMean(f=3)(torch.zeros(6, 2))
    with pytest.raises(ConfigError, match=r"b >= f"):
        TrimmedMean(f=2, b=1).check(10)
    with pytest.raises(ConfigError, match=r"n > 2b"):
        TrimmedMean(f=1, b=3).check(6)
    assert TrimmedMean(f=1, b=2).requirement(5) is None


def test_registered_and_built_from_config():
    assert {"median", "trimmed_mean"} <= set(AGGREGATORS.names())
    G = t([[1.0], [2.0], [3.0], [4.0], [100.0]])
    agg = build_aggregator({"name": "trimmed_mean"}, f_default=1)
    assert agg.f == 1 and torch.equal(agg(G, AggregationContext()), t([3.0]))
    agg = build_aggregator({"name": "trimmed_mean", "b": 2}, f_default=1)
    assert torch.equal(agg(G), t([3.0]))
    assert torch.equal(build_aggregator({"name": "median"}, f_default=2)(G), t([3.0]))
    with pytest.raises(ConfigError, match="unknown key"):
        build_aggregator({"name": "median", "beta": 0.1}, f_default=1)
    with pytest.raises(ConfigError, match="wrong type"):
        build_aggregator({"name": "trimmed_mean", "b": 1.5}, f_default=1)


# ---------------------------------------------------------------- shared helpers
def test_finite_helpers():
    G = torch.tensor([[1.0, 2.0], [nan, 0.0], [inf, 1.0], [3e30, 4e30], [0.0, 0.0]], dtype=torch.float32)
    assert finite_rows(G).tolist() == [True, False, False, True, True]
    norms = row_norms(G)
    assert norms[1] == inf and norms[2] == inf
    assert torch.isclose(norms[3], torch.tensor(5e30), rtol=1e-6)  # naive float32 norm overflows
    assert torch.isclose(norms[0], torch.tensor(5.0).sqrt()) and norms[4] == 0
