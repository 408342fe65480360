"""The literature's strongest attacks and the Blades ones (attacks.minmax, attacks.fang, attacks.blades):
the spec's worked examples, the searches' constraints, Fang's ranges and Krum selection, the AGR-tailored
search against the defender's rule, Blades ports checked against straight re-implementations, the
contract (shape, dtype, determinism, threat model) and short simulator runs where each attack bites."""

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import AgglomerativeClustering

import byzlearn
from byzlearn.aggregators import AggregationContext, Aggregator, build_aggregator
from byzlearn.aggregators import functional as AF
from byzlearn.attacks import ATTACKS, AttackContext
from byzlearn.attacks import blades as B
from byzlearn.attacks import fang as FG
from byzlearn.attacks import minmax as MM
from byzlearn.registry import ConfigError

NEW = ["min_max", "min_sum", "agr_tailored", "fang_trmean", "fang_krum", "attack_clipped_clustering", "signguard_attack", "permutation"]


def build(name, **params):
    return ATTACKS.build(name, params, "attack")


def make_ctx(honest, f, own=None, aggregator=None, seed=0, byzantine=None):
    h, d = honest.shape
    if own is None:
        own = honest[:f].flip(1).clone() if f <= h else torch.randn(f, d, dtype=honest.dtype)
    return AttackContext(
        n=h + f,
        f=f,
        round=0,
        honest=honest,
        own=own,
        params=torch.zeros(d, dtype=honest.dtype),
        aggregator=aggregator,
        generator=torch.Generator().manual_seed(seed),
        byzantine=byzantine,
    )


def rand_honest(h=9, d=30, seed=0, dtype=torch.float64, shift=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(h, d, generator=g, dtype=torch.float64) + shift).to(dtype)


# -- the gamma search on the spec's worked examples -------------------------------------------------


def test_spec_examples_1d():
    H = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    m, gamma, tests = MM.min_max_vector(H, "std")
    assert tests == 20 and gamma == pytest.approx(0.99998, abs=1e-5) and float(m) == pytest.approx(0.0, abs=2e-5)
    assert gamma <= 1.0  # the last passing gamma: (1 + gamma)^2 <= 4
    m, gamma, _ = MM.min_sum_vector(H, "std")
    assert gamma == 0.0 and float(m) == 1.0  # 2 + 3 gamma^2 <= min(5, 2, 5) = 2


def test_spec_example_2d_unit_vec():
    H = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    m, gamma, _ = MM.min_max_vector(H, "unit_vec")
    assert gamma == pytest.approx(2 * math.sqrt(2) / 3, abs=2e-5)  # 0.9428
    assert torch.allclose(m, torch.zeros(2, dtype=torch.float64), atol=2e-5)


def test_gamma_search_counts_and_reach():
    assert MM.gamma_search(lambda g: True, 10.0, 1e-5) == (pytest.approx(20.0, abs=2e-5), 20)  # reach < 2 gamma0
    assert MM.gamma_search(lambda g: False, 10.0, 1e-5) == (0.0, 20)
    assert MM.gamma_search(lambda g: g <= 1.3, 5.0, 1e-5)[1] == 19
    with pytest.raises(ValueError):
        MM.gamma_search(lambda g: True, 10.0, 0.0)


