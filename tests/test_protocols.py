"""The standard training protocols on the phased round: worker momentum, robust FedAvg, data splits."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from byzlearn import config as C
from byzlearn.attacks import Attack
from byzlearn.engine import make_simulator
from byzlearn.engine.round import AttackContractError
from byzlearn.engine.work import Momentum
from byzlearn.registry import ConfigError
from conftest import run_full_and_resumed

BASE = ["data.name=digits", "model.name=mlp20", "workers.n=10", "train.threads=1", "train.rounds=20"]


def sim_of(overrides, digits):
    return make_simulator(C.load(None, BASE + overrides), digits)


# -- worker momentum -------------------------------------------------------------------------------


@pytest.mark.parametrize("form, expected", [("ema", [0.1, 0.19, 0.271]), ("sum", [1.0, 1.9, 2.71])])
def test_momentum_forms_on_the_spec_example(form, expected):
    m = Momentum(n=2, d=3, beta=0.9, form=form)
    for want in expected:
        out = m.step(torch.ones(1, 3), torch.tensor([1]))
        torch.testing.assert_close(out, torch.full((1, 3), want), atol=1e-6, rtol=0)
    assert torch.equal(m.buffer[0], torch.zeros(3))  # a worker that did not compute keeps its row


@pytest.mark.parametrize("form", ["ema", "sum"])
def test_workers_send_the_recursion_of_their_gradients(form, digits):
    """At lr = 0 the model stays put, so the momentum run's messages must be the recursion of the plain run's."""
    frozen = ["optimizer.lr=0.0"]
    plain = sim_of(frozen, digits)
    mom = sim_of(frozen + ["workers.momentum=0.9", f"workers.momentum_form={form}"], digits)
    m = torch.zeros(10, plain.d)
    for _ in range(4):
        G, _ = plain.gradient_batch()
        M, _ = mom.gradient_batch()
        m = 0.9 * m + (0.1 if form == "ema" else 1.0) * G
        torch.testing.assert_close(M, m, atol=1e-6, rtol=1e-5)
        plain.round += 1
        mom.round += 1
    assert not torch.allclose(M, G)  # the check can fail: momenta are not the gradients


def test_omniscient_attacks_see_the_honest_momenta(digits):
    sim = sim_of(
        [
            "optimizer.lr=0.0",
            "workers.momentum=0.9",
            "workers.byzantine=3",
            "attack.name=sign_flip",
            "attack.reference=mean",
            "attack.scale=2.0",
            "aggregator.name=median",
        ],
        digits,
    )
    for _ in range(3):
        G, _ = sim.gradient_batch()
        sim.round += 1
    byz = sim.byzantine
    honest = torch.ones(10, dtype=torch.bool)
    honest[byz] = False
    torch.testing.assert_close(G[byz], (-2.0 * G[honest].mean(0)).expand(3, -1), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(G[honest], sim.momentum.buffer[honest])


def test_label_flip_sends_raw_gradients_under_momentum(digits):
    flip = ["optimizer.lr=0.0", "workers.byzantine=3", "attack.name=label_flip", "aggregator.name=median"]
    plain, mom = sim_of(flip, digits), sim_of(flip + ["workers.momentum=0.9"], digits)
    for _ in range(3):
        G, _ = plain.gradient_batch()
        M, _ = mom.gradient_batch()
        plain.round += 1
        mom.round += 1
    byz = plain.byzantine
    torch.testing.assert_close(M[byz], G[byz], atol=0, rtol=0)  # raw poisoned gradients, no momentum
    assert not torch.allclose(M[0 if 0 not in byz.tolist() else 9], G[0 if 0 not in byz.tolist() else 9])


def test_draco_momentum_after_decoding_equals_worker_momentum(digits):
    """Fault-free DRACO with momentum applied to the decoded mean = every worker sending its momentum (linear recursion)."""
    common = ["workers.n=9", "workers.momentum=0.9"]
    draco = sim_of(common + ["aggregator.name=draco_repetition", "aggregator.s=1"], digits)
    plain = sim_of(common + ["aggregator.name=mean"], digits)
    for _ in range(15):
        draco.step()
        plain.step()
    torch.testing.assert_close(draco.theta, plain.theta, atol=1e-6, rtol=1e-5)


# -- robust FedAvg ---------------------------------------------------------------------------------


def test_fedavg_one_local_step_is_dsgd_on_the_mean(digits):
    fed = sim_of(["train.algorithm=fedavg", "fedavg.local_steps=1", "fedavg.local_lr=0.3", "optimizer.lr=1.0"], digits)
    dsgd = sim_of(["optimizer.lr=0.3"], digits)
    for _ in range(20):
        fed.step()
        dsgd.step()
    torch.testing.assert_close(fed.theta, dsgd.theta, atol=1e-6, rtol=1e-5)
    assert fed.evaluate()[1] > 0.3  # it learned


def test_local_sgd_batched_equals_a_loop_over_clients(digits):
    sim = sim_of(["train.algorithm=fedavg", "fedavg.local_steps=3", "fedavg.local_lr=0.2", "fedavg.local_weight_decay=0.01"], digits)
    draw = sim.draw()
    workers = torch.tensor([1, 4, 7])
    U, losses = sim.local_updates(draw.batches[:, workers])
    module = sim.model.module
    for i, w in enumerate(workers.tolist()):
        sim.model.load_into_module(sim.theta)
        opt = torch.optim.SGD(module.parameters(), lr=0.2, weight_decay=0.01)
        for s in range(3):
            idx = draw.batches[s, w]
            opt.zero_grad()
            loss = F.cross_entropy(module(digits.x_train[idx]), digits.y_train[idx])
            if s == 0:
                torch.testing.assert_close(losses[i], loss.detach())
            loss.backward()
            opt.step()
        w_end = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
        torch.testing.assert_close(U[i], sim.theta - w_end, atol=1e-6, rtol=1e-5)


def test_fedavg_client_sampling_counts(digits):
    sim = sim_of(
        ["train.algorithm=fedavg", "fedavg.fraction=0.5", "workers.byzantine=3", "aggregator.name=median", "aggregator.f=2"], digits
    )
    rounds, seen, byz_counts = 400, torch.zeros(10), []
    for r in range(rounds):
        sim.round = r
        d = sim.draw()
        assert d.participants.numel() == 5 and d.participants.unique().numel() == 5
        assert torch.equal(torch.cat([d.honest, d.byzantine]).sort().values, d.participants)
        seen[d.participants] += 1
        byz_counts.append(d.byzantine.numel())
    p = 0.5  # each worker is sampled with probability k / n
    sd = math.sqrt(rounds * p * (1 - p))
    assert ((seen - rounds * p).abs() < 4 * sd).all(), seen
    mean_b = sum(byz_counts) / rounds  # hypergeometric mean k f / n = 1.5
    assert abs(mean_b - 1.5) < 0.15 and min(byz_counts) == 0 and max(byz_counts) == 3


def test_fedavg_weights_mode_replaces_the_model(digits):
    sim = sim_of(["train.algorithm=fedavg", "fedavg.aggregate=weights", "fedavg.local_steps=2", "fedavg.local_lr=0.2"], digits)
    draw = sim.draw()
    W, _ = sim.local_updates(draw.batches)
    expected = W.mean(0)
    sim.apply_update(expected)
    torch.testing.assert_close(sim.theta, expected)


def test_fedavg_attacks_forge_updates_of_the_sampled_byzantine_clients(digits):
    sim = sim_of(
        [
            "train.algorithm=fedavg",
            "fedavg.fraction=0.6",
            "workers.byzantine=3",
            "attack.name=sign_flip",
            "attack.reference=mean",
            "aggregator.name=median",
            "aggregator.f=2",
        ],
        digits,
    )
    for r in range(10):
        sim.round = r
        draw = sim.draw()
        G, _ = sim.messages(draw, sim.aggregation_context())
        assert G.shape == (6, sim.d)
        hon = draw.rows_of(draw.honest)
        if draw.byzantine.numel():
            torch.testing.assert_close(G[draw.rows_of(draw.byzantine)], (-G[hon].mean(0)).expand(draw.byzantine.numel(), -1))


# -- data splits -----------------------------------------------------------------------------------


def test_honest_shards_partition_the_training_set_and_validation_is_held_out(digits):
    sim = sim_of(["workers.byzantine=3", "data.shards=honest", "data.validation_size=300", "data.public_size=100"], digits)
    idx, sizes = sim.sampler.index, sim.sampler.sizes
    shards = [set(idx[w, : sizes[w]].tolist()) for w in range(10)]
    honest = [w for w in range(10) if w not in sim.byzantine.tolist()]
    union = set().union(*(shards[w] for w in honest))
    assert sum(len(shards[w]) for w in honest) == len(union)  # disjoint
    val, pub = set(sim.validation_idx.tolist()), set(sim.public_idx.tolist())
    assert len(val) == 300 and not val & union and not val & pub and not pub & union
    assert len(union) + len(val) + len(pub) == digits.y_train.shape[0]  # nothing lost with the Byzantine workers
    for i, b in enumerate(sim.byzantine.tolist()):
        assert shards[b] == shards[honest[i]]  # the i-th Byzantine worker reuses the i-th honest shard


def test_validation_metrics_are_written(tmp_path, digits):
    from byzlearn.experiments.runner import Run

    cfg = C.load(None, BASE + ["data.validation_size=200", "train.eval_every=10"])
    summary = Run.create(cfg, tmp_path / "r").execute(progress=False)
    rows = [__import__("json").loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["validation_accuracy"] <= 1 and r["validation_loss"] > 0 for r in rows)
    assert summary["best_validation_accuracy"] == max(r["validation_accuracy"] for r in rows)


# -- resume, refusals, the attack contract ---------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["workers.momentum=0.9", "workers.byzantine=3", "attack.name=alie", "aggregator.name=trimmed_mean"],
        ["workers.momentum=0.5", "workers.momentum_form=sum", "workers.byzantine=2", "attack.name=label_flip", "aggregator.name=median"],
        [
            "train.algorithm=fedavg",
            "fedavg.local_steps=2",
            "fedavg.fraction=0.7",
            "workers.byzantine=2",
            "attack.name=ipm",
            "aggregator.name=median",
        ],
    ],
)
def test_resume_is_bit_identical(extra, tmp_path):
    cfg = C.load(None, BASE + ["train.rounds=30", "train.checkpoint_every=10"] + extra)
    _, full, cut = run_full_and_resumed(cfg, tmp_path, stop_after=13)
    assert torch.equal(full["theta"], cut["theta"])
    if "momentum" in full:
        assert torch.equal(full["momentum"]["buffer"], cut["momentum"]["buffer"])


@pytest.mark.parametrize(
    "override, words",
    [
        (["workers.momentum=1.0"], ["workers.momentum", "[0, 1)"]),
        (["workers.momentum=-0.1"], ["workers.momentum"]),
        (["train.algorithm=fedavg", "workers.momentum=0.9"], ["workers.momentum", "dsgd"]),
        (["train.algorithm=fedavg", "fedavg.fraction=0.0"], ["fedavg.fraction", "(0, 1]"]),
        (["train.algorithm=fedavg", "fedavg.local_steps=0"], ["fedavg.local_steps"]),
        (["train.algorithm=fedavg", "aggregator.name=draco_repetition", "workers.n=9"], ["DRACO", "dsgd"]),
        (["data.shards=honest", "workers.byzantine_set=redraw", "workers.byzantine=1"], ["data.shards", "fixed"]),
        (["train.algorithm=fedavg", "fedavg.fraction=0.3", "workers.byzantine=3", "aggregator.name=krum"], ["krum", "n=3"]),
    ],
)
def test_bad_protocol_settings_are_refused(override, words, digits):
    with pytest.raises(ConfigError) as e:
        make_simulator(C.load(None, BASE + override), digits)
    assert all(w in str(e.value) for w in words), str(e.value)


class TooManyRows(Attack):
    name = "too_many_rows"

    def forge(self, ctx):
        return ctx.honest[:1].expand(ctx.f + 1, -1).clone()


def _expect_contract_error(fn):
    with pytest.raises(AttackContractError) as e:
        fn()
    assert "returned (4," in str(e.value) and "at most f = 3 rows" in str(e.value)


def test_a_bad_attack_fails_the_same_way_in_every_engine(digits):
    from byzlearn.experiments.heavy_tail import NoisySimulator
    from byzlearn.learned.meta_train import Trajectory, build_network, from_sections, run_config

    byz = ["workers.byzantine=3", "attack.name=sign_flip", "attack.reference=mean"]
    engines = [
        sim_of(byz + ["aggregator.name=median"], digits),
        sim_of(byz + ["aggregator.name=median", "workers.momentum=0.9"], digits),
        sim_of(byz + ["aggregator.name=median", "train.algorithm=fedavg"], digits),
        sim_of(
            ["workers.n=13", "workers.byzantine=3", "attack.name=sign_flip", "aggregator.name=draco_repetition", "aggregator.s=3"], digits
        ),
        NoisySimulator(C.load(None, BASE + byz + ["aggregator.name=median"]), digits, noise_scale=0.01),
    ]
    for sim in engines:
        sim.attack = TooManyRows()
        _expect_contract_error(sim.step)
    cfg = from_sections(
        {
            "task": {"data": "digits", "public_size": 100, "steps": 4, "unroll": 2},
            "aggregator": {"encoder": "set"},
            "byzantine": {"counts": [3], "attacks": [{"name": "sign_flip", "reference": "mean"}]},
        }
    )
    traj = Trajectory(cfg, build_network(cfg), run_config(cfg, 3, {"name": "sign_flip", "reference": "mean"}, 0), digits)
    traj.sim.attack = TooManyRows()
    _expect_contract_error(traj.step)


def test_the_attack_contract_is_checked_in_one_place():
    """Only engine.round.forge calls an attack's forge (the distributed coalition's leader goes through it too)."""
    src = Path(__file__).resolve().parents[1] / "src" / "byzlearn"
    callers = sorted(
        str(p.relative_to(src)) for p in src.rglob("*.py") if "attack.forge(" in p.read_text() and not p.parts[-2] == "attacks"
    )
    assert callers == ["engine/round.py"], callers


def test_matrix_momentum_and_honest_keys_expand_cells():
    from byzlearn.experiments import matrix as M

    raw = {
        "data": {"name": "digits"},
        "workers": {"n": 10},
        "train": {"rounds": 2},
        "matrix": {"byzantine": [1, 3], "honest": 7, "momentum": [0.0, 0.9], "aggregators": ["median"], "attacks": ["alie"]},
    }
    cells = M.expand(raw)
    assert len(cells) == 4
    for c in cells:
        cfg = C.from_dict(c.raw)
        assert cfg.workers.n == 7 + cfg.workers.byzantine and cfg.workers.momentum == c.setting["momentum"]
    slugs = [c.slug for c in cells]
    assert len(set(slugs)) == 4 and sum(s.endswith("__m0.9") for s in slugs) == 2  # momentum-free cells keep their old names
    with pytest.raises(ConfigError, match="matrix.honest"):
        M.expand({**raw, "matrix": {**raw["matrix"], "honest": 0}})


def test_optimal_alie_direction(digits):
    from byzlearn.attacks import ATTACKS

    H = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    minus, plus = ATTACKS.build("alie_optimal", {}, "attack"), ATTACKS.build("alie_optimal", {"direction": "plus"}, "attack")
    stats = minus._prepare(H)
    torch.testing.assert_close(minus._vector(stats, 2.0) + plus._vector(stats, 2.0), 2 * H.mean(0))
    with pytest.raises(ConfigError, match="direction"):
        ATTACKS.build("alie_optimal", {"direction": "up"}, "attack")
