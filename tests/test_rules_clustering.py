"""SignGuard (Xu et al. 2022, official code) and ClippedClustering (Li et al. 2023, fedlib): spec examples,
a transcription of the official SignGuard code as reference, robustness, hostile rows, state, dtypes."""

import copy
import io
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import MeanShift, estimate_bandwidth

from byzlearn.aggregators import AggregationContext, build_aggregator
from byzlearn.aggregators.clustering import ClippedClustering, SignGuard, clipped_clustering, signguard
from byzlearn.registry import ConfigError

nan, inf = math.nan, math.inf
FEDLIB_X = torch.tensor([[1.0, 2, 3], [-1, 4, -1], [2, 2, 3], [3, 1, 3]])
FEDLIB_OUT = torch.tensor([1.9596, 1.6532, 2.9596])


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def honest_batch(h: int, d: int, seed: int = 0, mean: float = 1.0, noise: float = 0.5) -> torch.Tensor:
    """Rows sharing a positive mean direction (mostly positive signs), float64."""
    return mean + noise * torch.randn(h, d, generator=gen(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ SignGuard
def official_signguard(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """JianXu95/SignGuard ``signguard_multiclass.aggregate``, transcribed (global RNG -> ``generator``)."""
    grads = grads.clone()
    grads[torch.isnan(grads)] = 0
    l2 = torch.norm(grads, dim=1).cpu().numpy()
    med = np.median(l2)
    idx1 = {int(i) for i in np.argwhere(l2 > 0.1 * med).flatten()} & {int(i) for i in np.argwhere(l2 < 3.0 * med).flatten()}
    num_param = grads.shape[1]
    num_spars = int(0.1 * num_param)
    idx = torch.randint(0, (num_param - num_spars), size=(1,), generator=generator).item()
    sign = torch.sign(grads[:, idx : idx + num_spars])
    feats = []
    for v in (1.0, 0.0, -1.0):
        frac = sign.eq(v).sum(dim=1, dtype=torch.float32) / num_spars
        feats.append(frac / (frac.max() + 1e-8))
    F = torch.stack(feats, dim=1).cpu().numpy()
    bandwidth = estimate_bandwidth(F, quantile=0.5, n_samples=50)
    labels = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(F).labels_
    n_cluster = len(np.unique(labels)) - (1 if -1 in labels else 0)
    best = int(np.argmax([np.sum(labels == i) for i in range(n_cluster)]))
    benign = sorted(idx1 & {int(i) for i in np.argwhere(labels == best).flatten()})
    norm = torch.norm(grads, dim=1).reshape((-1, 1))
    clip = norm.median(dim=0)[0].item()
    clipped = (grads / norm) * torch.clamp(norm, 0, clip)
    return clipped[benign].mean(dim=0)


@pytest.mark.parametrize("seed", range(6))
def test_signguard_matches_the_official_code(seed):
    g = gen(100 + seed)
    h, f, d = 9, 4, 300
    H = honest_batch(h, d, seed).float()
    kinds = torch.cat([-H[:2] * 1.5, H[2:3] * 10, torch.randn(1, d, generator=g) * 0.3])  # flipped, too long, noise
    G = torch.cat([H, kinds])[torch.randperm(h + f, generator=g)]
    out = signguard(G, generator=gen(seed))
    ref = official_signguard(G, gen(seed))
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_signguard_norm_filter_example():
    # l = 1, 2, 2, 2, 10 along one direction: equal sign features (bandwidth 0: one cluster of all),
    # M = 2: the 10 (>= 6) is dropped, the 1 (> 0.2) kept; M' = 2 clips nothing that is kept.
    d = 20
    u = torch.ones(d, dtype=torch.float64) / math.sqrt(d)
    G = torch.tensor([1.0, 2, 2, 2, 10], dtype=torch.float64)[:, None] * u
    out = signguard(G, generator=gen())
    assert torch.allclose(out, 1.75 * u)  # (1+2+2+2)/4; keeping the 10 (clipped) gives 1.8, dropping the 1 gives 2
    # strict bounds (d = 1: exact norms): 0.25 = 0.1 M and 7.5 = 3 M are dropped; just inside, kept (7.4 clipped to M')
    edge = torch.tensor([[0.25], [2.5], [2.5], [2.5], [7.5]], dtype=torch.float64)
    assert torch.equal(signguard(edge, generator=gen()), torch.tensor([2.5], dtype=torch.float64))
    inside = torch.tensor([[0.26], [2.5], [2.5], [2.5], [7.4]], dtype=torch.float64)
    assert torch.allclose(signguard(inside, generator=gen()), torch.tensor([(0.26 + 4 * 2.5) / 5], dtype=torch.float64))


def test_signguard_excludes_sign_flipped_and_far_rows():
    h, d = 10, 500
    H = honest_batch(h, d, seed=3)
    flipped = -H[:3]  # same norms: only the sign features can catch them
    far = 1e6 * torch.ones(2, d, dtype=torch.float64)
    G = torch.cat([flipped, H, far])
    norms = torch.linalg.vector_norm(G, dim=1)
    M2 = float(torch.sort(norms).values[(G.shape[0] - 1) // 2])
    expect = (H * torch.clamp(M2 / torch.linalg.vector_norm(H, dim=1), max=1.0)[:, None]).mean(0)
    for seed in range(3):
        assert torch.allclose(signguard(G, generator=gen(seed)), expect)


def test_signguard_survives_non_finite_rows():
    h, d = 9, 200
    H = honest_batch(h, d, seed=5)
    bad = H[:4].clone()
    bad[0] = nan
    bad[1, 7] = nan
    bad[2, 3] = inf
    bad[3] = -inf
    G = torch.cat([H, bad])
    out = signguard(G, generator=gen(1))
    assert torch.isfinite(out).all()
    # no non-finite row enters: the output is a mean of clipped honest rows (a positive-mean direction)
    assert float(torch.linalg.vector_norm(out)) <= float(torch.linalg.vector_norm(H, dim=1).max()) * (1 + 1e-12)
    assert float(torch.nn.functional.cosine_similarity(out, H.mean(0), dim=0)) > 0.99
    # the NaN rows cannot poison the output even when they are in the biggest sign cluster
    same = torch.cat([H[:5], torch.full((4, d), nan, dtype=torch.float64)])
    assert torch.isfinite(signguard(same, generator=gen())).all()


def test_signguard_empty_selection_is_zero_and_all_equal_features():
    d = 12
    assert torch.equal(signguard(torch.zeros(5, d)), torch.zeros(d))  # M = 0: nothing passes the norm filter
    assert torch.equal(signguard(torch.full((4, d), nan)), torch.zeros(d))
    assert torch.equal(signguard(torch.full((3, d), inf)), torch.zeros(d))
    one = torch.ones(1, d)
    assert torch.equal(signguard(one), one[0])  # n = 1, bandwidth 0
    assert torch.allclose(signguard(torch.ones(6, 3)), torch.ones(3))  # d < 10: a block of one coordinate


def test_signguard_bandwidth_zero_groups_identical_features():
    # two equal groups of identical sign features: estimate_bandwidth gives 0 (MeanShift would refuse it);
    # the bandwidth -> 0 limit keeps the tie MeanShift ranks first, the lexicographically largest centre
    # (positive fraction first: [1, 0, 0] > [0, 0, 1])
    G = torch.tensor([[1.0] * 10, [-1.0] * 10, [1.0] * 10, [-1.0] * 10])
    assert torch.equal(signguard(G, generator=gen()), torch.ones(10))
    # three against two: the bigger group, whatever its signs
    G3 = torch.cat([-torch.ones(3, 10), torch.ones(2, 10)])
    assert torch.equal(signguard(G3, generator=gen()), -torch.ones(10))


def test_signguard_deterministic_with_a_seeded_generator_and_registered_object():
    G = torch.cat([honest_batch(8, 1000, seed=7), -honest_batch(3, 1000, seed=8)]).float()
    a = signguard(G, generator=gen(42))
    assert torch.equal(a, signguard(G, generator=gen(42)))
    rule = build_aggregator({"name": "signguard"}, f_default=3)
    assert isinstance(rule, SignGuard) and rule.requirement(1) is None
    assert torch.equal(rule(G, AggregationContext(generator=gen(42))), a)
    # one draw from the generator per call
    g = gen(42)
    signguard(G, generator=g)
    assert not torch.equal(g.get_state(), gen(42).get_state())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_signguard_returns_its_dtype(dtype):
    G = torch.cat([honest_batch(7, 64, seed=1), -honest_batch(2, 64, seed=2)]).to(dtype)
    out = signguard(G, generator=gen())
    assert out.dtype == dtype and torch.isfinite(out).all()
    if dtype in (torch.float16, torch.bfloat16):  # computed in float32
        assert torch.equal(out, signguard(G.float(), generator=gen()).to(dtype))


def test_signguard_parameters_are_checked():
    with pytest.raises(ConfigError, match="aggregator.block"):
        SignGuard(block=0.0)
    with pytest.raises(ConfigError, match="aggregator.upper"):
        SignGuard(upper=-1.0)
    with pytest.raises(ValueError, match="block"):
        signguard(torch.ones(3, 4), block=2.0)


# ------------------------------------------------------------------------------------------------ ClippedClustering
def test_clipped_clustering_fedlib_unit_test_example():
    X = FEDLIB_X.clone()
    rule = ClippedClustering()
    out = rule(X)
    assert torch.allclose(out, FEDLIB_OUT, atol=1e-4)
    assert torch.equal(X, FEDLIB_X)  # fedlib clips the caller's tensors in place; we do not
    # tau = median(3.7417, 4.2426, 4.1231, 4.3589) = 4.1829; the functional core with that tau
    tau = float(np.median(torch.linalg.vector_norm(FEDLIB_X, dim=1).numpy()))
    assert abs(tau - 4.1829) < 1e-4
    assert torch.allclose(clipped_clustering(FEDLIB_X, tau), out)
    assert torch.allclose(clipped_clustering(FEDLIB_X, tau, linkage="single"), out)


def test_clipped_clustering_history_median_is_exact():
    rule = ClippedClustering()
    seen = []
    for r in range(5):
        G = (r + 1.0) * torch.randn(4 + r, 7, generator=gen(r), dtype=torch.float64)
        seen.extend(torch.linalg.vector_norm(G, dim=1).tolist())
        tau = rule.threshold(torch.linalg.vector_norm(G, dim=1))
        assert tau == min(float(np.median(seen)), 1e5)
    assert rule.history.tolist() == sorted(seen)
    capped = ClippedClustering(max_tau=0.5)
    assert capped.threshold(torch.tensor([10.0, 20.0], dtype=torch.float64)) == 0.5
    window = ClippedClustering(window=3)
    window.threshold(torch.tensor([100.0, 200.0, 300.0], dtype=torch.float64))
    assert window.threshold(torch.tensor([1.0, 2.0], dtype=torch.float64)) == 2.0  # last three: 300, 1, 2
    assert window.history.tolist() == [300.0, 1.0, 2.0]


def test_clipped_clustering_state_round_trip_is_bit_identical():
    batches = [torch.randn(8, 50, generator=gen(s)) * (1 + s) for s in range(3)]
    a = ClippedClustering()
    a(batches[0])
    a(batches[1])
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = ClippedClustering()
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a(batches[2]), b(batches[2]))
    assert np.array_equal(a.history, b.history)
    # evaluate (adaptive attacks) leaves the history as it was
    before = a.history.copy()
    a.evaluate(batches[0])
    assert np.array_equal(a.history, before)
    # a fresh object's state loads as empty
    c = ClippedClustering()
    c.load_state_dict(ClippedClustering().state_dict())
    assert c.history.size == 0


def test_clipped_clustering_excludes_sign_flipped_and_far_rows():
    h, d = 8, 100
    H = honest_batch(h, d, seed=11)
    # flipped rows, and far rows pointing away from the honest direction (two clusters: a far row along the
    # honest direction, or orthogonal to it, may join the honest cluster, clipped to norm tau)
    signs = torch.where(torch.rand(d, generator=gen(12)) < 0.5, -1.0, 1.0).double()
    G = torch.cat([-3 * H[:3], H, -1e6 * torch.ones(1, d, dtype=torch.float64), -1e5 * (1 + 0.5 * signs[None])])
    for tau in (5.0, 20.0, inf):
        out = clipped_clustering(G, tau)
        norms = torch.linalg.vector_norm(H, dim=1)
        coef = torch.where(norms > tau, tau / (norms + 1e-6), torch.ones_like(norms))
        assert torch.allclose(out, (H * coef[:, None]).mean(0)), tau
    coef = torch.where(norms > 5.0, 5.0 / (norms + 1e-6), torch.ones_like(norms))
    med = clipped_clustering(G, 5.0, agg="median")  # h = 8: the mean of the two middle values
    assert torch.allclose(med, torch.quantile(H * coef[:, None], 0.5, dim=0))


def test_clipped_clustering_survives_non_finite_rows():
    h, d = 7, 40
    H = honest_batch(h, d, seed=13)
    bad = torch.stack([torch.full((d,), nan, dtype=torch.float64), H[0].clone(), H[1].clone()])
    bad[1, 3] = inf
    bad[2, 0] = -inf
    G = torch.cat([bad, H])
    rule = ClippedClustering()
    out = rule(G)
    assert torch.isfinite(out).all()
    tau = min(float(np.median(rule.history)), 1e5)
    assert math.isinf(rule.history[-1])  # non-finite rows count as norm +inf
    norms = torch.linalg.vector_norm(H, dim=1)
    coef = torch.where(norms > tau, tau / (norms + 1e-6), torch.ones_like(norms))
    assert torch.allclose(out, (H * coef[:, None]).mean(0))
    # every row non-finite: nothing to keep
    assert torch.equal(clipped_clustering(torch.full((4, 3), nan), 1.0), torch.zeros(3))


def test_clipped_clustering_small_n_and_zero_tau():
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(clipped_clustering(x, 1.0), x[0] * (1.0 / (5.0 + 1e-6)))
    assert torch.allclose(clipped_clustering(x, inf), x[0])
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = clipped_clustering(two, inf)
    assert any(torch.equal(out, r) for r in two)  # two clusters of one: label 0 is kept
    assert torch.equal(clipped_clustering(two, 0.0), torch.zeros(2))


def test_clipped_clustering_owns_batch_and_original_untouched():
    G = torch.randn(6, 30, generator=gen(3)) * 10
    before = G.clone()
    ClippedClustering()(G, AggregationContext(owns_batch=True))
    ClippedClustering()(G)
    assert torch.equal(G, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_clipped_clustering_returns_its_dtype(dtype):
    X = FEDLIB_X.to(dtype)
    out = ClippedClustering()(X)
    assert out.dtype == dtype
    assert torch.allclose(out.double(), FEDLIB_OUT.double(), atol=2e-2)
    assert clipped_clustering(X, 2.0, agg="median").dtype == dtype


def test_clipped_clustering_registered_and_checked():
    rule = build_aggregator({"name": "clipped_clustering", "linkage": "single"}, f_default=2)
    assert isinstance(rule, ClippedClustering) and rule.linkage == "single" and rule.requirement(1) is None
    for bad in ({"agg": "mode"}, {"max_tau": 0.0}, {"linkage": "ward"}, {"window": 0}):
        with pytest.raises(ConfigError):
            ClippedClustering(**bad)
    with pytest.raises(ValueError, match="tau"):
        clipped_clustering(FEDLIB_X, -1.0)
    assert copy.deepcopy(rule).history.size == 0
