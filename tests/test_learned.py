"""Learned aggregators (RNN/ARNN, Ji et al. IJCAI 2019, and our permutation-invariant variant)."""

import json
import math

import pytest
import torch

from byzlearn import config as C
from byzlearn.aggregators import AggregationContext, build_aggregator
from byzlearn.experiments.runner import Run
from byzlearn.learned import (
    CoordinatewiseRNN,
    learned_update,
    load_aggregator,
    log_sign,
    loss_features,
    normalise,
    save_aggregator,
    trial_points,
)
from byzlearn.learned.meta_train import load_config, meta_train
from byzlearn.registry import ConfigError
from conftest import TINY_META as TINY
from conftest import run_full_and_resumed

E10 = math.exp(-10)
CARD = {"p": 10.0, "preprocess": "seed", "loss_scale": 10.0, "output": "gradient", "step_scale": 0.1, "probe_lr": 0.5, "server_lr": 0.5}


def test_normalise_follows_the_seed_formula():
    # coordinate 0: norm 5; coordinate 1: all zero (A = 0); coordinate 2: one tiny normalised entry
    G = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 1e-6]], dtype=torch.float64)
    X, A = normalise(G, p=10.0)
    assert X.shape == (3, 2, 1)
    torch.testing.assert_close(A, torch.tensor([5.0, 0.0, math.sqrt(1 + 1e-12)], dtype=torch.float64))
    torch.testing.assert_close(X[0, :, 0], torch.tensor([0.6, 0.8], dtype=torch.float64))
    torch.testing.assert_close(X[1, :, 0], torch.tensor([E10, E10], dtype=torch.float64))  # replaced by e^-p
    torch.testing.assert_close(X[2, :, 0], torch.tensor([1.0 / A[2].item(), E10], dtype=torch.float64))
    # negative entries below the threshold become +e^-p too (the seed's rule, sign dropped)
    X2, _ = normalise(torch.tensor([[1.0], [-1e-7]], dtype=torch.float64))
    assert X2[0, 1, 0].item() == pytest.approx(E10)


def test_floor_and_log_sign_options():
    G = torch.tensor([[0.0, 3.0], [0.0, -4.0]], dtype=torch.float64)
    X, A = normalise(G, p=10.0, mode="floor")
    torch.testing.assert_close(A, torch.tensor([E10, 5.0], dtype=torch.float64))
    torch.testing.assert_close(X[:, :, 0], torch.tensor([[0.0, 0.0], [0.6, -0.8]], dtype=torch.float64))
    x = torch.tensor([[0.5], [-0.25], [1e-6]], dtype=torch.float64)
    enc = log_sign(x, p=10.0)
    torch.testing.assert_close(enc[0], torch.tensor([math.log(0.5) / 10, 1.0], dtype=torch.float64))
    torch.testing.assert_close(enc[1], torch.tensor([math.log(0.25) / 10, -1.0], dtype=torch.float64))
    torch.testing.assert_close(enc[2], torch.tensor([-1.0, 1e-6 * math.exp(10)], dtype=torch.float64))
    X3, _ = normalise(G, p=10.0, mode="log_sign")
    assert X3.shape == (2, 2, 3)


def test_loss_features_and_trial_points():
    losses = torch.tensor([2.0, 1.8, 2.0, 4.0, float("nan")])
    lf = loss_features(losses, scale=10.0)
    torch.testing.assert_close(lf, torch.tensor([math.tanh(-1.0), 0.0, 1.0, 1.0]), atol=1e-6, rtol=0)
    theta = torch.tensor([1.0, 2.0])
    G = torch.tensor([[1.0, 0.0], [float("nan"), 1.0]])
    P = trial_points(theta, G, 0.5)
    torch.testing.assert_close(P, torch.tensor([[1.0, 2.0], [0.5, 2.0], [1.0, 1.5]]))


def constant_output_net(**kw):
    net = CoordinatewiseRNN(**kw)
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(1.0)
    return net


def test_postprocessing_multiplies_by_the_worker_norm():
    """A network whose output is 1 everywhere returns A_i: the column norms (0 where all are 0)."""
    net = constant_output_net(workers=3)
    G = torch.tensor([[3.0, 0.0, 1.0], [4.0, 0.0, 2.0], [0.0, 0.0, 2.0]])
    u, _ = learned_update(net, G, net.initial_state(3), CARD)
    torch.testing.assert_close(u, torch.tensor([5.0, 0.0, 3.0]))


