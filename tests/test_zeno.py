"""Zeno (Xie, Koyejo, Gupta 2019): scores, selection, the object's use of the public batch."""

import math

import pytest
import torch

from byzlearn.aggregators import AggregationContext, build_aggregator
from byzlearn.aggregators import functional as F
from byzlearn.aggregators.validation import Zeno
from byzlearn.registry import ConfigError

inf, nan = math.inf, math.nan


def test_scores_exact_by_hand():
    G = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, -4.0]], dtype=torch.float64)
    losses_after = torch.tensor([0.5, 1.5, 0.25], dtype=torch.float64)
    # mean_square penalties: 1, 2, 8 ; rho = 0.1 ; loss_before = 1
    s = F.zeno_scores(G, 1.0, losses_after, 0.1)
    assert torch.allclose(s, torch.tensor([1 - 0.5 - 0.1, 1 - 1.5 - 0.2, 1 - 0.25 - 0.8], dtype=torch.float64))
    s2 = F.zeno_scores(G, 1.0, losses_after, 0.1, penalty="squared_norm")  # penalties 2, 4, 16
    assert torch.allclose(s2, torch.tensor([0.3, -0.9, -0.85], dtype=torch.float64))
    # keep the n-b = 2 best (0.4 and -0.05) -> mean of rows 0 and 2
    assert torch.allclose(F.zeno(G, 1, 1.0, losses_after, 0.1), torch.tensor([0.5, -1.5], dtype=torch.float64))
    # with the paper's penalty the kept ones are rows 0 and 2 as well (0.3, -0.85 > -0.9)
    assert torch.allclose(F.zeno(G, 1, 1.0, losses_after, 0.1, "squared_norm"), torch.tensor([0.5, -1.5], dtype=torch.float64))
    assert torch.equal(F.zeno(G, 2, 1.0, losses_after, 0.1), G[0])


def test_non_finite_candidates_score_minus_inf():
    G = torch.tensor([[1.0], [nan], [inf], [2.0]])
    s = F.zeno_scores(G, 1.0, torch.tensor([0.0, 0.0, 0.0, nan]), 0.0)
    assert s.tolist() == [1.0, -inf, -inf, -inf]
    assert not torch.isnan(s).any()
    assert torch.equal(F.zeno(G, 2, 1.0, torch.tensor([0.0, 0.0, 0.0, 0.5]), 0.0), torch.tensor([1.5]))


def test_function_errors():
    G = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="b < n"):
        F.zeno(G, 3, 0.0, torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="one loss per candidate"):
        F.zeno(G, 1, 0.0, torch.zeros(2), 0.1)


def _quadratic_setup(n_honest=6, n_byz=3, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(d, generator=g, dtype=torch.float64)
    theta = torch.zeros(d, dtype=torch.float64)
    grad = theta - target  # gradient of 0.5 ||θ - target||²
    H = grad + 0.1 * torch.randn(n_honest, d, generator=g, dtype=torch.float64)
    B = -5.0 * grad.expand(n_byz, d).clone()  # pointing uphill
    calls = []

    def public_loss(P):
        calls.append(P.shape)
        return 0.5 * ((P - target) ** 2).sum(dim=1)

    return H, B, theta, public_loss, calls


def test_zeno_object_drops_uphill_byzantines():
    H, B, theta, public_loss, calls = _quadratic_setup()
    G = torch.cat([B[:1], H[:3], B[1:], H[3:]])
    ctx = AggregationContext(params=theta, lr=0.1, public_loss=public_loss)
    agg = build_aggregator({"name": "zeno"}, f_default=3)
    assert isinstance(agg, Zeno) and agg.b == 3
    out = agg(G, ctx)
    assert torch.allclose(out, H.mean(0))
    assert calls == [torch.Size([G.shape[0] + 1, G.shape[1]])]  # one batched call
    assert not torch.allclose(F.mean(G), H.mean(0), atol=1e-1)
    # non-finite Byzantine candidates never reach public_loss and are dropped
    seen = []

    def checked_loss(P):
        seen.append(bool(torch.isfinite(P).all()))
        return public_loss(P)

    G2 = G.clone()
    G2[0] = nan
    G2[4, 3] = inf
    out2 = agg(G2, AggregationContext(params=theta, lr=0.1, public_loss=checked_loss))
    assert seen == [True] and torch.allclose(out2, H.mean(0))


def test_zeno_score_uses_lr_and_default_rho():
    # d = 1, loss(θ) = θ², θ = 1, lr = 0.5 : candidates u -> loss(1 - 0.5 u)
    G = torch.tensor([[2.0], [1.0], [-1.0]], dtype=torch.float64)
    ctx = AggregationContext(params=torch.tensor([1.0], dtype=torch.float64), lr=0.5, public_loss=lambda P: (P**2).sum(1))
    # scores with rho = lr/200 = 0.0025: 1-0-0.01, 1-0.25-0.0025, 1-2.25-0.0025 -> keep rows 0, 1 (b=1)
    assert torch.allclose(Zeno(f=1)(G, ctx), torch.tensor([1.5], dtype=torch.float64))
    # an explicit huge rho penalises the large candidate: scores 1-400=-399, 0.75-100, -1.25-100 -> rows 1, 2
    assert torch.allclose(Zeno(f=1, rho=100.0)(G, ctx), torch.tensor([0.0], dtype=torch.float64))
    # the object's lr overrides ctx.lr: lr = 1 -> losses 1, 0, 4 -> keep rows 0 and 1 still
    assert torch.allclose(Zeno(f=1, lr=1.0, rho=0.0)(G, ctx), torch.tensor([1.5], dtype=torch.float64))
    assert torch.allclose(Zeno(f=0, b=2, lr=1.0, rho=0.0)(G, ctx), torch.tensor([1.0], dtype=torch.float64))


def test_zeno_requirements_and_missing_context():
    with pytest.raises(ConfigError, match=r"b >= f"):
        Zeno(f=2, b=1).check(5)
    with pytest.raises(ConfigError, match=r"b < n"):
        Zeno(f=2).check(2)
    Zeno(f=2, b=4).check(5)
    G = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="data.public_size > 0"):
        Zeno(f=1)(G, AggregationContext(params=torch.zeros(2), lr=0.1))
    with pytest.raises(ValueError, match="step size"):
        Zeno(f=1)(G, AggregationContext(params=torch.zeros(2), public_loss=lambda P: P.sum(1)))
    with pytest.raises(ConfigError, match="penalty"):
        Zeno(penalty="l1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="wrong type"):
        build_aggregator({"name": "zeno", "penalty": "l1"}, f_default=1)
