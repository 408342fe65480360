"""The byzfl-benchmark reproduction: ByzFL's default benchmark config, and the side-by-side comparison."""

import tomllib

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
    assert far["overlap"] is False and abs(far["difference"] + 0.11) < 1e-12
    single = side_by_side([ours(0.80, 0), ours(0.81, 1)], [theirs(0.91, 0)])[0]
    assert single["overlap"] is None  # one ByzFL seed: no spread to judge by


def test_report_uses_the_runs_present_and_says_what_is_missing(tmp_path):
    from byzlearn.experiments.repro_byzfl_benchmark import report
    from byzlearn.experiments.tune import run_tune

    raw = config(None, quick=True)
    raw["data"] = {"name": "digits", "validation_size": 200, "shards": "honest", "partition": "gamma_similarity"}
    raw["model"] = {"name": "mlp20"}
    raw["train"].update(rounds=20, eval_every=10, checkpoint_every=20)
    raw["matrix"].update(
        byzantine=[1], data=[{"partition": "gamma_similarity", "gamma": 1.0}], aggregators=raw["matrix"]["aggregators"][:1]
    )
    raw["matrix"]["attacks"] = [{"name": "sign_flip", "reference": "mean"}, {"name": "ipm_optimal"}]
    first = {**raw, "matrix": {**raw["matrix"], "attacks": raw["matrix"]["attacks"][:1]}}
    run_tune(first, tmp_path, jobs=1, progress=False)  # only the sign-flip run
    rows = report(tmp_path, raw, "byzlearn reproduce byzfl-benchmark --quick", 1.0)
    text = (tmp_path / "results.md").read_text()
    assert "Partial: 1 of the grid's 2 runs" in text and "ipm_optimal 0 of 1" in text and "not run" in text
    assert "No ByzFL runs in this folder" in text
    assert tomllib.loads((tmp_path / "tune.toml").read_text())["matrix"]["attacks"] == raw["matrix"]["attacks"]  # the grid, not the stage
    cells = [r for r in rows if "seed" in r["setting"]]
    assert len(cells) == 1 and cells[0]["setting"]["attack"] == "sign_flip(reference=mean)"
    tuned = [r for r in rows if "seed" not in r["setting"]]
    assert len(tuned) == 1 and tuned[0]["setting"]["attacks"] == ["sign_flip(reference=mean)"]