@pytest.mark.parametrize("d", [1, 7, 1000])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_shapes_for_any_d(d, cell):
    for kw in [dict(encoder="concat", workers=5), dict(encoder="set", loss_info=True)]:
        net = CoordinatewiseRNN(cell=cell, **kw)
        state = net.initial_state(d)
        assert len(state) == (4 if cell == "lstm" else 2) and state[0].shape == (d, 20)
        G = torch.randn(5, d)
        losses = torch.rand(6) + 1.0
        u, state2 = learned_update(net, G, state, CARD, losses)
        assert u.shape == (d,) and all(s.shape == (d, 20) for s in state2)
        assert not torch.equal(state2[0], state[0])  # the state moves


def test_concat_is_tied_to_m_and_pads_dropped_messages():
    net = CoordinatewiseRNN(workers=4)
    with pytest.raises(ValueError, match="trained for 4 workers"):
        net(torch.randn(10, 5, 1), None, net.initial_state(10))
    G = torch.randn(3, 10)  # one message dropped: padded with a zero row
    u3, _ = learned_update(net, G, net.initial_state(10), CARD)
    u4, _ = learned_update(net, torch.cat([G, torch.zeros(1, 10)]), net.initial_state(10), CARD)
    torch.testing.assert_close(u3, u4)


def test_set_encoder_is_permutation_invariant_and_serves_any_m():
    torch.manual_seed(0)
    net = CoordinatewiseRNN(encoder="set", loss_info=True)
    G, losses = torch.randn(7, 50), torch.rand(8) + 1
    perm = torch.randperm(7)
    u, _ = learned_update(net, G, net.initial_state(50), CARD, losses)
    up, _ = learned_update(net, G[perm], net.initial_state(50), CARD, torch.cat([losses[:1], losses[1:][perm]]))
    torch.testing.assert_close(u, up, atol=1e-6, rtol=1e-5)
    for m in (2, 13):
        assert learned_update(net, torch.randn(m, 50), net.initial_state(50), CARD, torch.rand(m + 1) + 1)[0].shape == (50,)


def test_nan_and_inf_rows_are_survived():
    net = CoordinatewiseRNN(workers=4)
    G = torch.randn(4, 30)
    G[1] = float("nan")
    G[2, :5] = float("inf")
    u, state = learned_update(net, G, net.initial_state(30), CARD)
    assert torch.isfinite(u).all() and all(torch.isfinite(s).all() for s in state)
    clean = G.clone()
    clean[1] = 0.0
    clean[2, :5] = 0.0
    torch.testing.assert_close(u, learned_update(net, clean, net.initial_state(30), CARD)[0])


def test_save_and_reload_give_identical_outputs(tmp_path):
    torch.manual_seed(1)
    net = CoordinatewiseRNN(cell="gru", encoder="set", loss_info=True)
    save_aggregator(net, {"method": "set_arnn_gru", **CARD}, tmp_path / "agg")
    net2, card = load_aggregator(tmp_path / "agg")
    assert card["network"]["cell"] == "gru" and card["method"] == "set_arnn_gru"
    G, losses = torch.randn(6, 200), torch.rand(7) + 1
    s1, s2 = net.initial_state(200), net2.initial_state(200)
    for _ in range(3):  # several rounds: the recurrent state carries over identically
        u1, s1 = learned_update(net, G, s1, card, losses)
        u2, s2 = learned_update(net2, G, s2, card, losses)
        assert torch.equal(u1, u2)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="byzlearn meta-train"):
        load_aggregator(tmp_path / "nothing")


# -- meta-training on the embedded digits data ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_arnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("arnn")
    cfg = load_config(None, TINY + ["aggregator.loss_info=true", "byzantine.counts=[0, 1]", 'byzantine.attacks=["sign_flip"]'])
    card = meta_train(cfg, out, progress=False)
    return out, card


def test_meta_training_lowers_the_meta_loss(tiny_arnn):
    out, card = tiny_arnn
    history = json.loads((out / "history.json").read_text())
    initial = history[0]["validation"]
    assert card["validation_score"] < 0.8 * initial, (initial, card["validation_score"])
    assert card["method"] == "arnn_lstm" and card["meta_steps"] == 12 * 3
    for name in ["aggregator.safetensors", "card.json", "history.json", "meta_loss.png"]:
        assert (out / name).is_file()


