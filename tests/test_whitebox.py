"""The white-box attack on learned aggregators (``learned_whitebox``, ours)."""

import dataclasses
import json

import pytest
import torch

from byzlearn import config as C
from byzlearn.aggregators import build_aggregator
from byzlearn.attacks import ATTACKS
from byzlearn.attacks.gradient import rows_of
from byzlearn.attacks.whitebox import LearnedWhiteBoxAttack, WhiteBoxModel
from byzlearn.engine.simulator import Simulator
from byzlearn.learned.meta_train import load_config, meta_train
from byzlearn.registry import ConfigError
from conftest import TINY_META, run_full_and_resumed

TINY = TINY_META + ["meta.trajectories=4", "byzantine.counts=[0, 1]", 'byzantine.attacks=["sign_flip"]']
VARIANTS = {
    "rnn_lstm": [],
    "arnn_lstm": ["aggregator.loss_info=true"],
    "set_arnn_lstm": ["aggregator.encoder=set", "aggregator.loss_info=true", "aggregator.preprocess=floor", "aggregator.input_clip=true"],
    "rnn_gru_step": ["aggregator.cell=gru", "aggregator.output=step"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("l2a")
    for name, extra in VARIANTS.items():
        meta_train(load_config(None, TINY + extra), root / name, progress=False)
    return root


def run_overrides(path, attack=(), aggregator="learned", extra=()):
    return [
        "data.name=digits",
        "workers.n=4",
        "workers.byzantine=1",
        "attack.name=learned_whitebox",
        f"aggregator.name={aggregator}",
        *([f"aggregator.path={json.dumps(str(path))}"] if aggregator == "learned" else []),
        "data.public_size=200",
        "optimizer.lr=0.3",
        "train.threads=1",
        *[f"attack.{k}={json.dumps(v)}" for k, v in dict(attack).items()],
        *extra,
    ]


def round_context(path, attack=(), rounds=4, pre=None):
    """A simulator after ``rounds`` rounds under the attack, and the AttackContext of the next round with a FIXED
    public batch (so that objective values are comparable). Returns (sim, ctx, G) with G the server's batch."""
    sim = Simulator(C.load(None, run_overrides(path, attack)))
    if pre:
        sim.aggregator = build_aggregator({"name": "learned", "path": str(path), "pre": pre}, f_default=1)
    for _ in range(rounds):
        sim.step()
    pick = sim.public_idx[:16]
    x, y = sim.x_train[pick], sim.y_train[pick]
    captured = {}
    forge = sim.attack.forge
    sim.attack.forge = lambda ctx: captured.setdefault("ctx", ctx) and forge(ctx)
    G, _ = sim.gradient_batch(sim.aggregation_context())
    sim.attack.forge = forge
    ctx = captured["ctx"]
    fixed = dataclasses.replace(ctx.aggregation, public_loss=lambda P: sim._losses(P, x, y))
    return sim, dataclasses.replace(ctx, aggregation=fixed), G


def test_registered_with_checked_options():
    assert "learned_whitebox" in ATTACKS.names()
    a = ATTACKS.build("learned_whitebox", {}, "attack")
    assert isinstance(a, LearnedWhiteBoxAttack) and a.omniscient
    assert (a.steps, a.objective, a.shared, a.init, a.max_norm_ratio) == (10, "ipm", True, "sign_flip", 10.0)
    assert ATTACKS.build("learned_whitebox", {"max_norm_ratio": None, "shared": False}, "attack").max_norm_ratio is None
    for bad in [{"steps": -1}, {"objective": "chaos"}, {"max_norm_ratio": 0}, {"step_size": -1.0}]:
        with pytest.raises(ConfigError):
            ATTACKS.build("learned_whitebox", bad, "attack")


def test_attacker_model_is_the_servers_aggregate(trained):
    """Through the attacker's differentiable copy, the forged rows give exactly what the server computes (same
    slots for the Byzantine rows, same state, same public batch)."""
    for name in ("rnn_lstm", "arnn_lstm"):
        sim, ctx, G = round_context(trained / name, rounds=3)
        byz = ctx.byzantine
        model = WhiteBoxModel(ctx)
        agg_ctx = dataclasses.replace(ctx.aggregation, params=sim.theta)
        with torch.no_grad():
            torch.testing.assert_close(model.aggregate(G[byz]), sim.aggregator.evaluate(G, agg_ctx), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_leaves_the_aggregator_state_unchanged(trained, name):
    sim, ctx, _ = round_context(trained / name)
    state = sim.aggregator.state
    saved = [s.clone() for s in state]
    out = sim.attack.forge(ctx)
    assert out.shape == (1, sim.d) and torch.isfinite(out).all()
    assert sim.aggregator.state is state and all(torch.equal(a, b) for a, b in zip(state, saved))
    assert all(not s.requires_grad for s in state)
    assert all(p.grad is None for p in sim.aggregator.net.parameters())  # no gradient leaks into the defender


@pytest.mark.parametrize("name", list(VARIANTS))
def test_more_damage_than_its_start_and_than_sign_flip(trained, name):
    sim, ctx, _ = round_context(trained / name)
    attack = ATTACKS.build("learned_whitebox", {"init": "alie"}, "attack")  # start elsewhere than sign flip
    rows = attack.forge(ctx)
    J = attack.objective_value(ctx, rows)
    sign_flip = attack.objective_value(ctx, rows_of(-ctx.honest.mean(0), ctx.f))
    assert J == pytest.approx(attack.last_objective, rel=1e-4, abs=1e-5)
    assert J < attack.initial_objective and J < sign_flip, (J, attack.initial_objective, sign_flip)
    radius = 10.0 * float(ctx.honest.norm(dim=1).max())
    assert float(rows.norm(dim=1).max()) <= radius * (1 + 1e-5)
    # the default starts from the sign flip: lower than it as well
    default = sim.attack
    J0 = default.objective_value(ctx, default.forge(ctx))
    assert J0 < sign_flip and default.initial_objective == pytest.approx(sign_flip, rel=1e-5)


def test_loss_objective_distinct_rows_and_sign_steps(trained):
    sim, ctx, _ = round_context(trained / "arnn_lstm")
    for options in [{"objective": "loss"}, {"shared": False}, {"optimizer": "sign", "max_norm_ratio": None}]:
        attack = ATTACKS.build("learned_whitebox", options, "attack")
        rows = attack.forge(ctx)
        assert rows.shape == (ctx.f, sim.d)
        assert attack.objective_value(ctx, rows) < attack.initial_objective, options
    # "loss": the public loss after the server's step grows compared with the sign flip
    attack = ATTACKS.build("learned_whitebox", {"objective": "loss"}, "attack")
    assert attack.objective_value(ctx, attack.forge(ctx)) < attack.objective_value(ctx, rows_of(-ctx.honest.mean(0), ctx.f))


def test_through_a_chain_of_pre_aggregators(trained):
    sim, ctx, _ = round_context(trained / "rnn_lstm", pre=["clipping"])
    state = [s.clone() for s in sim.aggregator.rule.state]
    attack = ATTACKS.build("learned_whitebox", {}, "attack")
    rows = attack.forge(ctx)
    assert attack.objective_value(ctx, rows) < attack.initial_objective
    assert all(torch.equal(a, b) for a, b in zip(sim.aggregator.rule.state, state))


def test_run_completes_and_resumes(trained, tmp_path):
    over = run_overrides(trained / "arnn_lstm", {"steps": 3}, extra=["train.rounds=12", "train.eval_every=4", "train.checkpoint_every=5"])
    cfg = C.load(None, over)
    full, a, b = run_full_and_resumed(cfg, tmp_path, stop_after=7)
    assert full["rounds"] == 12
    assert torch.equal(a["theta"], b["theta"])
    assert all(torch.equal(x, y) for x, y in zip(a["aggregator"]["state"], b["aggregator"]["state"]))


def test_clear_error_with_a_non_learned_rule(tmp_path):
    sim = Simulator(C.load(None, run_overrides(None, aggregator="median")))
    with pytest.raises(ConfigError, match="learned aggregator.*'median'"):
        sim.step()
    sim.aggregator = build_aggregator({"name": "median", "pre": ["nnm"]}, f_default=1)
    with pytest.raises(ConfigError, match="learned aggregator"):
        sim.step()
