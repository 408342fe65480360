"""l2a-fig7: heterogeneous local models sending gradients for one global MLP-20 (Ji et al. 2019, §5.5)."""

import json

import pytest
import torch
import torch.nn.functional as F

from byzlearn.experiments import l2a
from byzlearn.learned import save_aggregator
from byzlearn.learned.heterogeneous import KINDS, HeterogeneousSimulator
from byzlearn.learned.meta_train import build_network, card_of, from_sections
from byzlearn.models import MODELS
from conftest import quick_reproduction


@pytest.fixture()
def sim(digits):
    torch.manual_seed(0)
    return HeterogeneousSimulator(digits, {"name": "mean"}, batch_size=16, lr=0.5, seed=3)


def _reference_module(sim, kind, j):
    """An explicitly built zoo module of type ``kind`` with worker j's global and own parameters copied in."""
    ds = sim.dataset
    W1, b1, W2, b2 = sim.model.unflatten(sim.theta).values()
    m = MODELS.build(kind, {}, "model", input_shape=ds.input_shape, num_classes=ds.num_classes)
    lin = [layer for layer in m if isinstance(layer, torch.nn.Linear)]
    loc = sim.local[kind][j]
    with torch.no_grad():
        if kind in ("mlp20", "mlp20relu"):
            for layer, (w, b) in zip(lin, [(W1, b1), (W2, b2)]):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
        elif kind == "mlp40":
            V1, c1, U2 = torch.split(loc, [20 * W1.shape[1], 20, 10 * 20])
            lin[0].weight.copy_(torch.cat([W1, V1.view(20, -1)]))
            lin[0].bias.copy_(torch.cat([b1, c1]))
            lin[1].weight.copy_(torch.cat([W2, U2.view(10, 20)], dim=1))
            lin[1].bias.copy_(b2)
        else:  # mlp20x2
            V, c = torch.split(loc, [400, 20])
            for layer, (w, b) in zip(lin, [(W1, b1), (V.view(20, 20), c), (W2, b2)]):
                layer.weight.copy_(w)
                layer.bias.copy_(b)
    return m, lin


