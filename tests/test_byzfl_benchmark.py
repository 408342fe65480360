"""The byzfl-benchmark reproduction: ByzFL's default benchmark config, and the side-by-side comparison."""

from byzlearn import config as C
from byzlearn.experiments import matrix as M
from byzlearn.experiments.repro_byzfl_benchmark import ATTACK_LABEL, METHOD, config, side_by_side
from byzlearn.experiments.tune import expand


def test_the_config_is_byzfl_default_benchmark(tmp_path):
    raw = config("../shared/data/mnist", quick=False)
    combos, cells = expand(raw, tmp_path)
    assert combos == [{"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}]
    assert len(cells) == 4 * 4 * 2 * 3 * 3  # f x gamma x rules x attacks x seeds
    for tc in cells:
        cfg = C.from_dict(tc.cell.raw)
        assert cfg.workers.n == 10 + cfg.workers.byzantine and cfg.workers.batch_size == 25
        assert cfg.workers.momentum == 0.9 and cfg.workers.momentum_form == "ema"
        assert cfg.optimizer == {"name": "sgd", "lr": 0.1, "weight_decay": 1e-4}
        assert cfg.train.rounds == 800 and cfg.train.eval_every == 50 and cfg.model.name == "fc_mnist"
        assert cfg.data.validation_size == 12000 and cfg.data.shards == "honest" and cfg.data.partition == "gamma_similarity"
        assert cfg.aggregator["pre"] == [{"name": "clipping", "c": 2.0}, "nnm"]
    labels = {M._label(tc.cell.raw["attack"]) for tc in cells}
    assert labels == set(ATTACK_LABEL.values())
    assert {tc.cell.method for tc in cells} == set(METHOD.values())


def test_side_by_side_pairs_cells_and_judges_the_spread():
    def ours(acc, seed, attack="sign_flip(reference=mean)"):
        return {
            "method": METHOD["TrMean"],
            "setting": {"attack": attack, "byzantine": 2, "gamma": 0.66, "seed": seed},
            "final_test_accuracy": acc,
            "best_test_accuracy": acc + 0.01,
            "wall_time": 10.0,
        }

    def theirs(acc, seed, attack="SignFlipping"):
        return {
            "cell": {"aggregator": "TrMean", "attack": attack, "f": 2, "gamma": 0.66},
            "final_test_accuracy": acc,
            "best_test_accuracy": acc,
            "train_time_s": 40.0,
        }

    rows = side_by_side(
        [ours(0.90, 0), ours(0.92, 1), ours(0.50, 0, "ipm_optimal")],
        [theirs(0.91, 0), theirs(0.93, 1), theirs(0.2, 0, "Optimal_ALittleIsEnough")],
    )
    assert len(rows) == 1  # the ALIE cell has no byzlearn run, the IPM cell no ByzFL run
    r = rows[0]
    assert r["byzlearn"]["final"]["mean"] == 0.91 and r["byzfl"]["final"]["mean"] == 0.92 and r["overlap"]
    assert r["speedup"] == 4.0
    far = side_by_side([ours(0.80, 0), ours(0.81, 1)], [theirs(0.91, 0), theirs(0.92, 1)])[0]
    assert not far["overlap"] and abs(far["difference"] + 0.11) < 1e-12
