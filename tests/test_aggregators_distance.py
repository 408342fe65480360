"""Distance-based rules: Krum, Multi-Krum, Bulyan, MDA, geometric median, centered clipping, NNM.

Hand-computed values from the definitions, brute-force references (loops) on random inputs,
invariances, robustness to far outliers and to non-finite rows, requirement errors, state.
"""

import itertools
import math

import numpy as np
import pytest
import torch

from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS, AggregationContext, build_aggregator
from byzlearn.aggregators import functional as F
from byzlearn.aggregators._pairwise import vertex_cover_at_most
from byzlearn.registry import ConfigError


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def rand(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# brute-force references (straight from the definitions, loops allowed)
# ------------------------------------------------------------------------------------------------


def ref_sqdist(X):
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    return np.array([[float(np.sum((X[i] - X[j]) ** 2)) for j in range(n)] for i in range(n)])


def ref_krum_scores(D, f, alive=None):
    n = len(D)
    alive = list(range(n)) if alive is None else alive
    k = max(len(alive) - f - 2, 0)
    scores = {}
    for i in alive:
        others = sorted(D[i][j] for j in alive if j != i)
        scores[i] = sum(others[:k])
    return scores


def ref_krum_index(D, f, alive=None):
    scores = ref_krum_scores(D, f, alive)
    return min(scores, key=lambda i: (scores[i], i))


def ref_multi_krum(X, f, m):
    D = ref_sqdist(X)
    s = ref_krum_scores(D, f)
    chosen = sorted(s, key=lambda i: (s[i], i))[:m]
    return np.mean(np.asarray(X)[chosen], axis=0)


def ref_bulyan(X, f):
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    theta, beta = n - 2 * f, n - 4 * f
    D = ref_sqdist(X)
    alive, picks = list(range(n)), []
    for _ in range(theta):
        i = ref_krum_index(D, f, alive)
        picks.append(i)
        alive.remove(i)
    S = X[picks]
    out = np.zeros(d)
    for k in range(d):
        vals = sorted(S[:, k])
        med = vals[theta // 2] if theta % 2 else (vals[theta // 2 - 1] + vals[theta // 2]) / 2
        order = sorted(range(theta), key=lambda p: (abs(vals[p] - med), p))
        out[k] = np.mean([vals[p] for p in order[:beta]])
    return out


def ref_mda(X, f):
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    D = ref_sqdist(X)
    best, best_diam = None, math.inf
    for S in itertools.combinations(range(n), n - f):  # lexicographic order
        diam = max((D[i][j] for i in S for j in S), default=0.0)
        if diam < best_diam:
            best, best_diam = S, diam
    return list(best), X[list(best)].mean(axis=0)


def ref_nnm(X, f):
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    D = ref_sqdist(X)
    out = np.zeros_like(X)
    for i in range(n):
        order = sorted(range(n), key=lambda j: (j != i, D[i][j], j))[: n - f]
        out[i] = X[order].mean(axis=0)
    return out


def gm_objective(X, z, w=None):
    X = np.asarray(X, dtype=np.float64)
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    return float(np.sum(w * np.linalg.norm(X - np.asarray(z, dtype=np.float64), axis=1)))


# ------------------------------------------------------------------------------------------------
# pairwise distances
# ------------------------------------------------------------------------------------------------


def test_pairwise_matches_brute_force_and_is_a_distance_matrix():
    X = rand(9, 13, 0)
    D = F.pairwise_sq_distances(X)
    assert D.shape == (9, 9) and D.dtype == torch.float64
    np.testing.assert_allclose(D.numpy(), ref_sqdist(X.numpy()), rtol=1e-10, atol=1e-10)
    assert torch.equal(D, D.T) and bool((D.diagonal() == 0).all()) and bool((D >= 0).all())


def test_pairwise_float32_with_large_common_offset_keeps_small_distances():
    # rows = 1000 * u + N(0, 1): raw Gram in float32 would lose the small distances to cancellation
    g = torch.Generator().manual_seed(1)
    base = 1000.0 * torch.randn(1, 4096, generator=g, dtype=torch.float64)
    X = base + torch.randn(8, 4096, generator=g, dtype=torch.float64)
    D32 = F.pairwise_sq_distances(X.float()).double()
    exact = torch.tensor(ref_sqdist(X.float().double().numpy()))
    off = ~torch.eye(8, dtype=torch.bool)
    assert float(((D32 - exact).abs()[off] / exact[off]).max()) < 1e-3


def test_pairwise_nonfinite_rows_are_infinitely_far_and_do_not_poison():
    X = rand(7, 5, 2)
    Y = X.clone()
    Y[1] = float("nan")
    Y[4, 2] = float("inf")
    D = F.pairwise_sq_distances(Y)
    good = [0, 2, 3, 5, 6]
    np.testing.assert_allclose(D[good][:, good].numpy(), ref_sqdist(X[good].numpy()), rtol=1e-10, atol=1e-10)
    for b in (1, 4):
        assert bool(torch.isinf(D[b, [j for j in range(7) if j != b]]).all())
        assert bool(torch.isinf(D[[j for j in range(7) if j != b], b]).all())
        assert float(D[b, b]) == 0.0
    assert not bool(torch.isnan(D).any())


# ------------------------------------------------------------------------------------------------
# Krum / Multi-Krum
# ------------------------------------------------------------------------------------------------


def test_krum_hand_computed_1d_with_tie_to_lowest_index():
    # n=6, f=1: 3 nearest others. scores: 0->1+4+9=14, 1->1+1+4=6, 2->1+1+4=6, 3->14,
    # 10->49+64+81=194, 100->90^2+97^2+98^2=27113; tie 1 vs 2 -> lowest index
    X = t64([[0.0], [1.0], [2.0], [3.0], [10.0], [100.0]])
    assert F.krum_scores(X, 1).tolist() == [14.0, 6.0, 6.0, 14.0, 194.0, 27113.0]
    assert F.krum(X, 1).tolist() == [1.0]
    swapped = X[[0, 2, 1, 3, 4, 5]]
    assert F.krum(swapped, 1).tolist() == [2.0]  # documented tie-break: first row among equals
    assert F.multi_krum(X, 1, 2).tolist() == [1.5]
    assert F.multi_krum(X, 1, 4).tolist() == [1.5]
    assert F.multi_krum(X, 1).tolist() == pytest.approx([3.2])  # m = n - f = 5: 0,1,2,3,10


def test_krum_hand_computed_2d():
    # f=1, n=5 -> 2 nearest others. A(0,0): 1+2=3, B(2,0): 2+4=6, C(0,1): 1+1=2, D(1,1): 1+2=3,
    # E(9,9): 128+130=258  => Krum = C; Multi-Krum(3) = mean(C, A, D)
    X = t64([[0, 0], [2, 0], [0, 1], [1, 1], [9, 9]])
    assert F.krum_scores(X, 1).tolist() == [3.0, 6.0, 2.0, 3.0, 258.0]
    assert F.krum(X, 1).tolist() == [0.0, 1.0]
    assert F.multi_krum(X, 1, 3).tolist() == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize("n,f,seed", [(5, 1, 0), (8, 2, 1), (12, 3, 2), (15, 6, 3)])
def test_krum_and_multi_krum_match_brute_force(n, f, seed):
    X = rand(n, 6, seed)
    D = ref_sqdist(X.numpy())
    i = ref_krum_index(D, f)
    assert torch.equal(F.krum(X, f), X[i])
    for m in (1, 2, n - f, n):
        np.testing.assert_allclose(F.multi_krum(X, f, m).numpy(), ref_multi_krum(X.numpy(), f, m), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Bulyan
# ------------------------------------------------------------------------------------------------


def test_bulyan_hand_computed_1d():
    # n=7, f=1: theta=5 picks by iterated Krum, beta=3.
    # r=7 (k=4): scores 30,15,10,10,15,30,big -> pick value 2 (tie with 3: lowest index)
    # r=6 (k=3): 0->26, 1->14, 3->9, 4->11, 5->21 -> pick 3
    # r=5 (k=2): 0->17, 1->10, 4->10, 5->17 -> pick 1 ; r=4 (k=1): 0->16, 4->1, 5->1 -> pick 4
    # r=3 (k=0): all 0 -> pick 0.  Picks {0,1,2,3,4}: median 2, 3 closest {2,1,3} -> 2
    X = t64([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    assert F.bulyan(X, 1).tolist() == [2.0]
    assert float(X.mean()) > 16  # the mean is dragged away


def test_bulyan_with_f0_is_the_mean():
    X = rand(6, 4, 5)
    torch.testing.assert_close(F.bulyan(X, 0), X.mean(0))


@pytest.mark.parametrize("n,f,seed", [(7, 1, 0), (8, 1, 1), (11, 2, 2), (12, 2, 3), (16, 3, 4)])
def test_bulyan_matches_brute_force(n, f, seed):
    X = rand(n, 7, seed)
    X[:f] = X[:f] * 5 + 3  # some distinctly bad rows
    np.testing.assert_allclose(F.bulyan(X, f).numpy(), ref_bulyan(X.numpy(), f), rtol=1e-12, atol=1e-12)


def test_bulyan_window_rule_on_ties_and_duplicates():
    # per-coordinate step with duplicated and symmetric values (exact ties in distance)
    g = torch.Generator().manual_seed(9)
    X = torch.randint(-3, 4, (11, 9), generator=g).to(torch.float64)
    np.testing.assert_allclose(F.bulyan(X, 2).numpy(), ref_bulyan(X.numpy(), 2), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# MDA
# ------------------------------------------------------------------------------------------------


def test_mda_hand_computed():
    # 1-D [0,1,2,3,10], f=2: 3-subsets of min diameter {0,1,2} and {1,2,3} (diameter 2): lowest -> mean 1
    X = t64([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert F.mda_subset(X, 2) == [0, 1, 2]
    assert F.mda(X, 2).tolist() == [1.0]
    # 2-D: the tight triangle wins over any set containing the far points
    Y = t64([[5, 5], [0, 0], [1, 0], [6, -4], [0, 1]])
    assert F.mda_subset(Y, 2) == [1, 2, 4]
    assert F.mda(Y, 2).tolist() == pytest.approx([1 / 3, 1 / 3])


@pytest.mark.parametrize("n,f,seed", [(3, 1, 0), (5, 2, 1), (7, 2, 2), (8, 3, 3), (9, 4, 4), (10, 1, 5), (14, 5, 6)])
def test_mda_matches_brute_force(n, f, seed):
    X = rand(n, 4, seed)
    X[: f // 2] += 4.0
    subset, ref = ref_mda(X.numpy(), f)
    assert F.mda_subset(X, f) == subset
    np.testing.assert_allclose(F.mda(X, f).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_mda_ties_give_the_lexicographically_lowest_subset():
    # integer points on a small grid: many equal diameters
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        X = torch.randint(0, 3, (8, 2), generator=g).to(torch.float64)
        for f in (1, 2, 3):
            assert F.mda_subset(X, f) == ref_mda(X.numpy(), f)[0]


def test_mda_f0_is_the_mean():
    X = rand(5, 3, 7)
    torch.testing.assert_close(F.mda(X, 0), X.mean(0))


def test_vertex_cover_search_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(2, 9))
        A = np.triu(rng.random((n, n)) < rng.random(), 1)
        A = A | A.T
        adj = [sum(1 << j for j in range(n) if A[i, j]) for i in range(n)]
        edges = [(i, j) for i in range(n) for j in range(i + 1, n) if A[i, j]]
        best = min(len(S) for r in range(n + 1) for S in itertools.combinations(range(n), r) if all(i in S or j in S for i, j in edges))
        for k in range(n + 1):
            assert vertex_cover_at_most(adj, (1 << n) - 1, k) == (k >= best)


# ------------------------------------------------------------------------------------------------
# geometric median
# ------------------------------------------------------------------------------------------------


def test_geometric_median_is_optimal_and_matches_scipy():
    from scipy.optimize import minimize

    X = rand(9, 4, 11)
    X[0] += 10.0
    z = F.geometric_median(X, eps=1e-12, max_iter=1000)
    Xn = X.numpy()
    obj = gm_objective(Xn, z.numpy())
    assert obj <= gm_objective(Xn, Xn.mean(0)) + 1e-12
    assert all(obj <= gm_objective(Xn, x) + 1e-12 for x in Xn)
    res = minimize(
        lambda v: gm_objective(Xn, v),
        Xn.mean(0),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 40000},
    )
    assert obj <= res.fun + 1e-9
    np.testing.assert_allclose(z.numpy(), res.x, atol=1e-4)


def test_geometric_median_default_tolerance_is_close_to_the_optimum():
    X = rand(12, 6, 12)
    tight = F.geometric_median(X, eps=1e-14, max_iter=5000)
    loose = F.geometric_median(X)
    assert gm_objective(X.numpy(), loose.numpy()) <= gm_objective(X.numpy(), tight.numpy()) * (1 + 1e-5)


def test_geometric_median_on_a_data_point():
    # symmetric cross: the mean (initial point) is the centre row, which is the median
    X = t64([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])
    assert F.geometric_median(X).tolist() == [0.0, 0.0]
    # a heavy point: the median is the data point (0, 0) (weight 3 > pull of the two others)
    Y = t64([[0, 0], [1, 0], [0, 1]])
    z = F.geometric_median(Y, weights=t64([3.0, 1.0, 1.0]), eps=1e-12)
    assert float(z.abs().max()) < 1e-6
    # the same with duplicated rows instead of weights
    z2 = F.geometric_median(t64([[0, 0], [0, 0], [0, 0], [1, 0], [0, 1]]), eps=1e-12)
    assert float(z2.abs().max()) < 1e-6


def test_geometric_median_weights_equal_duplication():
    X = rand(5, 3, 13)
    w = t64([1, 2, 3, 1, 1])
    dup = X[[0, 1, 1, 2, 2, 2, 3, 4]]
    torch.testing.assert_close(
        F.geometric_median(X, eps=1e-13, max_iter=2000, weights=w), F.geometric_median(dup, eps=1e-13, max_iter=2000), atol=1e-6, rtol=0
    )


def test_smoothed_weiszfeld_close_to_plain_and_max_iter_zero_is_mean():
    X = rand(10, 5, 14)
    plain = F.geometric_median(X, eps=1e-12, max_iter=1000)
    smooth = F.geometric_median(X, eps=1e-12, max_iter=1000, nu=1e-6)
    torch.testing.assert_close(plain, smooth, atol=1e-6, rtol=0)
    torch.testing.assert_close(F.geometric_median(X, max_iter=0), X.mean(0))
    # a large nu turns every weight into a/nu: the mean
    torch.testing.assert_close(F.geometric_median(X, nu=1e9), X.mean(0))


def test_geometric_median_init_zero_is_byzfl_fixed_iterations():
    """``init = "zero"``, 3 iterations, nu 0.1: ByzFL 0.0.11's GeometricMedian (z_0 = 0; z <- sum b_i x_i / sum b_i,
    b_i = 1 / max(nu, |x_i - z|)), here written out by hand from its definition; one step is a reweighted mean."""
    X = rand(9, 6, 21) * 3

    def byzfl(V, nu=0.1, T=3):
        z = torch.zeros_like(V[0])
        for _ in range(T):
            b = 1.0 / torch.linalg.vector_norm(V - z, dim=1).clamp_min(nu)
            z = (b[:, None] * V).sum(0) / b.sum()
        return z

    for T in (1, 2, 3):
        got = F.geometric_median(X, eps=0.0, max_iter=T, nu=0.1, init="zero")
        torch.testing.assert_close(got, byzfl(X, T=T), atol=1e-12, rtol=0)
    assert torch.equal(F.geometric_median(X, max_iter=0, init="zero"), torch.zeros(6, dtype=X.dtype))
    agg = build_aggregator({"name": "geometric_median", "init": "zero", "max_iter": 3, "nu": 0.1, "eps": 0.0}, 2)
    torch.testing.assert_close(agg(X, AggregationContext()), byzfl(X), atol=1e-12, rtol=0)
    assert torch.equal(F.geometric_median(X), F.geometric_median(X, init="mean"))
    with pytest.raises(ConfigError, match="init must be"):
        build_aggregator({"name": "geometric_median", "init": "origin"}, 1)


# ------------------------------------------------------------------------------------------------
# centered clipping
# ------------------------------------------------------------------------------------------------


def test_centered_clipping_hand_computed():
    # 1-D, v0=0, tau=1: clip(0.5)=0.5, clip(3)=1, clip(-4)=-1 -> v1 = 0.5/3 = 1/6
    # step 2: 0.5-1/6=1/3 (kept), 3-1/6 -> 1, -4-1/6 -> -1 -> v2 = 1/6 + (1/3)/3 = 5/18
    X = t64([[0.5], [3.0], [-4.0]])
    assert F.centered_clipping(X, tau=1.0, iters=1).tolist() == pytest.approx([1 / 6])
    assert F.centered_clipping(X, tau=1.0, iters=2).tolist() == pytest.approx([5 / 18])
    assert F.centered_clipping(X, center=t64([0.5]), tau=1.0, iters=1).tolist() == pytest.approx([0.5 + (0 + 1 - 1) / 3])
    # huge tau, one step from 0: the mean
    Y = rand(6, 4, 15)
    torch.testing.assert_close(F.centered_clipping(Y, tau=1e9, iters=1), Y.mean(0))


def ref_centered_clipping(X, v, tau, iters):
    X, v = np.asarray(X, dtype=np.float64), np.asarray(v, dtype=np.float64).copy()
    n = len(X)
    for _ in range(iters):
        step = np.zeros_like(v)
        for i in range(n):
            z = X[i] - v
            nz = np.linalg.norm(z)
            step += z * min(1.0, tau / nz) if nz > 0 else 0.0
        v = v + step / n
    return v


@pytest.mark.parametrize("tau,iters,seed", [(0.3, 1, 0), (1.0, 3, 1), (2.5, 10, 2), (100.0, 2, 3)])
def test_centered_clipping_matches_direct_loop(tau, iters, seed):
    X = rand(9, 6, 60 + seed) * 2 + 1
    v = rand(1, 6, 70 + seed)[0]
    np.testing.assert_allclose(
        F.centered_clipping(X, v, tau, iters).numpy(), ref_centered_clipping(X.numpy(), v.numpy(), tau, iters), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
        F.centered_clipping(X, None, tau, iters).numpy(), ref_centered_clipping(X.numpy(), np.zeros(6), tau, iters), rtol=1e-10, atol=1e-10
    )
    assert torch.equal(F.centered_clipping(X, v, tau, 0), v)


def test_centered_clipping_object_keeps_its_center_in_state_dict():
    X1, X2, X3 = rand(6, 4, 16), rand(6, 4, 17), rand(6, 4, 18)
    cc = AGGREGATORS.build("centered_clipping", {"f": 1, "tau": 0.5, "iters": 2}, "aggregator")
    out1 = cc(X1)
    torch.testing.assert_close(out1, F.centered_clipping(X1, None, 0.5, 2))
    out2 = cc(X2)
    torch.testing.assert_close(out2, F.centered_clipping(X2, out1, 0.5, 2))  # center = previous output
    state = cc.state_dict()
    assert torch.equal(state["center"], out2)
    fresh = AGGREGATORS.build("centered_clipping", {"f": 1, "tau": 0.5, "iters": 2}, "aggregator")
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(X3), cc(X3), rtol=0, atol=0)
    # evaluate() probes without changing the state
    before = cc.state_dict()["center"].clone()
    cc.evaluate(X1)
    assert torch.equal(cc.state_dict()["center"], before)
    with pytest.raises(ValueError, match="coordinates"):
        cc(rand(6, 5, 19))


# ------------------------------------------------------------------------------------------------
# NNM
# ------------------------------------------------------------------------------------------------


def test_nnm_hand_computed():
    # 1-D [0,1,3,10], f=1: each row -> mean of its 3 nearest (itself included)
    X = t64([[0.0], [1.0], [3.0], [10.0]])
    np.testing.assert_allclose(F.nnm(X, 1).numpy().ravel(), [4 / 3, 4 / 3, 4 / 3, 14 / 3])


@pytest.mark.parametrize("n,f,seed", [(4, 1, 0), (7, 3, 1), (10, 2, 2), (11, 5, 3)])
def test_nnm_matches_brute_force(n, f, seed):
    X = rand(n, 5, seed)
    np.testing.assert_allclose(F.nnm(X, f).numpy(), ref_nnm(X.numpy(), f), rtol=1e-12, atol=1e-12)
    M, _ = F.nnm_mixing_matrix(X, f)
    torch.testing.assert_close(M.sum(1), torch.ones(n, dtype=M.dtype))
    assert bool((M.diagonal() > 0).all())


def test_nnm_keeps_itself_first_among_duplicates():
    X = t64([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.0, 5.0], [7.0, 0.0]])
    M, _ = F.nnm_mixing_matrix(X, 2)
    assert bool((M.diagonal() == 1 / 3).all())
    np.testing.assert_allclose(F.nnm(X, 2)[:3].numpy(), np.ones((3, 2)))


def test_nnm_registered_as_preaggregator_and_chains_with_krum():
    pre = PREAGGREGATORS.build("nnm", {"f": 2}, "aggregator.pre[0]")
    assert pre.requirement(5) is None and pre.output_count(7) == 7
    assert "f < n/2 (n=4, f=2)" in pre.requirement(4)
    X = rand(9, 4, 20)
    torch.testing.assert_close(pre(X, AggregationContext()), F.nnm(X, 2))
    chain = build_aggregator({"name": "krum", "pre": ["nnm"]}, f_default=2)
    torch.testing.assert_close(chain(X), F.krum(F.nnm(X, 2), 2))
    with pytest.raises(ConfigError, match=r"n > 2f\+2 \(n=6, f=2\)"):
        chain(rand(6, 4, 21))


# ------------------------------------------------------------------------------------------------
# properties shared by the rules
# ------------------------------------------------------------------------------------------------

RULES = {
    "krum": lambda G, f: F.krum(G, f),
    "multi_krum": lambda G, f: F.multi_krum(G, f),
    "bulyan": lambda G, f: F.bulyan(G, f),
    "mda": lambda G, f: F.mda(G, f),
    "geometric_median": lambda G, f: F.geometric_median(G, eps=1e-13, max_iter=2000),
    "centered_clipping": lambda G, f: F.centered_clipping(G, tau=1.0, iters=5),
}


@pytest.mark.parametrize("name", list(RULES))
def test_permutation_invariance(name):
    X = rand(11, 5, 30)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(RULES[name](X[perm], 2), RULES[name](X, 2), atol=1e-9, rtol=0)


def test_nnm_is_permutation_equivariant():
    X = rand(9, 4, 31)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(F.nnm(X[perm], 3), F.nnm(X, 3)[perm])


@pytest.mark.parametrize("name", ["krum", "multi_krum", "bulyan", "mda", "geometric_median", "nnm"])
def test_translation_and_scale_equivariance(name):
    X = rand(11, 5, 32)
    c = rand(1, 5, 33)[0] * 10
    rule = (lambda G: F.nnm(G, 2)) if name == "nnm" else (lambda G: RULES[name](G, 2))
    torch.testing.assert_close(rule(X + c), rule(X) + c, atol=1e-8, rtol=0)
    torch.testing.assert_close(rule(3.5 * X), 3.5 * rule(X), atol=1e-8, rtol=0)


def test_centered_clipping_equivariance_with_center_and_tau():
    X, v = rand(8, 5, 34), rand(1, 5, 35)[0]
    c = rand(1, 5, 36)[0] * 10
    base = F.centered_clipping(X, v, tau=0.7, iters=3)
    torch.testing.assert_close(F.centered_clipping(X + c, v + c, tau=0.7, iters=3), base + c)
    torch.testing.assert_close(F.centered_clipping(2.0 * X, 2.0 * v, tau=1.4, iters=3), 2.0 * base)


ROBUST = {
    **RULES,
    "centered_clipping": lambda G, f: F.centered_clipping(G, tau=0.5, iters=50),
    "nnm+krum": lambda G, f: F.krum(F.nnm(G, f), f),
    "nnm+geometric_median": lambda G, f: F.geometric_median(F.nnm(G, f)),
}


@pytest.mark.parametrize("name", list(ROBUST))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_far_outliers_stay_outside_the_output(name, dtype):
    n, f, d = 15, 3, 8
    X = rand(n, d, 40, dtype)
    honest = X[f:].clone()
    X[0] = 1e6
    X[1] = -1e6
    X[2, ::2] = 1e6
    out = ROBUST[name](X, f)
    assert out.dtype == dtype and out.shape == (d,)
    lo, hi = honest.min(0).values, honest.max(0).values
    assert bool(((out >= lo - 1e-6) & (out <= hi + 1e-6)).all()), (name, out)
    mean = X.mean(0)
    assert not bool(((mean >= lo) & (mean <= hi)).all())


@pytest.mark.parametrize("name", list(ROBUST))
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "mixed"])
def test_nonfinite_rows_are_survived(name, bad):
    n, f, d = 15, 3, 6
    X = rand(n, d, 41)
    honest = X[f:].clone()
    vals = {"nan": [math.nan] * 3, "inf": [math.inf] * 3, "-inf": [-math.inf] * 3, "mixed": [math.nan, math.inf, -math.inf]}[bad]
    for i, v in enumerate(vals):
        X[i] = 0.0
        X[i, i] = v  # a single non-finite coordinate is enough
    out = ROBUST[name](X, f)
    assert bool(torch.isfinite(out).all()), (name, out)
    lo, hi = honest.min(0).values, honest.max(0).values
    assert bool(((out >= lo - 1e-9) & (out <= hi + 1e-9)).all())


@pytest.mark.parametrize(
    "name,fn",
    [
        ("krum", lambda G, f: F.krum(G, f)),
        ("multi_krum", lambda G, f: F.multi_krum(G, f)),
        ("mda", lambda G, f: F.mda(G, f)),
        ("nnm", lambda G, f: F.nnm(G, f)),
    ],
)
def test_nonfinite_rows_do_not_change_the_selection_among_finite_rows(name, fn):
    # replacing f far-away rows by NaN rows: both are never selected, the output is unchanged
    n, f = 10, 2
    X = rand(n, 4, 42)
    far = X.clone()
    far[:f] = 1e8
    nan = X.clone()
    nan[:f] = math.nan
    a, b = fn(far, f), fn(nan, f)
    if name == "nnm":
        a, b = a[f:], b[f:]
    torch.testing.assert_close(a, b)


def test_nonfinite_pre_aggregation_passes_bad_rows_through():
    X = rand(8, 3, 43)
    X[2] = math.nan
    Y = F.nnm(X, 2)
    assert bool(torch.isnan(Y[2]).all()) and bool(torch.isfinite(Y[[0, 1, 3, 4, 5, 6, 7]]).all())


# ------------------------------------------------------------------------------------------------
# requirements, registry, dtypes
# ------------------------------------------------------------------------------------------------

REQUIREMENTS = [
    ("krum", {}, 6, 2, "n > 2f+2 (n=6, f=2)", lambda G, f: F.krum(G, f)),
    ("multi_krum", {}, 6, 2, "n > 2f+2 (n=6, f=2)", lambda G, f: F.multi_krum(G, f)),
    ("bulyan", {}, 10, 2, "n >= 4f+3 (n=10, f=2)", lambda G, f: F.bulyan(G, f)),
    ("mda", {}, 4, 2, "n >= 2f+1 (n=4, f=2)", lambda G, f: F.mda(G, f)),
    ("geometric_median", {}, 6, 3, "f < n/2 (n=6, f=3)", lambda G, f: F.geometric_median(G, f=f)),
    ("centered_clipping", {}, 6, 3, "f < n/2 (n=6, f=3)", lambda G, f: F.centered_clipping(G, f=f)),
]


@pytest.mark.parametrize("name,params,n,f,cond,fn", REQUIREMENTS)
def test_requirement_errors(name, params, n, f, cond, fn):
    agg = build_aggregator({"name": name, **params}, f_default=f)
    assert agg.requirement(n) == cond
    assert agg.requirement(n + 1) is None
    with pytest.raises(ConfigError) as e:
        agg(rand(n, 3, 0))
    assert cond in str(e.value)
    with pytest.raises(ValueError) as e2:
        fn(rand(n, 3, 0), f)
    assert cond in str(e2.value) and not isinstance(e2.value, ConfigError)
    fn(rand(n + 1, 3, 0), f)  # one more row is enough


def test_nnm_function_requirement():
    with pytest.raises(ValueError, match=r"f < n/2 \(n=6, f=3\)"):
        F.nnm(rand(6, 2, 0), 3)


def test_multi_krum_m_checks():
    assert build_aggregator({"name": "multi_krum", "m": 9}, f_default=1).requirement(8) == "m <= n (n=8, m=9)"
    with pytest.raises(ValueError, match="1 <= m <= n"):
        F.multi_krum(rand(8, 2, 0), 1, 0)
    with pytest.raises(ConfigError, match="aggregator.m"):
        AGGREGATORS.build("multi_krum", {"m": 0}, "aggregator")


def test_registry_validates_config_keys_and_types():
    assert set(AGGREGATORS.parameters("geometric_median")) == {"f", "eps", "max_iter", "nu", "init"}
    assert set(AGGREGATORS.parameters("centered_clipping")) == {"f", "tau", "iters"}
    assert set(AGGREGATORS.parameters("multi_krum")) == {"f", "m"}
    with pytest.raises(ConfigError, match="wrong type"):
        AGGREGATORS.build("centered_clipping", {"tau": "big"}, "aggregator")
    with pytest.raises(ConfigError, match="wrong type"):
        AGGREGATORS.build("geometric_median", {"max_iter": 2.5}, "aggregator")
    with pytest.raises(ConfigError, match="unknown key"):
        AGGREGATORS.build("krum", {"m": 3}, "aggregator")
    with pytest.raises(ConfigError, match="tau"):
        AGGREGATORS.build("centered_clipping", {"tau": -1.0}, "aggregator")
    gm = AGGREGATORS.build("geometric_median", {"f": 2, "nu": 0.1, "max_iter": 7}, "aggregator")
    X = rand(9, 3, 50)
    torch.testing.assert_close(gm(X), F.geometric_median(X, max_iter=7, nu=0.1))


@pytest.mark.parametrize("name", ["krum", "multi_krum", "bulyan", "mda", "geometric_median", "centered_clipping"])
def test_objects_match_functions_and_keep_dtype(name):
    X = rand(11, 4, 51)
    agg = build_aggregator({"name": name}, f_default=2)
    ref = {**RULES, "geometric_median": lambda G, f: F.geometric_median(G), "centered_clipping": lambda G, f: F.centered_clipping(G)}[name](
        X, 2
    )
    torch.testing.assert_close(agg(X), ref)
    assert agg(X.float()).dtype == torch.float32
