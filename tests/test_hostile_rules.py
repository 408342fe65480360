"""Regressions for hostile values in the robust rules (issue 15, items 2-5 and 8): each test failed before the fix.

Hostile here means finite rows whose squares overflow or underflow the dtype, float16/bfloat16 batches,
rows far beyond the honest scale, and batches that do not own their memory.
"""

import math

import pytest
import torch

from byzlearn.aggregators import AggregationContext, build_aggregator
from byzlearn.aggregators import functional as F
from byzlearn.learned import CoordinatewiseRNN, learned_update, save_aggregator
from byzlearn.learned.preprocess import MAX_RATIO, bound_rows
from byzlearn.registry import ConfigError

CARD = {"p": 10.0, "preprocess": "seed", "loss_scale": 10.0, "output": "gradient", "step_scale": 0.1, "probe_lr": 0.5, "server_lr": 0.5}


def rand(n, d, seed, dtype=torch.float64):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def is_row_of(out, G, rows):
    return any(torch.equal(out, G[i]) for i in rows)


# ---------------------------------------------------------------- item 2: centered clipping
@pytest.mark.parametrize("d,value", [(1, 1e20), (100, 1.9e18), (1000, 3e38)])
def test_centered_clipping_clips_a_row_whose_square_overflows(d, value):
    G = rand(5, d, 0, torch.float32)
    G[4] = value  # finite; its squared norm overflows float32 (or nearly)
    out = F.centered_clipping(G, tau=1.0, iters=3)
    ref = F.centered_clipping(G.double(), tau=1.0, iters=3)  # float64: nothing overflows
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    # the row is clipped, not ignored: each step moves at most tau / n towards it
    assert float((out.double() - F.centered_clipping(G[:4].double(), tau=1.0, iters=3) * 4 / 5).abs().max()) < 3.0


def test_centered_clipping_in_float16_and_bfloat16():
    G = rand(7, 10, 1)
    G[5:] = 200.0  # float16: 200^2 * 10 overflows
    ref = F.centered_clipping(G, tau=1.0)
    for dtype in (torch.float16, torch.bfloat16):
        out = F.centered_clipping(G.to(dtype), tau=1.0)
        assert out.dtype == dtype and torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), F.centered_clipping(G.to(dtype).double(), tau=1.0), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(out.double(), ref, rtol=5e-2, atol=5e-2)


# ---------------------------------------------------------------- item 3: the geometric median's stopping test
def far_batch(S, d=10, seed=2):
    H = rand(3, d, seed)
    u = torch.ones(d, dtype=torch.float64) / math.sqrt(d)
    return H, torch.cat([H, (H.mean(0) + S * u).expand(2, d)])


def test_geometric_median_is_not_dragged_by_far_rows():
    H, _ = far_batch(1.0)
    limits = []
    for S in (1e6, 1e15, 1e30):
        G = far_batch(S)[1]
        z = F.geometric_median(G)
        exact = F.geometric_median(G, eps=0.0, max_iter=1000)
        torch.testing.assert_close(z, exact, atol=1e-4, rtol=0)  # the default tolerance lands on the optimum
        assert float((z - H.mean(0)).norm()) < 10.0  # bounded by the honest spread, not by S
        limits.append(z)
    # far rows pull with unit force whatever their distance: the median hardly moves between S = 1e6 and 1e30
    torch.testing.assert_close(limits[0], limits[2], atol=1e-4, rtol=0)
    torch.testing.assert_close(limits[1], limits[2], atol=1e-6, rtol=0)


def test_geometric_median_far_rows_in_float32_and_the_smoothed_variant():
    G = far_batch(1e15, d=50, seed=3)[1]
    exact = F.geometric_median(G, eps=0.0, max_iter=1000)
    torch.testing.assert_close(F.geometric_median(G.float()).double(), exact, atol=1e-3, rtol=0)
    smooth = F.geometric_median(G, nu=1e-3)
    torch.testing.assert_close(smooth, F.geometric_median(G, nu=1e-3, eps=0.0, max_iter=1000), atol=1e-4, rtol=0)


# ---------------------------------------------------------------- item 4: low precision and huge norms in the distance rules
DIST = {
    "krum": lambda G, f: F.krum(G, f),
    "multi_krum": lambda G, f: F.multi_krum(G, f),
    "mda": lambda G, f: F.mda(G, f),
    "bulyan": lambda G, f: F.bulyan(G, f),
    "geometric_median": lambda G, f: F.geometric_median(G),
    "nnm+krum": lambda G, f: F.krum(F.nnm(G, f), f),
}