def test_shared_coordinate_gradients_equal_autograd_of_each_module_type(sim):
    assert sim.n == 12 and sim.d == 64 * 20 + 20 + 200 + 10
    assert [sim.local[k].shape[1] for k in KINDS] == [0, 20 * 64 + 20 + 200, 420, 0]
    idx = sim.sampler.sample(torch.Generator().manual_seed(5))
    G, local, losses = sim.gradients(idx)
    ds = sim.dataset
    for kind in KINDS:
        for j in range(3):
            row = sim.rows[kind].start + j
            m, lin = _reference_module(sim, kind, j)
            if kind == "mlp20relu":
                assert any(isinstance(layer, torch.nn.ReLU) for layer in m)
            loss = F.cross_entropy(m(ds.x_train[idx[row]]), ds.y_train[idx[row]])
            params = [p for layer in lin for p in (layer.weight, layer.bias)]
            g = torch.autograd.grad(loss, params)
            torch.testing.assert_close(losses[row], loss.detach())
            if kind in ("mlp20", "mlp20relu"):
                ref_shared, ref_local = torch.cat([t.reshape(-1) for t in g]), torch.zeros(0)
            elif kind == "mlp40":
                gw1, gb1, gw2, gb2 = g
                ref_shared = torch.cat([gw1[:20].reshape(-1), gb1[:20], gw2[:, :20].reshape(-1), gb2])
                ref_local = torch.cat([gw1[20:].reshape(-1), gb1[20:], gw2[:, 20:].reshape(-1)])
            else:
                gw1, gb1, gv, gc, gw2, gb2 = g
                ref_shared = torch.cat([gw1.reshape(-1), gb1, gw2.reshape(-1), gb2])
                ref_local = torch.cat([gv.reshape(-1), gc])
            torch.testing.assert_close(G[row], ref_shared, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(local[kind][j], ref_local, atol=1e-6, rtol=1e-5)


def test_relu_workers_differ_from_sigmoid_workers_on_the_same_batch(sim):
    idx = sim.sampler.sample(torch.Generator().manual_seed(1))
    idx[sim.rows["mlp20relu"]] = idx[sim.rows["mlp20"]]  # same data, same parameters, other activation
    G, _, _ = sim.gradients(idx)
    assert not torch.allclose(G[sim.rows["mlp20relu"]], G[sim.rows["mlp20"]])


def test_a_round_moves_local_parameters_and_applies_minus_lr_times_the_mean(sim):
    theta0, local0 = sim.theta.clone(), {k: v.clone() for k, v in sim.local.items()}
    sampler_state, gen_state = sim.sampler.state_dict(), sim.gens["sample"].get_state()
    G, local, _ = sim.gradients(sim.sampler.sample(sim.gens["sample"]))
    sim.sampler.load_state_dict(sampler_state)
    sim.gens["sample"].set_state(gen_state)
    loss = sim.step()
    assert loss > 0 and sim.round == 1
    torch.testing.assert_close(sim.theta, theta0 - 0.5 * G.mean(0))
    for kind in ("mlp40", "mlp20x2"):
        assert not torch.equal(sim.local[kind], local0[kind])
        torch.testing.assert_close(sim.local[kind], local0[kind] - 0.5 * local[kind])
    _, acc = sim.evaluate()
    assert 0.0 <= acc <= 1.0


def test_fixed_order_aggregator_for_10_workers_is_refused_and_m12_recipe_has_12(tmp_path, digits):
    r = l2a.recipe("rnn_lstm_m12", None, quick=True)
    assert r["task"]["workers"] == 12 and r["aggregator"] == l2a.recipe("rnn_lstm", None, quick=True)["aggregator"]
    assert l2a.recipe("rnn_lstm", None, quick=False)["task"]["workers"] == l2a.WORKERS  # the others unchanged
    cfg = from_sections(l2a.recipe("rnn_lstm", None, quick=True))
    save_aggregator(build_network(cfg), card_of(cfg), tmp_path / "m10")
    with pytest.raises(Exception, match="at most the 10 workers"):
        HeterogeneousSimulator(digits, {"name": "learned", "path": str(tmp_path / "m10")})


def test_quick_reproduction_writes_rows_with_the_required_keys(tmp_path):
    out = tmp_path / "fig7"
    rows = quick_reproduction("l2a-fig7", out, ("rnn_lstm_m12", "set_rnn_lstm"))
    assert len(rows) == 6  # 5 methods (2 of them guarded) on the heterogeneous workers + the homogeneous reference, 1 seed
    for r in rows:
        assert {
            "method",
            "setting",
            "final_test_accuracy",
            "best_test_accuracy",
            "final_train_loss",
            "seconds_per_round",
            "wall_time_s",
        } <= set(r)
        assert {"data", "model", "workers", "byzantine", "system"} <= set(r["setting"])
        assert 0.0 <= r["final_test_accuracy"] <= r["best_test_accuracy"] <= 1.0
    het = [r for r in rows if r["setting"]["system"] == "heterogeneous"]
    assert {r["method"] for r in het} == {"mean", "rnn_lstm_m12", "set_rnn_lstm", "rnn_lstm_m12_capped", "set_rnn_lstm_capped"}
    # the learned rows are judged on their spread by --check, the rule's rows exactly
    assert all((r.get("check") == "spread") == (r["method"] != "mean") for r in rows)
    assert json.loads((out / "numerics.json").read_text())["settings"]["MKL_CBWR"] == "COMPATIBLE"
    assert all(r["setting"]["workers"] == 12 and "3x mlp40" in r["setting"]["model"] for r in het)
    ref = [r for r in rows if r["setting"]["system"] == "homogeneous"]
    assert [(r["method"], r["setting"]["workers"]) for r in ref] == [("mean", 10)]
    assert (out / "fig7.png").stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "OUR reading" in md and "byzlearn reproduce l2a-fig7" in md and "| set_rnn_lstm |" in md
