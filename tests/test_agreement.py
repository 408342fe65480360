"""Averaging agreement (rb_trimmed_mean, mda, mve, gossip) and LEARN."""

import pytest
import torch

from byzlearn.decentralized import Adversary, averaging_agreement, mve_subset
from byzlearn.decentralized.agreement import agreement_rounds
from byzlearn.registry import ConfigError

SLIDES_X = torch.tensor([[0.0, 1, 3], [2, 3, 3], [7, 2, 6]])


@pytest.mark.parametrize("schedule", ["adversarial", "random", "fixed"])
def test_slides_worked_example(schedule):
    """Honest (0,1,3), (2,3,3), (7,2,6) (average (3,2,4)), one Byzantine node sending (1,6,5)."""
    assert SLIDES_X.mean(0).tolist() == [3.0, 2.0, 4.0]
    r = averaging_agreement("rb_trimmed_mean", SLIDES_X, 1, 6, Adversary("constant", vector=[1.0, 6, 5]), schedule=schedule)
    delta0 = r.rounds[0]["diameter"]
    assert delta0 == pytest.approx(59**0.5)
    assert r.rounds[-1]["diameter"] <= delta0 / 2**6  # agreement
    dist = (r.outputs - torch.tensor([3.0, 2, 4])).norm(dim=1)
    assert float(dist.max()) <= 0.5 * delta0  # close to the honest average: C <= 0.5 here
    assert r.rounds[-1]["C_max"] <= 0.5


def _instance(seed, f, extra, d=8):
    g = torch.Generator().manual_seed(seed)
    h = 2 * f + 1 + extra
    return torch.randn(h, d, generator=g) * (1 + 3 * torch.rand(1, generator=g)), g


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("attack", ["equivocate", "alie", "sign_flip", "silent"])
def test_rb_trimmed_mean_properties(seed, attack):
    f = 1 + seed % 3
    X, g = _instance(seed, f, seed % 2)
    adv = Adversary(attack, scale=3.0) if attack == "equivocate" else Adversary(attack)
    r = averaging_agreement("rb_trimmed_mean", X, f, 6, adv, generator=g)
    dia = [m["diameter"] for m in r.rounds]
    assert all(b <= a + 1e-9 for a, b in zip(dia, dia[1:]))  # never grows
    assert dia[-1] <= dia[0] / 2**6 + 1e-6  # shrinks at least as fast as the definition's 2^-N
    assert max(m["C_max"] for m in r.rounds) <= 1.5  # C bounded (the inputs' own max distance is <= 1 * Delta)


@pytest.mark.parametrize("method", ["mda", "mve"])
@pytest.mark.parametrize("seed", range(3))
def test_mda_mve_properties(method, seed):
    f = 1
    X, g = _instance(seed, f, 3, d=4)  # n = 7 = 6f + 1
    r = averaging_agreement(method, X, f, 8, Adversary("equivocate", scale=1.0), generator=g)
    dia = [m["diameter"] for m in r.rounds]
    assert dia[-1] <= 0.05 * dia[0]
    assert r.rounds[-1]["C_max"] <= 1.0


def test_requirements_refused():
    X = torch.randn(2, 3)
    with pytest.raises(ConfigError, match="n >= 3f \\+ 1"):
        averaging_agreement("rb_trimmed_mean", X, 1, 1)  # n = 3 = 3f
    with pytest.raises(ConfigError, match="n >= 3f \\+ 1"):
        averaging_agreement("rb_trimmed_mean", torch.randn(4, 3), 2, 1, broadcast=False)  # n = 6
    with pytest.raises(ConfigError, match="6f \\+ 1"):
        averaging_agreement("mda", torch.randn(8, 3), 2, 1)  # n = 10 < 13
    with pytest.raises(ConfigError, match="6f \\+ 1"):
        averaging_agreement("mve", torch.randn(5, 3), 1, 1)
    with pytest.raises(ConfigError, match="unknown"):
        averaging_agreement("nope", X, 0, 1)
    with pytest.raises(ConfigError, match="max_subsets"):
        mve_subset(torch.randn(26, 4), 5, max_subsets=1000)