@pytest.mark.parametrize("name", list(DIST))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_batches_are_computed_like_float32(name, dtype):
    # d = 100,000: an honest N(0, 1) row's squared norm (1e5) overflows float16
    n, f, d = 11, 2, 100_000
    G = rand(n, d, 4, dtype)
    G[:f] = 20.0  # far Byzantine rows first: an all-ties selection would pick them
    out = DIST[name](G, f)
    ref = DIST[name](G.float(), f)
    assert out.dtype == dtype and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    if name in ("krum", "nnm+krum"):
        assert name == "nnm+krum" or is_row_of(out, G, range(f, n))


@pytest.mark.parametrize("name", list(DIST) + ["centered_clipping", "nnm"])
@pytest.mark.parametrize("dtype,scales", [(torch.float32, (2.0**-125, 2.0**60)), (torch.float64, (2.0**-1000, 2.0**500))])
def test_scale_equivariance_at_the_dtype_extremes(name, dtype, scales):
    # powers of two scale exactly: rows whose squares underflow or overflow the dtype give the scaled result
    n, f = 11, 2
    X = rand(n, 6, 5, dtype)
    X[:f] = X[f:].mean(0) + 50.0  # far Byzantine rows first
    rules = {**DIST, "centered_clipping": None, "nnm": lambda G, f: F.nnm(G, f)}
    for s in scales:
        if name == "centered_clipping":
            out, ref = F.centered_clipping(s * X, tau=s * 1.0), F.centered_clipping(X, tau=1.0)
        else:
            out, ref = rules[name](s * X, f), rules[name](X, f)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out / s, ref, rtol=1e-5, atol=1e-6)


def test_float32_rows_with_norms_above_sqrt_max():
    n, f = 9, 2
    X = rand(n, 50, 6, torch.float32)
    X[:f] = X[f:].mean(0) + 30.0
    G = 1e19 * X  # every row's squared norm overflows float32
    assert is_row_of(F.krum(G, f), G, range(f, n))
    for name in ("multi_krum", "mda", "geometric_median"):
        torch.testing.assert_close(DIST[name](G, f) / 1e19, DIST[name](X, f), rtol=1e-5, atol=1e-5)


def test_sums_near_the_float32_maximum_do_not_overflow():
    X = 1.5 + 0.4 * torch.rand(15, 8, generator=torch.Generator().manual_seed(7))  # in [1.5, 1.9]
    s = 2.0**127  # rows in [2.6e38, 3.2e38]: finite, any sum of two overflows
    G = (X * s).float()
    for name, fn in {
        "mean": lambda G: F.mean(G),
        "trimmed_mean": lambda G: F.trimmed_mean(G, 3),
        "multi_krum": lambda G: F.multi_krum(G, 3),
        "bulyan": lambda G: F.bulyan(G, 3),
        "zeno": lambda G: F.zeno(G, 3, 1.0, torch.zeros(15), 0.0),
    }.items():
        out = fn(G)
        assert torch.isfinite(out).all(), name
        torch.testing.assert_close(out.double() / s, fn(X.double()), rtol=1e-6, atol=0, msg=name)


def test_clipping_and_arc_clip_a_finite_row_whose_norm_overflows():
    G = rand(7, 100, 8, torch.float32)
    G[0] = 1e38  # norm 1e39: above the float32 maximum, every entry finite
    out = F.static_clip(G, 2.0)
    assert torch.isclose(out[0].double().norm(), torch.tensor(2.0, dtype=torch.float64), rtol=1e-6)
    assert torch.equal(out[1:], F.static_clip(G[1:], 2.0))
    a = F.arc(G, 1)  # k = 1: the huge row is clipped to the second largest norm
    second = float(G[1:].double().norm(dim=1).max())
    assert math.isclose(float(a[0].double().norm()), second, rel_tol=1e-5)
    assert torch.equal(a[1:], G[1:])
    h = F.static_clip(torch.full((3, 100_000), 1.0, dtype=torch.float16), 2.0)  # norm 316 < 65504, fine already
    big = F.static_clip(torch.full((3, 100), 1e4, dtype=torch.float16), 2.0)  # norm 1e5 > 65504
    assert (
        torch.isfinite(big).all() and torch.isclose(big.double().norm(dim=1), torch.full((3,), 2.0, dtype=torch.float64), rtol=1e-3).all()
    )
    assert torch.isclose(h.double().norm(dim=1), torch.full((3,), 2.0, dtype=torch.float64), rtol=1e-3).all()


def test_denormal_scale_batches_keep_their_ordering():
    # honest rows at 1e-30 in float32: squared distances (1e-60) underflow to 0, every Krum score ties
    n, f = 9, 2
    X = rand(n, 20, 9, torch.float32)
    X[:f] = X[f:].mean(0) + 40.0
    G = 1e-30 * X
    k = F.krum(G, f)
    assert is_row_of(k, G, range(f, n))
    assert torch.equal(k, G[int(torch.argmin(F.krum_scores(X.double(), f)))])