@pytest.mark.parametrize("kind", ["unit_vec", "std", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_max_and_min_sum_constraints_are_tight(kind, seed):
    H = rand_honest(seed=seed)
    tau = 1e-5
    D = torch.cdist(H, H) ** 2
    mu = H.mean(0)
    p = MM.perturbation(H, kind)

    def minmax_ok(gamma):
        return float(((mu + gamma * p - H) ** 2).sum(1).max()) <= float(D.max())

    def minsum_ok(gamma):
        return float(((mu + gamma * p - H) ** 2).sum()) <= float(D.sum(1).min())

    for fn, ok in ((MM.min_max_vector, minmax_ok), (MM.min_sum_vector, minsum_ok)):
        m, gamma, _ = fn(H, kind, 10.0, tau)
        assert 0 < gamma < 20 and ok(gamma) and not ok(gamma + 2 * tau + 1e-9)
        assert torch.allclose(m, mu + gamma * p)
    # the closed form (Gram matrix + one matvec) matches the direct distances
    a, b, c = MM.distance_terms(H, mu, p)
    gamma = 0.37
    direct = ((mu + gamma * p - H) ** 2).sum(1)
    assert torch.allclose(a - 2 * gamma * b + gamma**2 * c, direct, rtol=1e-10, atol=1e-10)


def test_perturbations():
    H = torch.tensor([[1.0, -3.0, 0.0], [3.0, -1.0, 0.0]], dtype=torch.float64)
    mu = torch.tensor([2.0, -2.0, 0.0], dtype=torch.float64)
    assert torch.allclose(MM.perturbation(H, "unit_vec"), -mu / mu.norm())
    assert torch.equal(MM.perturbation(H, "sign"), torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(MM.perturbation(H, "std"), -H.std(0))
    assert torch.equal(MM.perturbation(torch.zeros(2, 3), "unit_vec"), torch.zeros(3))  # mu = 0: no direction
    X = rand_honest(h=7, d=5000, dtype=torch.float32)
    assert torch.allclose(MM.column_std(X), X.std(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(MM.column_std(X[:1]), torch.zeros(5000))


def test_knowledge_own_uses_the_attackers_gradients_only():
    H = rand_honest(h=9, d=20, seed=3)
    own = rand_honest(h=4, d=20, seed=4)
    for name in ("min_max", "min_sum"):
        a = build(name, knowledge="own")
        assert not a.omniscient and a.needs_own_gradients
        full = build(name)
        assert full.omniscient and not full.needs_own_gradients
        ctx = make_ctx(H.new_empty(0, 20), 4, own=own)  # as the Flower engine: no honest row for a non-omniscient attack
        out = a.forge(ctx)
        expected = (MM.min_max_vector if name == "min_max" else MM.min_sum_vector)(own)[0]
        assert out.shape == (4, 20) and torch.allclose(out, expected.expand(4, -1))
    with pytest.raises(ConfigError):
        build("min_max", knowledge="partial")


# -- Fang et al.: trimmed mean / median -----------------------------------------------------------


def test_fang_trmean_spec_ranges():
    H = torch.tensor([[1.0, -3.0], [2.0, -1.0], [3.0, -2.0]])
    out = FG.fang_trmean_vectors(H, 2000, torch.Generator().manual_seed(0))
    assert out.shape == (2000, 2)
    assert bool((out[:, 0] >= 0.5).all() and (out[:, 0] <= 1.0).all())
    assert bool((out[:, 1] >= -1.0).all() and (out[:, 1] <= -0.5).all())
    assert float(out[:, 0].min()) < 0.51 and float(out[:, 0].max()) > 0.99  # the whole range is reached
    assert len(set(out[:, 0].tolist())) > 1900  # independent draws per row


def test_fang_trmean_all_cases():
    # columns: s<0 & max>0, s<0 & max<=0, s>0 & min>0, s>0 & min<=0, s=0
    H = torch.tensor([[-3.0, -3.0, 3.0, 3.0, 1.0], [1.0, -1.0, 1.0, -1.0, -1.0], [-1.0, -2.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    out = FG.fang_trmean_vectors(H, 500, torch.Generator().manual_seed(1))
    lo = torch.tensor([1.0, -1.0, 0.5, -2.0, 0.0], dtype=torch.float64)
    hi = torch.tensor([2.0, -0.5, 1.0, -1.0, 0.0], dtype=torch.float64)
    assert bool(((out >= lo) & (out <= hi)).all())
    shared = FG.fang_trmean_vectors(H, 4, torch.Generator().manual_seed(1), shared=True)
    assert torch.equal(shared, shared[:1].expand(4, -1)) and bool(((shared >= lo) & (shared <= hi)).all())
    a = build("fang_trmean", shared=True)
    assert torch.equal(a.forge(make_ctx(H, 3)), FG.fang_trmean_vectors(H, 3, torch.Generator().manual_seed(0), shared=True))


def test_fang_partial_knowledge():
    own = rand_honest(h=5, d=40, seed=5)
    a = build("fang_trmean", knowledge="own")
    assert not a.omniscient and a.needs_own_gradients
    out = a.forge(make_ctx(own.new_empty(0, 40), 5, own=own))
    mu, sigma = own.mean(0), own.std(0)
    neg, pos = mu < 0, mu > 0
    assert bool(((out >= mu + 3 * sigma - 1e-12) & (out <= mu + 4 * sigma + 1e-12))[:, neg].all())
    assert bool(((out >= mu - 4 * sigma - 1e-12) & (out <= mu - 3 * sigma + 1e-12))[:, pos].all())


# -- Fang et al.: Krum -----------------------------------------------------------------------------


def lambda_reference(H, c, bound):
    """compute_lambda_fang / the paper's bound, by loops."""
    h, d = H.shape
    m = h + c
    R = [[float((H[i] - H[j]).norm()) for j in range(h)] for i in range(h)]
    sums = []
    for i in range(h):
        if bound == "ndss":
            row = sorted(10000.0 if x == 0 else x for x in R[i])[: m - 2 * c - 2]
        else:
            row = sorted(R[i][j] for j in range(h) if j != i)[: m - c - 2]
        sums.append(sum(row))
    mu = H.mean(0)
    return min(sums) / ((m - 2 * c - 1) * math.sqrt(d)) + max(float((g - mu).norm()) for g in H) / math.sqrt(d)


@pytest.mark.parametrize("bound", ["paper", "ndss"])
def test_fang_krum_lambda(bound):
    H = rand_honest(h=9, d=25, seed=6)
    assert FG.fang_krum_lambda(H, 3, bound) == pytest.approx(lambda_reference(H, 3, bound), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fang_krum_makes_krum_select_a_crafted_row(seed):
    h, f, d = 12, 4, 200
    H = rand_honest(h=h, d=d, seed=seed, dtype=torch.float32, shift=0.5)  # iid
    byz = torch.tensor([1, 5, 9, 14])
    a = build("fang_krum")
    rows = a.forge(make_ctx(H, f, byzantine=byz))
    assert a.last_selected and 1 <= a.last_evaluations <= math.ceil(math.log2(FG.fang_krum_lambda(H, f) / 1e-5)) + 1
    assert torch.equal(rows, rows[:1].expand(f, -1))
    assert torch.allclose(rows[0], -a.last_lambda * torch.sign(H.mean(0)))
    G = torch.empty(h + f, d)
    keep = torch.ones(h + f, dtype=torch.bool)
    keep[byz] = False
    G[keep], G[byz] = H, rows
    assert torch.equal(AF.krum(G, f), rows[0])  # the engine's batch: Krum picks the crafted vector


def test_fang_krum_fallback():
    # honest rows packed near [1, 1]: -lambda sign(mu) is never the most central row
    H = 1.0 + 1e-3 * torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m, lam, evaluations, selected = FG.fang_krum_vector(H, 1, byzantine=torch.tensor([6]))
    assert not selected and lam <= 1e-5 and evaluations == math.ceil(math.log2(FG.fang_krum_lambda(H, 1) / 1e-5))
    assert torch.allclose(m, H.mean(0) - lam * torch.sign(H.mean(0)))


# -- AGR-tailored --------------------------------------------------------------------------------


class Recorder(Aggregator):
    """Returns row 0 and records every batch it sees."""

    name = "recorder"

    def __init__(self):
        super().__init__(0)
        self.seen = []

    def aggregate(self, G, ctx=None):
        self.seen.append(G.clone())
        return G[0].clone()


def test_agr_tailored_probes_the_batch_as_placed():
    H = rand_honest(h=6, d=8, seed=7)
    rule = Recorder()
    byz = torch.tensor([0, 3])
    a = build("agr_tailored")
    out = a.forge(make_ctx(H, 2, aggregator=rule, byzantine=byz))
    assert len(rule.seen) == a.last_tests == 19  # ceil(log2(5 / 1e-5))
    for G in rule.seen:
        assert torch.equal(G[torch.tensor([1, 2, 4, 5, 6, 7])], H)
        assert torch.equal(G[0], G[3])
    assert out.shape == (2, 8) and torch.equal(out[0], out[1])


def test_agr_tailored_beats_alie_on_trimmed_mean():
    h, f, d = 14, 4, 50
    tm = build_aggregator({"name": "trimmed_mean"}, f_default=f)
    byz = torch.arange(h, h + f)
    for seed in range(3):
        H = rand_honest(h=h, d=d, seed=seed, dtype=torch.float32)
        mu = H.mean(0)

        def deviation(rows, H=H, mu=mu):
            return float((tm(torch.cat([H, rows]), AggregationContext()) - mu).norm())

        agr = build("agr_tailored").forge(make_ctx(H, f, aggregator=tm, byzantine=byz))
        alie = build("alie").forge(make_ctx(H, f))
        assert deviation(agr) > 1.2 * deviation(alie)


def test_agr_tailored_needs_the_rule():
    with pytest.raises(ValueError, match="aggregator"):
        build("agr_tailored").forge(make_ctx(rand_honest(), 2))


# -- Blades ----------------------------------------------------------------------------------------


def blades_clipped_clustering(H, k):
    """A straight port of Blades' AttackclippedclusteringAdversary._chain_attack (loops, torch cosine)."""
    cos = torch.nn.functional.cosine_similarity
    mu = H.mean(0)
    num = len(H)
    dis = np.zeros((num, num))
    for i in range(num):
        for j in range(i + 1, num):
            dis[i, j] = dis[j, i] = float(1 - cos(H[i], H[j], dim=0))
    labels = AgglomerativeClustering(metric="precomputed", linkage="single", n_clusters=2).fit(dis).labels_
    cross = min(float(1 - cos(H[i], H[j], dim=0)) for i in range(num) for j in range(num) if i != j)
    theta_c = math.acos(1 - cross) - 0.1
    flag = 1 if np.sum(labels) > num // 2 else 0
    group = [g / g.norm() for g, lab in zip(H, labels) if lab == flag]
    d2m = [float(1 - cos(g, mu, dim=0)) for g in group]
    t = int(np.argmax(d2m))
    theta = math.acos(1 - d2m[t])
    mal = H[t] / H[t].norm()
    out = []
    for _ in range(k):
        if theta + theta_c >= math.pi:
            mal = -10 * mu
        else:
            a = math.cos(theta + theta_c - 1e-4) - math.sin(theta + theta_c - 1e-4) / math.tan(theta)
            b = math.cos(theta_c - 1e-4) + math.sin(theta_c - 1e-4) / math.tan(theta)
            mal = 10 * (a * mu / mu.norm() + b * mal)
            theta = theta + theta_c - 1e-4
        out.append(mal)
    return torch.stack(out)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_attack_clipped_clustering_matches_blades(seed):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(9, 40, generator=g, dtype=torch.float64) + torch.randn(40, generator=g, dtype=torch.float64)
    H[:3] = -H[:3]  # two clusters of directions
    out = build("attack_clipped_clustering").forge(make_ctx(H, 3))
    ref = blades_clipped_clustering(H, 3)
    assert torch.allclose(out, ref, rtol=1e-8, atol=1e-8)


def test_signguard_attack():
    H = torch.tensor([[1.0, -2.0, 0.0, 3.0, -1.0, 0.0], [1.0, -2.0, 0.0, 1.0, -3.0, 0.0]])
    rows = build("signguard_attack").forge(make_ctx(H, 3))
    v = rows[0]
    assert torch.equal(rows, v.expand(3, -1))
    assert int((v > 0).sum()) == 2 and int((v < 0).sum()) == 2 and int((v == 0).sum()) == 2
    assert bool((v.abs() < 1).all())
    X = rand_honest(h=5, d=5000, dtype=torch.float32)
    v = B.signguard_vector(X.mean(0), torch.Generator().manual_seed(0))
    assert int((v > 0).sum()) == int((X.mean(0) > 0).sum())
    assert float((torch.sign(v) == torch.sign(X.mean(0))).float().mean()) < 0.7  # positions are random


def test_permutation():
    own = rand_honest(h=3, d=1000, dtype=torch.float32)
    a = build("permutation")
    assert a.needs_own_gradients and not a.omniscient
    out = a.forge(make_ctx(own.new_empty(0, 1000), 3, own=own))
    assert torch.equal(out.sort(1).values, own.sort(1).values)
    assert not torch.equal(out, own)
    again = a.forge(make_ctx(own.new_empty(0, 1000), 3, own=own, seed=1))
    assert not torch.equal(out, again)


def test_noise_is_gaussian_with_blades_defaults():
    assert "noise" not in ATTACKS.names()  # a duplicate of gaussian(mean=0.1, std=0.1), documented in attacks.blades
    rows = build("gaussian", mean=0.1, std=0.1).forge(make_ctx(rand_honest(d=20000, dtype=torch.float32), 2))
    assert abs(float(rows.mean()) - 0.1) < 0.01 and abs(float(rows.std()) - 0.1) < 0.01


# -- the contract ----------------------------------------------------------------------------------


def configured(name):
    if name == "agr_tailored":
        return build(name), build_aggregator({"name": "trimmed_mean"}, f_default=3)
    return build(name), None


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_shape_dtype_finite_determinism(name, dtype):
    H = rand_honest(h=9, d=64, seed=11, dtype=dtype)
    own = rand_honest(h=3, d=64, seed=12, dtype=dtype)
    byz = torch.tensor([2, 6, 10])
    outs = []
    for _ in range(2):
        attack, rule = configured(name)
        outs.append(attack.forge(make_ctx(H, 3, own=own, aggregator=rule, byzantine=byz, seed=5)))
    out = outs[0]
    assert out.shape == (3, 64) and out.dtype == dtype and bool(torch.isfinite(out).all())
    assert torch.equal(outs[0], outs[1])  # same seed, same rows
    attack, rule = configured(name)
    assert attack.forge(make_ctx(H, 0, own=own[:0], aggregator=rule)).shape[0] == 0


@pytest.mark.parametrize("name", NEW)
def test_threat_model_is_stated(name):
    attack, _ = configured(name)
    doc = type(attack).__doc__
    assert "Threat model:" in doc
    own_based = name == "permutation"
    assert attack.omniscient == (not own_based) and attack.needs_own_gradients == own_based


def test_config_is_checked():
    for name, params in [
        ("min_max", {"perturbation": "gauss"}),
        ("min_sum", {"gamma0": 0.0}),
        ("agr_tailored", {"tau": -1.0}),
        ("fang_trmean", {"knowledge": "none"}),
        ("fang_krum", {"bound": "tight"}),
    ]:
        with pytest.raises(ConfigError):
            build(name, **params)


# -- short simulator runs: each attack lowers its target rule's accuracy ---------------------------

RUN = {
    "workers": {"n": 10, "byzantine": 3},
    "data": {"partition": "dirichlet", "alpha": 0.5},
    "optimizer": {"name": "momentum", "lr": 0.1},
    "train": {"rounds": 100, "eval_every": 100, "seed": 0, "threads": 1},
}


def accuracy(rule, attack):
    return byzlearn.simulate({**RUN, "aggregator": {"name": rule}, "attack": {"name": attack}})["final_test_accuracy"]


@pytest.mark.slow
def test_attacks_lower_the_targeted_rules_accuracy():
    """digits, 10 workers of which 3 Byzantine, Dirichlet(0.5) shards, 100 rounds (about 3 s in all).
    Without attack: trimmed mean / median ~0.9, Krum ~0.8; every attack costs >= 20 points on seeds 0-4.
    One thread (train.threads = 1 sets torch's global count; restored after)."""
    threads = torch.get_num_threads()
    try:
        for rule, attacks in [
            ("trimmed_mean", ["min_max", "min_sum", "fang_trmean"]),
            ("median", ["fang_trmean"]),
            ("krum", ["fang_krum"]),
        ]:
            clean = accuracy(rule, "none")
            assert clean > 0.7, rule
            for attack in attacks:
                assert accuracy(rule, attack) < clean - 0.10, (rule, attack)
    finally:
        torch.set_num_threads(threads)