def test_equivocation_splits_without_broadcast():
    """n = 3f + 1: an equivocating node keeps the honest nodes apart when the broadcast is off; with
    reliable broadcast + witnesses they agree."""
    for f, X in [(1, SLIDES_X), (3, torch.randn(7, 5, generator=torch.Generator().manual_seed(0)))]:
        off = averaging_agreement("rb_trimmed_mean", X, f, 10, "equivocate", broadcast=False)
        on = averaging_agreement("rb_trimmed_mean", X, f, 10, "equivocate", broadcast=True)
        d0 = off.rounds[0]["diameter"]
        assert off.rounds[-1]["diameter"] >= 0.5 * d0  # split: no agreement after 10 rounds
        assert on.rounds[-1]["diameter"] <= d0 / 2**10


def test_gossip_is_not_robust():
    X = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    g = averaging_agreement("gossip", X, 3, 4, "sign_flip")
    t = averaging_agreement("rb_trimmed_mean", X, 3, 4, Adversary("ipm", epsilon=50.0))
    gi = averaging_agreement("gossip", X, 3, 4, Adversary("ipm", epsilon=50.0))
    assert gi.rounds[-1]["C_max"] > 10 * t.rounds[-1]["C_max"]
    assert g.rounds[-1]["diameter"] < g.rounds[0]["diameter"]


def test_messages_grow_cubically_with_rb():
    m = {}
    for n in (4, 7, 13):
        f = (n - 1) // 3
        r = averaging_agreement("rb_trimmed_mean", torch.randn(n - f, 10), f, 1, "silent")
        m[n] = r.messages
    assert m[13] / m[7] > (13 / 7) ** 2.5


def test_mve_picks_tight_cluster():
    G = torch.tensor([[0.0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5], [30, -30]])
    assert mve_subset(G, 1) == [0, 1, 2, 3, 4]


def test_agreement_rounds_schedule():
    assert [agreement_rounds(t) for t in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 3, 3, 4, 4, 5]
    assert agreement_rounds(1000, cap=6) == 6


def test_learn_smoke_digits():
    from byzlearn.decentralized.learning import LearnSetup, learn

    r = learn(
        LearnSetup(
            dataset="digits",
            model="logreg",
            n=7,
            f=2,
            steps=30,
            eval_every=15,
            lr=0.5,
            attack="equivocate",
            attack_params={"scale": 3.0},
            threads=1,
        )
    )
    assert len(r["history"]) == 2 and r["final_worst_accuracy"] > 0.5
    assert r["history"][-1]["param_diameter"] < 1.0


def test_mve_is_not_won_by_degenerate_byzantine_subsets():
    """Byzantine vectors that make a subset affinely degenerate (zero volume in the higher dimension) are
    not chosen just for that: f copies of one far vector, or one far vector in the affine hull of honest ones."""
    g = torch.Generator().manual_seed(3)
    honest = torch.randn(13, 40, generator=g)  # general position, d > q
    far = honest.mean(0) + 100.0 * torch.randn(40, generator=g)
    copies = torch.cat([honest, far.expand(3, 40)])  # q = 16, f = 3: three identical Byzantine rows
    assert mve_subset(copies, 3) == list(range(13))
    # one Byzantine row on the line through two honest rows, far out: the subset {it, the 11 other honest
    # rows it spans with} has dimension m - 2 and zero (m - 1)-volume
    w = torch.zeros(13)
    w[0], w[1] = 60.0, -59.0
    in_hull = torch.cat([honest, (w @ honest).unsqueeze(0)])  # q = 14, f = 1
    assert mve_subset(in_hull, 1) == list(range(13))
    # and in general position the ordering is the volume's: a tight cluster and one far point
    assert mve_subset(torch.cat([honest, far.unsqueeze(0)]), 1) == list(range(13))


def test_mve_closed_form_and_khachiyan_agree_on_a_simplex():
    """Subsets of different dimensions are compared, so the two ways of getting an MVEE must agree."""
    from byzlearn.decentralized.mve import _khachiyan_logvol

    P = torch.randn(1, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # 5 points in R^4
    Pc = P - P.mean(1, keepdim=True)
    closed = 0.5 * torch.log(4 * torch.linalg.eigvalsh(Pc[0].T @ Pc[0] / 5)).sum()
    assert float(_khachiyan_logvol(P)) == pytest.approx(float(closed), rel=1e-6)
