"""Bucketing, static clipping and ARC pre-aggregators."""

import math

import pytest
import torch

from byzlearn.aggregators import PREAGGREGATORS, AggregationContext, Chain, build_aggregator
from byzlearn.aggregators import functional as F
from byzlearn.aggregators.preaggregation import ARC, Bucketing, Clipping, arc_clipped_count
from byzlearn.registry import ConfigError

inf, nan = math.inf, math.nan


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- bucketing
@pytest.mark.parametrize("n,s", [(10, 2), (11, 2), (7, 3), (5, 1), (4, 9)])
def test_bucketing_count_and_bucket_means(n, s):
    # rows e_i * 2^i: a bucket mean identifies its members exactly (distinct powers of two)
    G = torch.diag(torch.tensor([2.0**i for i in range(n)], dtype=torch.float64))
    out = F.bucketing(G, s, gen(1))
    m = math.ceil(n / s)
    assert out.shape == (m, n)
    members = []
    sizes = []
    for row in out:
        idx = torch.nonzero(row).flatten().tolist()
        size = len(idx)
        assert torch.allclose(row[idx], G[idx, idx] / size)
        members += idx
        sizes.append(size)
    assert sorted(members) == list(range(n))  # the buckets partition the rows
    expected = [s] * (n // s) + ([n % s] if n % s else [])
    assert sizes == expected if s <= n else sizes == [n]


def test_bucketing_randomness_and_determinism():
    G = torch.arange(12, dtype=torch.float64).reshape(12, 1) * torch.ones(1, 3)
    a = F.bucketing(G, 2, gen(7))
    b = F.bucketing(G, 2, gen(7))
    assert torch.equal(a, b)
    g = gen(7)
    first, second = F.bucketing(G, 2, g), F.bucketing(G, 2, g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # fresh permutation each call
    assert not torch.equal(F.bucketing(G, 2, gen(8)), a)
    # the multiset of bucket sums is always the row sum
    assert torch.allclose(second.sum(0) * 2, G.sum(0))


def test_bucketing_object_and_chain_with_mean():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(9, 5, generator=g, dtype=torch.float64)
    agg = build_aggregator({"name": "mean", "pre": [{"name": "bucketing", "s": 2}]}, f_default=1)
    assert isinstance(agg, Chain) and agg.name == "bucketing+mean"
    ctx = AggregationContext(generator=torch.Generator().manual_seed(3))
    out = agg(G, ctx)
    buckets = F.bucketing(G, 2, torch.Generator().manual_seed(3))
    assert torch.allclose(out, buckets.mean(0))
    assert Bucketing(3).output_count(10) == 4 and Bucketing(2).output_count(10) == 5
    assert PREAGGREGATORS.names() and "bucketing" in PREAGGREGATORS.names()


def test_bucketing_requirement_uses_bucket_count():
    # median after bucketing(s=2): 9 inputs -> 5 buckets; f=2 fits (5 > 4), f=3 does not (5 <= 6)
    build_aggregator({"name": "median", "pre": [{"name": "bucketing", "s": 2}]}, f_default=2).check(9)
    with pytest.raises(ConfigError, match=r"n=9 .*n > 2f"):
        build_aggregator({"name": "median", "pre": [{"name": "bucketing", "s": 2}]}, f_default=3).check(9)


def test_bucketing_errors():
    with pytest.raises(ValueError, match="positive integer"):
        F.bucketing(torch.zeros(3, 2), 0, None)
    with pytest.raises(ConfigError, match="bucket size"):
        Bucketing(s=0)
    with pytest.raises(ConfigError, match="wrong type"):
        build_aggregator({"name": "mean", "pre": [{"name": "bucketing", "s": 2.5}]}, f_default=0)


# ---------------------------------------------------------------- static clipping
def test_static_clip_norms_and_unchanged_rows():
    g = torch.Generator().manual_seed(2)
    G = torch.randn(20, 30, generator=g, dtype=torch.float64) * torch.linspace(0.01, 2.0, 20, dtype=torch.float64).unsqueeze(1)
    c = 3.0
    out = F.static_clip(G, c)
    norms_in, norms_out = G.norm(dim=1), out.norm(dim=1)
    assert (norms_out <= c * (1 + 1e-12)).all()
    small = norms_in <= c
    assert small.any() and (~small).any()
    assert torch.equal(out[small], G[small])  # bit for bit
    assert torch.allclose(norms_out[~small], torch.full_like(norms_out[~small], c))
    # same direction
    cos = (out[~small] * G[~small]).sum(1) / (norms_out[~small] * norms_in[~small])
    assert torch.allclose(cos, torch.ones_like(cos))


def test_static_clip_exact_and_non_finite():
    G = torch.tensor([[3.0, 4.0], [0.3, 0.4], [nan, 1.0], [inf, 0.0], [0.0, 0.0], [3e30, 4e30]], dtype=torch.float32)
    out = F.static_clip(G, 2.0)
    assert torch.allclose(out[0], torch.tensor([1.2, 1.6]))
    assert torch.equal(out[1], G[1])
    assert torch.equal(out[2], torch.zeros(2)) and torch.equal(out[3], torch.zeros(2))
    assert torch.equal(out[4], torch.zeros(2))
    assert torch.allclose(out[5], torch.tensor([1.2, 1.6]))  # overflowing norm handled
    with pytest.raises(ValueError, match="positive"):
        F.static_clip(G, 0.0)


def test_clipping_chain():
    G = torch.tensor([[30.0, 40.0], [0.0, 1.0], [nan, 0.0]], dtype=torch.float64)
    agg = build_aggregator({"name": "mean", "pre": [{"name": "clipping", "c": 5.0}]}, f_default=1)
    assert torch.allclose(agg(G), torch.tensor([1.0, 5.0 / 3.0], dtype=torch.float64))
    assert Clipping().c == 2.0
    with pytest.raises(ConfigError, match="positive"):
        Clipping(c=-1.0)
    # two pre-aggregators in order: clipping then bucketing, then mean
    agg2 = build_aggregator({"name": "mean", "pre": ["clipping", {"name": "bucketing", "s": 3}]}, f_default=0)
    out = agg2(torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), AggregationContext(generator=gen(0)))
    assert torch.allclose(out, torch.tensor([2.0 / 3.0, 1.0 / 3.0]))


# ---------------------------------------------------------------- ARC
def test_arc_exact():
    # n=5, f=1: k = floor(2*1*4/5) = 1 -> the largest row is clipped to the 2nd largest norm (5)
    G = torch.tensor([[3.0, 4.0], [0.0, 1.0], [60.0, 80.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert arc_clipped_count(5, 1) == 1
    out = F.arc(G, 1)
    expected = G.clone()
    expected[2] = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert torch.allclose(out, expected)
    # n=10, f=3: k = floor(2*3*7/10) = 4 -> the 4 largest clipped to the 5th largest norm
    assert arc_clipped_count(10, 3) == 4
    H = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    outH = F.arc(H, 3)
    assert torch.allclose(outH.norm(dim=1), torch.tensor([1, 2, 3, 4, 5, 6, 6, 6, 6, 6], dtype=torch.float64))
    assert torch.equal(F.arc(G, 0), G)  # k = 0: identity


def test_arc_non_finite_and_requirements():
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [nan, 0.0], [inf, 1.0], [0.0, 3.0], [1.0, 1.0], [2.0, 0.0]])
    out = F.arc(G, 2)  # k = floor(2*2*5/7) = 2: exactly the two non-finite rows
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros(2)) and torch.equal(out[3], torch.zeros(2))
    keep = [0, 1, 4, 5, 6]
    assert torch.equal(out[keep], G[keep])
    with pytest.raises(ValueError, match="n > 2f"):
        F.arc(G, 4)
    with pytest.raises(ConfigError, match=r"n > 2f .*pre-aggregator 'arc'"):
        build_aggregator({"name": "mean", "pre": ["arc"]}, f_default=4).check(8)
    agg = build_aggregator({"name": "mean", "pre": ["arc"]}, f_default=2)
    assert isinstance(agg.pre[0], ARC) and agg.pre[0].f == 2
    assert torch.isfinite(agg(G)).all()


# ---------------------------------------------------------------- batches the caller hands over
@pytest.mark.parametrize("pre", [{"name": "clipping", "c": 1.5}, {"name": "arc"}])
def test_inplace_clipping_equals_copying_clipping_and_respects_ownership(pre):
    g = torch.Generator().manual_seed(5)
    G = torch.randn(9, 50, generator=g) * torch.linspace(0.1, 3.0, 9).unsqueeze(1)
    G[4] = float("nan")
    agg = build_aggregator({"name": "mean", "pre": [pre]}, f_default=2)
    original = G.clone()
    kept = agg(G, AggregationContext())  # default: the caller keeps its batch
    assert torch.equal(G.nan_to_num(7.0), original.nan_to_num(7.0))
    given = G.clone()
    handed = agg(given, AggregationContext(owns_batch=True))  # the engine hands the batch over
    assert torch.equal(kept, handed) and torch.isfinite(handed).all()
    assert not torch.equal(given.nan_to_num(7.0), original.nan_to_num(7.0))  # it was overwritten


def test_bucketing_nan_row_poisons_only_its_bucket():
    G = torch.arange(24, dtype=torch.float32).view(8, 3)
    G[5] = float("nan")
    out = F.bucketing(G, 2, torch.Generator().manual_seed(0))
    bad = ~torch.isfinite(out).all(dim=1)
    assert out.shape == (4, 3) and int(bad.sum()) == 1
    finite_means = out[~bad]
    # the finite bucket means are means of two of the finite rows each
    pairs = {tuple(((G[i] + G[j]) / 2).tolist()) for i in range(8) for j in range(8) if i < j and 5 not in (i, j)}
    assert all(tuple(r.tolist()) in pairs for r in finite_means)