def test_learned_aggregator_in_a_run_resumes_with_its_state(tiny_arnn, tmp_path):
    out, _ = tiny_arnn
    over = [
        "workers.n=4",
        "workers.byzantine=1",
        "attack.name=sign_flip",
        "aggregator.name=learned",
        f"aggregator.path={json.dumps(str(out))}",
        "data.public_size=200",
        "optimizer.lr=0.3",
        "train.rounds=30",
        "train.eval_every=10",
        "train.checkpoint_every=10",
        "train.threads=1",
    ]
    cfg = C.load(None, over)
    full, a, b = run_full_and_resumed(cfg, tmp_path, stop_after=15)
    assert torch.equal(a["theta"], b["theta"])
    assert all(torch.equal(x, y) for x, y in zip(a["aggregator"]["state"], b["aggregator"]["state"]))
    assert full["aggregator"] == "arnn_lstm" and full["final_test_accuracy"] > 0.25  # it learns (chance: 0.1)


def test_arnn_needs_the_public_batch(tiny_arnn):
    out, _ = tiny_arnn
    with pytest.raises(ConfigError, match="public_size"):
        Run.create(C.load(None, ["aggregator.name=learned", f"aggregator.path={json.dumps(str(out))}", "workers.n=4"]), "unused")


def test_step_output_undoes_the_server_lr(tmp_path):
    net = constant_output_net(workers=2)
    save_aggregator(net, {"method": "rnn_lstm", **CARD, "output": "step"}, tmp_path / "s")
    agg = build_aggregator({"name": "learned", "path": str(tmp_path / "s")}, f_default=0)
    G = torch.tensor([[3.0, 1.0], [4.0, 0.0]])
    out = agg(G, AggregationContext(lr=0.2))
    torch.testing.assert_close(out, -0.1 * torch.tensor([5.0, 1.0]) / 0.2)  # SGD(lr) then applies +0.1 * A * o


def test_meta_config_errors():
    with pytest.raises(ConfigError, match="public_size"):
        load_config(None, ["aggregator.loss_info=true", "task.public_size=0", "task.data=digits"])
    with pytest.raises(ConfigError, match="byzantine.counts"):
        load_config(None, ["byzantine.counts=[10]", "task.data=digits"])
    with pytest.raises(ConfigError, match="unknown key aggregator.cells"):
        load_config(None, ["aggregator.cells=3", "task.data=digits"])


def test_meta_training_resumes_to_the_same_weights(tmp_path):
    cfg = load_config(None, TINY + ["meta.trajectories=8", "byzantine.counts=[0, 1]", 'byzantine.attacks=["gaussian"]'])
    meta_train(cfg, tmp_path / "full", progress=False)
    assert meta_train(cfg, tmp_path / "cut", progress=False, stop_after=4) is None
    assert (tmp_path / "cut" / "meta_checkpoint.pt").is_file() and not (tmp_path / "cut" / "card.json").exists()
    card = meta_train(cfg, tmp_path / "cut", progress=False, resume=True)
    a, _ = load_aggregator(tmp_path / "full")
    b, _ = load_aggregator(tmp_path / "cut")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert card["meta_steps"] == 8 * 3


def test_untrained_set_aggregator_is_the_mean():
    """Ours starts as the plain mean (uniform attention, gain 1, no correction), with the floor pre-processing."""
    net = CoordinatewiseRNN(encoder="set", loss_info=True)
    G = torch.randn(6, 40) * torch.logspace(-6, 2, 40)
    u, _ = learned_update(net, G, net.initial_state(40), {**CARD, "preprocess": "floor"}, torch.rand(7) + 1)
    torch.testing.assert_close(u, G.mean(0), rtol=1e-5, atol=1e-7)


def test_loss_memory_is_a_running_mean_in_the_state():
    net = CoordinatewiseRNN(encoder="set", loss_info=True, loss_memory=True, memory_decay=0.8)
    MEMORY_DECAY = 0.8
    G = torch.randn(3, 20)
    l1, l2 = torch.tensor([2.0, 1.9, 2.0, 3.0]), torch.tensor([2.0, 2.0, 1.9, 3.0])
    _, s1 = learned_update(net, G, net.initial_state(20), CARD, l1)
    assert len(s1) == net.recurrent_tensors + 1
    torch.testing.assert_close(s1[-1], (1 - MEMORY_DECAY) * loss_features(l1, 10.0))
    _, s2 = learned_update(net, G, s1, CARD, l2)
    torch.testing.assert_close(s2[-1], MEMORY_DECAY * s1[-1] + (1 - MEMORY_DECAY) * loss_features(l2, 10.0))