# ---------------------------------------------------------------- item 5: learned aggregators
@torch.no_grad()
def test_learned_aggregator_is_finite_and_stops_following_the_attackers_scale():
    torch.manual_seed(0)
    net = CoordinatewiseRNN(workers=10)
    H = 0.01 * rand(10, 40, 10, torch.float32)
    outs = {}
    for S in (1e10, 1e20, 1e30, 3e38):
        G = H.clone()
        G[:3] = S  # finite rows far beyond the honest scale
        u, state = learned_update(net, G, net.initial_state(40), CARD)
        assert torch.isfinite(u).all() and all(torch.isfinite(s).all() for s in state)
        outs[S] = u
    median_norm = float(H.double().norm(dim=1).median())
    for S in (1e20, 1e30, 3e38):
        torch.testing.assert_close(outs[S], outs[1e10], rtol=1e-4, atol=0)  # saturated: S no longer matters
    assert float(outs[1e10].double().norm()) < 10 * MAX_RATIO * median_norm


def test_bound_rows_shortens_rows_beyond_the_ratio_to_it_and_leaves_the_rest(tmp_path):
    G = rand(6, 5, 12)
    assert bound_rows(G, 1e6) is G  # nothing beyond the bound: the same tensor
    H = G.clone()
    H[0] *= 1e9
    med = float(H.norm(dim=1).sort().values[2])  # the lower median of the 6 norms
    out = bound_rows(H, 10.0)
    assert math.isclose(float(out[0].norm()), 10.0 * med, rel_tol=1e-12)
    torch.testing.assert_close(out[0] / out[0].norm(), G[0] / G[0].norm())
    assert torch.equal(out[1:], H[1:])
    torch.manual_seed(0)
    save_aggregator(CoordinatewiseRNN(workers=6), {**CARD, "method": "rnn"}, tmp_path / "rnn")
    agg = build_aggregator({"name": "learned", "path": str(tmp_path / "rnn"), "max_ratio": 10.0}, f_default=1)
    assert agg.max_ratio == 10.0
    with pytest.raises(ConfigError, match="max_ratio"):
        build_aggregator({"name": "learned", "path": str(tmp_path / "rnn"), "max_ratio": 0.0}, f_default=1)


@torch.no_grad()
def test_learned_aggregator_takes_low_precision_batches():
    net = CoordinatewiseRNN(encoder="set", loss_info=True)
    for dtype in (torch.float16, torch.bfloat16):
        G = rand(7, 30, 11, dtype)
        G[0] = torch.finfo(dtype).max
        u, _ = learned_update(net, G, net.initial_state(30), CARD, torch.rand(8) + 1)
        assert u.dtype == dtype and torch.isfinite(u).all()


# ---------------------------------------------------------------- item 8 (part): the functional API's input checks
@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.zeros(0, 3), "empty"),
        (torch.zeros(3), r"Tensor\[n, d\]"),
        (torch.zeros(3, 3, dtype=torch.long), "floating-point"),
        ([[1.0, 2.0]], r"got a list"),
    ],
)
def test_mean_rejects_what_no_rule_accepts(bad, match):
    with pytest.raises(ValueError, match=match):
        F.mean(bad)
    with pytest.raises(ValueError, match=match):
        build_aggregator({"name": "mean"}, f_default=0)(bad)


@pytest.mark.parametrize("pre", [{"name": "clipping", "c": 1.0}, {"name": "arc"}])
def test_owned_batches_that_share_memory_are_not_written(pre):
    base = torch.full((1, 4), 10.0)
    G = base.expand(5, 4)  # five rows, one storage
    agg = build_aggregator({"name": "mean", "pre": [pre]}, f_default=1)
    out = agg(G, AggregationContext(owns_batch=True))
    assert torch.equal(base, torch.full((1, 4), 10.0))
    expected = agg(G.contiguous(), AggregationContext())
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------- Zeno judges by descent, not distance
def test_zeno_keeps_a_far_row_only_when_it_descends():
    """Found by the long property search: at the float32 scale sqrt(tiny), the honest steps are below the
    loss's resolution (their loss decrease is exactly 0) and a row a million honest scales away that points
    down the loss is rightly kept; the same row pointing up the loss is dropped."""

    def loss(P):  # the property suite's public loss: half the mean squared distance to 1
        return 0.5 * (P.double() - 1.0).square().mean(dim=1)

    honest = torch.tensor([[1.6708e-19], [-3.1814e-20]])
    zeno = build_aggregator({"name": "zeno"}, f_default=1)
    for sign, kept in ((-1.0, True), (1.0, False)):  # params 0, step -lr g: g < 0 moves towards 1
        G = torch.cat([honest[:1], torch.tensor([[sign * 1.6707e-13]]), honest[1:]])
        ctx = AggregationContext(params=torch.zeros(1), lr=0.1, public_loss=loss)
        out = zeno(G, ctx)
        assert (abs(float(out)) > 1e-14) == kept
        if not kept:
            assert float(out.abs()) <= float(honest.abs().max())
