"""FLTrust (Cao, Fang, Liu & Gong, NDSS 2021): the spec example, the weights against a naive reference,
hostile rows, the engine's public update (memoised, the "public" stream, the workers' procedure), the
config checks, the Flower refusal, and a short run under sign flipping that trains and resumes bit-identically."""

import math

import pytest
import torch

from byzlearn import config as C
from byzlearn.aggregators import AggregationContext, build_aggregator
from byzlearn.aggregators.fltrust import FLTrust, fltrust, fltrust_weights
from byzlearn.engine.simulator import Simulator
from byzlearn.experiments.runner import Run
from byzlearn.registry import ConfigError
from test_runs import QUICK, final_theta

nan, inf = math.nan, math.inf
SPEC_G = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 1.0], [1.0, 1.0]])
SPEC_G0 = torch.tensor([1.0, 0.0])


def naive_fltrust(G: torch.Tensor, g0: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Alg. 2 literally, one row at a time in float64 (finite rows only)."""
    g0 = g0.double()
    n0 = math.sqrt(sum(float(v) ** 2 for v in g0))
    ts, acc = [], torch.zeros(G.shape[1], dtype=torch.float64)
    for row in G.double():
        ni = math.sqrt(sum(float(v) ** 2 for v in row))
        cos = float(row @ g0) / (ni * n0) if ni > 0 and n0 > 0 else 0.0
        ts.append(max(cos, 0.0))
        if ts[-1] > 0:
            acc += ts[-1] * (n0 / ni) * row
    return ts, acc / sum(ts) if sum(ts) > 0 else acc


def test_spec_example():
    out = fltrust(SPEC_G, SPEC_G0)
    assert torch.allclose(out, torch.tensor([0.8787, 0.2929]), atol=1e-4)
    ts, w = fltrust_weights(SPEC_G, SPEC_G0)
    assert torch.allclose(ts, torch.tensor([1.0, 0.0, 0.0, 1 / math.sqrt(2)], dtype=torch.float64))
    # w_i = TS_i |g0| / (|g_i| sum TS): 1/(2 * 1.7071), 0, 0, 0.7071/(1.4142 * 1.7071)
    s = 1 + 1 / math.sqrt(2)
    assert torch.allclose(w, torch.tensor([0.5 / s, 0, 0, 0.5 / s], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
def test_weights_and_output_match_the_naive_definition(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = 9, 13
    G = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.rand(n, 1, generator=g, dtype=torch.float64) * 10
    g0 = torch.randn(d, generator=g, dtype=torch.float64)
    ts_ref, out_ref = naive_fltrust(G, g0)
    ts, w = fltrust_weights(G, g0)
    assert torch.allclose(ts, torch.tensor(ts_ref, dtype=torch.float64), atol=1e-12)
    out = fltrust(G, g0)
    assert torch.allclose(out, out_ref, atol=1e-12)
    assert torch.allclose(out, w @ G, atol=1e-12)
    assert float(out.norm()) <= float(g0.norm()) * (1 + 1e-12)
    assert torch.allclose(fltrust(G.float(), g0.float()), out.float(), atol=1e-5)


def test_sign_flipped_and_hostile_rows_get_no_trust():
    g = torch.Generator().manual_seed(7)
    d = 50
    honest = 1.0 + 0.3 * torch.randn(6, d, generator=g, dtype=torch.float64)
    g0 = 1.0 + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    flipped = -5.0 * honest[:3]
    bad = honest[:5].clone()
    bad[0] = nan
    bad[1, 4] = inf
    bad[2, 0] = -inf
    bad[3] = 0.0  # zero norm
    bad[4] = 1e300 * torch.ones(d, dtype=torch.float64) * -1  # huge, pointing away
    G = torch.cat([flipped, honest, bad])
    ts, _ = fltrust_weights(G, g0)
    assert ts[:3].eq(0).all() and ts[-5:].eq(0).all() and ts[3:9].gt(0).all()
    assert torch.allclose(fltrust(G, g0), fltrust(honest, g0), atol=1e-12)
    # a huge row in the server's direction keeps its direction (not overflow), rescaled to |g0|
    huge = torch.cat([honest, 1e300 * g0[None]])
    _, ref = naive_fltrust(torch.cat([honest, g0[None]]), g0)
    assert torch.allclose(fltrust(huge, g0), ref, atol=1e-12)
    f32 = torch.cat([honest.float(), torch.full((1, d), 3e38)])  # its norm overflows float32
    assert torch.isfinite(fltrust(f32, g0.float())).all()


def test_no_trust_gives_the_zero_update():
    G = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [nan, 1.0], [0.0, 0.0]])
    assert torch.equal(fltrust(G, SPEC_G0), torch.zeros(2))  # every cosine <= 0
    assert torch.equal(fltrust(SPEC_G, torch.zeros(2)), torch.zeros(2))  # g0 = 0
    assert torch.equal(fltrust(SPEC_G, torch.tensor([nan, 1.0])), torch.zeros(2))  # g0 not finite
    with pytest.raises(ValueError, match="entries"):
        fltrust(SPEC_G, torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_returns_its_dtype(dtype):
    out = fltrust(SPEC_G.to(dtype), SPEC_G0.to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out.double(), torch.tensor([0.8787, 0.2929], dtype=torch.float64), atol=1e-2)


def test_registered_object_reads_the_public_update():
    rule = build_aggregator({"name": "fltrust"}, f_default=1)
    assert isinstance(rule, FLTrust) and rule.needs_public_batch and rule.needs_public_update
    assert rule.requirement(1) is None
    calls = []

    def public_update():
        calls.append(1)
        return SPEC_G0

    assert torch.allclose(rule(SPEC_G, AggregationContext(public_update=public_update)), fltrust(SPEC_G, SPEC_G0))
    assert calls == [1]
    with pytest.raises(ConfigError, match="public_update"):
        rule(SPEC_G, AggregationContext())
    with pytest.raises(ValueError, match="entries"):
        rule(SPEC_G, AggregationContext(public_update=lambda: torch.zeros(5)))


# ------------------------------------------------------------------------------------------------ engine
BASE = ["workers.n=5", "workers.byzantine=0", "aggregator.name=fltrust", "data.public_size=64", "train.rounds=3"]


def test_config_checks():
    with pytest.raises(ConfigError, match="data.public_size"):
        Simulator(C.load(None, ["aggregator.name=fltrust"]))
    with pytest.raises(ConfigError, match="fedavg.aggregate"):
        Simulator(C.load(None, BASE + ["train.algorithm=fedavg", "fedavg.aggregate=weights"]))


def test_flower_refuses_fltrust_before_training():
    pytest.importorskip("flwr")
    from byzlearn.flower.core import RobustAggregation

    with pytest.raises(ConfigError, match="root set"):
        RobustAggregation("fltrust", f=1, public_loss=lambda P: P.sum(1))
    # behind a pre-aggregator too: a chain needs what its rule reads
    with pytest.raises(ConfigError, match="root set"):
        RobustAggregation({"name": "fltrust", "pre": ["clipping"]}, f=1, public_loss=lambda P: P.sum(1))
    with pytest.raises(ConfigError, match="public batch"):
        RobustAggregation({"name": "zeno", "pre": ["nnm"]}, f=1)


def test_a_chain_needs_what_its_rule_reads():
    from byzlearn.aggregators import build_aggregator

    for name, batch, update in (("fltrust", True, True), ("zeno", True, False), ("median", False, False)):
        chain = build_aggregator({"name": name, "pre": ["clipping"]}, f_default=1)
        assert (chain.needs_public_batch, chain.needs_public_update) == (batch, update), name
    with pytest.raises(ConfigError, match="data.public_size"):
        Simulator(C.load(None, ["aggregator.name=fltrust", "aggregator.pre=['clipping']"]))


@pytest.mark.parametrize("extra", [[], ["workers.momentum=0.9"], ["train.algorithm=fedavg", "fedavg.local_steps=3"]])
def test_public_update_is_the_workers_procedure_on_the_public_stream(extra):
    sim = Simulator(C.load(None, BASE + extra))
    state = sim.gens["public"].get_state()
    ctx = sim.aggregation_context()
    g0 = ctx.public_update()
    assert g0.shape == (sim.d,) and torch.isfinite(g0).all()
    after = sim.gens["public"].get_state()
    assert ctx.public_update() is g0 and torch.equal(sim.gens["public"].get_state(), after)  # once per round
    assert not torch.equal(after, state)
    # the same draws by hand, through the workers' own computation
    g = torch.Generator()
    g.set_state(state)
    P, B = sim.public_idx.numel(), sim.batch_size
    steps = sim.cfg.fedavg.local_steps if sim.fedavg else 1
    idx = torch.stack([sim.public_idx[torch.randperm(P, generator=g)[:B]] for _ in range(steps)])
    if sim.fedavg:
        ref = sim.local_updates(idx.unsqueeze(1))[0][0]
    else:
        ref = sim.worker_gradients(idx)[0][0]
        if sim.momentum is not None:
            ref = (1 - 0.9) * ref  # ema from m = 0
    assert torch.allclose(g0, ref, rtol=1e-6, atol=1e-7)
    # a pseudo-gradient, like the honest rows: it points the same way as their mean
    G, _ = sim.gradient_batch()
    assert float(torch.nn.functional.cosine_similarity(G.mean(0), g0, dim=0)) > 0.2  # minibatch noise at init
    # a fresh context is a fresh round: a new draw
    assert not torch.equal(sim.aggregation_context().public_update(), g0)


FLTRUST_RUN = QUICK + ["workers.byzantine=2", "attack.name=sign_flip", "aggregator.name=fltrust", "data.public_size=100"]


@pytest.mark.parametrize("extra", [[], ["workers.momentum=0.9", "optimizer.name=sgd"]])
def test_run_under_sign_flip_trains_and_resumes_bit_identically(tmp_path, extra):
    cfg = C.load(None, FLTRUST_RUN + extra)
    summary = Run.create(cfg, tmp_path / "full").execute(progress=False)
    assert summary["final_test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert Run.create(cfg, tmp_path / "cut").execute(progress=False, stop_after=22) is None  # last checkpoint: 15
    Run.resume(tmp_path / "cut").execute(progress=False)
    assert torch.equal(final_theta(tmp_path / "full"), final_theta(tmp_path / "cut"))