def test_clipped_probe_caps_forged_magnitudes():
    theta = torch.zeros(2)
    G = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    P = trial_points(theta, G, 0.5, "clipped", ref_norm=1.0)
    # row 1 (norm 5) is clipped to norm 1; row 2 (norm 0.5) and the zero row are untouched
    torch.testing.assert_close(P, torch.tensor([[0.0, 0.0], [-0.3, -0.4], [-0.15, -0.2], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="ref_norm"):
        trial_points(theta, G, 0.5, "clipped")


def test_public_grad_norm_matches_autograd():
    from byzlearn.learned.preprocess import public_grad_norm

    A = torch.tensor([[1.0, 2.0], [0.5, -1.0]])
    loss = lambda P: ((P @ A) ** 2).sum(1)  # noqa: E731  one loss per parameter row
    theta = torch.tensor([0.3, -0.7])
    expected = torch.linalg.vector_norm(2 * A @ (A.t() @ theta))
    assert public_grad_norm(loss, theta) == pytest.approx(float(expected), rel=1e-6)


def test_shipped_recipes_match_the_reproductions():
    """configs/learned/*.toml are the l2a reproductions' meta-training recipes (no drift)."""
    from pathlib import Path

    from byzlearn.experiments import l2a
    from byzlearn.learned.meta_train import from_sections

    root = Path(__file__).resolve().parents[1] / "configs" / "learned"
    for method in l2a.RECIPES:
        shipped = load_config(root / f"{method}.toml")
        expected = from_sections(l2a.recipe(method, None, False))
        assert shipped.to_dict() == expected.to_dict() and shipped.method == method


def test_a_finished_meta_training_can_be_extended(tmp_path):
    """Resuming with a larger meta.trajectories continues where it stopped, as if run in one go."""
    base = TINY + ["byzantine.counts=[0, 1]", 'byzantine.attacks=["gaussian"]']
    meta_train(load_config(None, base + ["meta.trajectories=8"]), tmp_path / "one", progress=False)
    meta_train(load_config(None, base + ["meta.trajectories=4"]), tmp_path / "two", progress=False)
    card = meta_train(load_config(None, base + ["meta.trajectories=8"]), tmp_path / "two", progress=False, resume=True)
    a, _ = load_aggregator(tmp_path / "one")
    b, _ = load_aggregator(tmp_path / "two")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert card["trajectories_run"] == 8 and card["training_config"]["meta"]["trajectories"] == 8
    with pytest.raises(ConfigError, match="only meta.trajectories"):
        meta_train(load_config(None, base + ["meta.trajectories=8", "meta.lr=0.02"]), tmp_path / "two", resume=True)


def test_meta_training_can_start_from_a_trained_aggregator(tmp_path):
    base = TINY + ["meta.trajectories=4", "byzantine.counts=[0, 1]", 'byzantine.attacks=["gaussian"]']
    first = meta_train(load_config(None, base), tmp_path / "a", progress=False)
    meta_train(load_config(None, base + [f"meta.init={json.dumps(str(tmp_path / 'a'))}"]), tmp_path / "b", progress=False)
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert history[0]["validation"] == pytest.approx(first["validation_score"], rel=1e-6)  # starts where a ended
    with pytest.raises(ConfigError, match="another shape"):
        meta_train(
            load_config(None, base + ["aggregator.hidden=8", f"meta.init={json.dumps(str(tmp_path / 'a'))}"]),
            tmp_path / "c",
            progress=False,
        )


def test_input_clip_bounds_every_row_by_the_public_gradient_norm():
    """``input_clip`` (ours): rows longer than ref_norm are scaled to it before the network sees them, so
    a forged row 1e6 times larger changes nothing once it is past the bound; shorter rows are untouched."""
    from byzlearn.learned.preprocess import clip_rows

    G = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(clip_rows(G, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    torch.manual_seed(0)
    net = CoordinatewiseRNN(encoder="set", loss_info=True)
    with torch.no_grad():  # a non-trivial network: random attention, gain and correction
        for p in net.parameters():
            p.normal_(0, 0.3)
    card = {**CARD, "preprocess": "floor", "input_clip": True}
    H = torch.randn(4, 30) * 0.01
    byz = torch.randn(3, 30)
    losses = torch.rand(8) + 1
    u1, _ = learned_update(net, torch.cat([H, byz]), net.initial_state(30), card, losses, ref_norm=0.05)
    u2, _ = learned_update(net, torch.cat([H, 1e6 * byz]), net.initial_state(30), card, losses, ref_norm=0.05)
    torch.testing.assert_close(u1, u2)
    # equal to the unclipped rule on explicitly clipped rows
    u3, _ = learned_update(net, clip_rows(torch.cat([H, byz]), 0.05), net.initial_state(30), {**card, "input_clip": False}, losses)
    torch.testing.assert_close(u1, u3)
    # without the clip the forged scale does reach the output
    u4, _ = learned_update(net, torch.cat([H, 1e6 * byz]), net.initial_state(30), {**card, "input_clip": False}, losses)
    assert not torch.allclose(u1, u4)
    with pytest.raises(ValueError, match="ref_norm"):
        learned_update(net, H, net.initial_state(30), card, torch.rand(5) + 1)


def test_input_clip_needs_the_public_batch():
    with pytest.raises(ConfigError, match="input_clip"):
        load_config(None, ["aggregator.input_clip=true", "aggregator.loss_info=false"])


def test_input_clip_at_use_overrides_the_card(tiny_arnn, tmp_path):
    """``aggregator.input_clip`` switches the bound on for a network meta-trained without it (and is refused for an RNN)."""
    out, card = tiny_arnn
    assert not card["input_clip"]
    plain = build_aggregator({"name": "learned", "path": str(out)}, f_default=0)
    clipped = build_aggregator({"name": "learned", "path": str(out), "input_clip": True}, f_default=0)
    assert clipped.card["input_clip"] and not plain.card.get("input_clip")
    theta = torch.randn(4) * 0.1
    loss = lambda P: ((P - 1.0) ** 2).sum(1)  # noqa: E731  public gradient norm 2 * |theta - 1| (about 4)
    G = torch.randn(3, 4)
    G[2] *= 1e4  # one huge row: the bound changes what the network reads
    ctx = AggregationContext(round=0, params=theta, lr=0.5, public_loss=loss)
    net, _ = load_aggregator(out)
    ref = float(torch.linalg.vector_norm(2 * (theta - 1.0)))
    from byzlearn.learned.aggregator import probe_losses
    from byzlearn.learned.preprocess import clip_rows

    losses = probe_losses(loss, theta, G, card["probe_lr"], card["probe"], ref_norm=ref)
    expected, _ = learned_update(net, clip_rows(G, ref), net.initial_state(4), card, losses)
    torch.testing.assert_close(clipped.aggregate(G, ctx), expected)
    assert not torch.allclose(plain.aggregate(G, ctx), expected)
    from byzlearn.learned.meta_train import card_of

    save_aggregator(CoordinatewiseRNN(workers=4), card_of(load_config(None, TINY)), tmp_path / "rnn")
    with pytest.raises(ConfigError, match="input_clip"):
        build_aggregator({"name": "learned", "path": str(tmp_path / "rnn"), "input_clip": True}, f_default=0)


def test_meta_validate_rescores_the_saved_network(tiny_arnn):
    """Without overrides it gives back the card's validation score (same seeded trajectories, same weights);
    overrides lengthen the trajectories or switch the norm bound on, but may not change the network's shape."""
    from byzlearn.learned.meta_train import meta_validate

    out, card = tiny_arnn
    res = meta_validate(out)
    assert res["score"] == pytest.approx(card["validation_score"], rel=1e-6)
    assert set(res["settings"]) == {"0/none", "1/sign_flip"} and res["steps"] == 30
    longer = meta_validate(out, ["meta.validate_steps=40", "aggregator.input_clip=true"])
    assert longer["steps"] == 40 and longer["input_clip"] and longer["score"] != res["score"]
    with pytest.raises(ConfigError, match="shape"):
        meta_validate(out, ["aggregator.hidden=8"])
    with pytest.raises(ConfigError, match="validate_steps"):
        meta_validate(out, ["meta.validate_steps=-1"])
