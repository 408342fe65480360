"""byzlearn tune: the grid, worst-case selection on validation only, result files, resumption, real runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from byzlearn.cli import main
from byzlearn.experiments import matrix as M
from byzlearn.experiments import tune as T
from byzlearn.registry import ConfigError

# -- selection on hand-written metrics (the engine replaced by a table of curves) ----------------------
# validation / test accuracy at rounds 0, 5, 10, per (lr, attack, seed)
VAL = {
    # lr 0.1: attack zero is easy, sign_flip hard: worst case 0.5 (max of the seed mean, not the mean of maxes 0.8)
    (0.1, "zero", 0): [0.1, 0.9, 0.9],
    (0.1, "zero", 1): [0.1, 0.9, 0.9],
    (0.1, "sign_flip", 0): [0.2, 0.8, 0.4],
    (0.1, "sign_flip", 1): [0.8, 0.2, 0.4],
    # lr 0.2: worst case 0.6 (zero reaches 0.7, sign_flip 0.6 at round 10)
    (0.2, "zero", 0): [0.1, 0.7, 0.7],
    (0.2, "zero", 1): [0.1, 0.7, 0.7],
    (0.2, "sign_flip", 0): [0.1, 0.5, 0.6],
    (0.2, "sign_flip", 1): [0.1, 0.5, 0.6],
    # lr 0.3: worst case also 0.6: a tie, the earlier combination (0.2) wins
    (0.3, "zero", 0): [0.1, 0.6, 0.6],
    (0.3, "zero", 1): [0.1, 0.6, 0.6],
    (0.3, "sign_flip", 0): [0.1, 0.6, 0.3],
    (0.3, "sign_flip", 1): [0.1, 0.6, 0.3],
}


def fake_test(lr, attack, seed):
    """Test accuracy that disagrees with validation: lr 0.1 is best on test everywhere."""
    return {0.1: [0.1, 0.95, 0.99], 0.2: [0.1, 0.3, 0.4], 0.3: [0.1, 0.5, 0.2]}[lr]


def fake_run_cell(raw, out, threads, test=fake_test):
    lr, attack, seed = raw["optimizer"]["lr"], raw["attack"]["name"], raw["train"]["seed"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    val, te = VAL[(lr, attack, seed)], test(lr, attack, seed)
    rows = [
        {
            "round": r,
            "train_loss": 1.0,
            "test_loss": 1.0,
            "test_accuracy": t,
            "validation_loss": 1.0,
            "validation_accuracy": v,
            "wall_time": 0.0,
        }
        for r, v, t in zip((0, 5, 10), val, te)
    ]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps({"final_test_accuracy": te[-1], "best_test_accuracy": max(te), "wall_time": 0.5}))
    return {}


FAKE = {
    "data": {"validation_size": 100},
    "workers": {"n": 7},
    "train": {"rounds": 10, "eval_every": 5},
    "matrix": {"aggregators": ["median"], "attacks": ["zero", "sign_flip"], "byzantine": [1], "seeds": [0, 1]},
    "tune": {"lr": [0.1, 0.2, 0.3]},
}


def test_grid_order_and_base_values():
    raw = {
        **FAKE,
        "optimizer": {"name": "sgd", "lr": 0.5, "weight_decay": 1e-3},
        "tune": {"weight_decay": [0.0, 1e-4], "lr": [0.1, 0.2], "momentum": [0.0, 0.9]},
    }
    combos = T.grid(raw)
    assert [(c["lr"], c["momentum"], c["weight_decay"]) for c in combos] == [
        (0.1, 0.0, 0.0),
        (0.1, 0.0, 1e-4),
        (0.1, 0.9, 0.0),
        (0.1, 0.9, 1e-4),
        (0.2, 0.0, 0.0),
        (0.2, 0.0, 1e-4),
        (0.2, 0.9, 0.0),
        (0.2, 0.9, 1e-4),
    ]  # lr x momentum x weight_decay
    base = T.grid({**raw, "workers": {"n": 7, "momentum": 0.5}, "tune": {}})
    assert base == [{"lr": 0.5, "momentum": 0.5, "weight_decay": 1e-3}]
    assert T.grid({**FAKE, "tune": {}}) == [{"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}]  # the defaults


@pytest.mark.parametrize(
    "tune, match",
    [
        ({"learning_rate": [0.1]}, "tune.learning_rate.*allowed: lr, momentum, weight_decay"),
        ({"lr": 0.1}, "tune.lr.*non-empty list"),
        ({"lr": []}, "tune.lr.*non-empty list"),
        ({"momentum": [0.9, 0.9]}, "tune.momentum.*twice"),
    ],
)
def test_bad_tune_sections(tune, match):
    with pytest.raises(ConfigError, match=match):
        T.grid({**FAKE, "tune": tune})


def test_refuses_without_validation_data(tmp_path):
    with pytest.raises(ConfigError, match="data.validation_size = 0"):
        T.expand({**FAKE, "data": {}}, tmp_path)
    with pytest.raises(ConfigError, match="data.validation_size"):  # also when a heterogeneity level unsets it
        T.expand({**FAKE, "matrix": {**FAKE["matrix"], "data": [{"validation_size": 0}]}}, tmp_path)


def test_choice_on_validation_worst_case(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "_run_cell", fake_run_cell)
    rows = T.run_tune(FAKE, tmp_path / "t", progress=False)
    assert len(rows) == 1
    r = rows[0]
    assert r["grid_worst_case_validation_accuracy"] == pytest.approx([0.5, 0.6, 0.6])
    assert r["chosen"] == {"lr": 0.2, "momentum": 0.0, "weight_decay": 0.0}  # a tie with 0.3: the first wins
    assert r["worst_case_validation_accuracy"] == pytest.approx(0.6)
    assert r["worst_case_test_accuracy"] == r["best_test_accuracy"] == pytest.approx(0.4)
    assert r["final_test_accuracy"] == pytest.approx(0.4)
    sf = r["attacks"]["sign_flip"]
    assert sf["best_validation_round"] == 10 and sf["test_accuracy_at_best_validation"] == pytest.approx(0.4)
    assert r["attacks"]["zero"]["best_validation_round"] == 5  # first maximum of [0.1, 0.7, 0.7]
    assert r["setting"]["byzantine"] == 1 and r["setting"]["attacks"] == ["zero", "sign_flip"] and r["setting"]["seeds"] == [0, 1]
    assert json.loads((tmp_path / "t" / "results.json").read_text()) == rows
    for name in ["results.md", "table.md", "heatmap_median.png", "heatmap_best.png", "tune.toml"]:
        assert (tmp_path / "t" / name).is_file()


def test_test_accuracy_never_changes_the_choice(tmp_path, monkeypatch):
    """Any test accuracies (here: random ones) leave the choice and its validation values as they are."""
    rng = np.random.default_rng(0)
    chosen = []
    for k in range(3):
        noise = {key: rng.uniform(0, 1, 3).tolist() for key in VAL}
        monkeypatch.setattr(M, "_run_cell", lambda raw, out, th, n=noise: fake_run_cell(raw, out, th, test=lambda lr, a, s: n[(lr, a, s)]))
        r = T.run_tune(FAKE, tmp_path / f"t{k}", progress=False)[0]
        chosen.append((r["chosen"], r["worst_case_validation_accuracy"], r["grid_worst_case_validation_accuracy"]))
    assert all(c == chosen[0] for c in chosen)


def test_untuned_keys_stay_as_written(tmp_path):
    _, cells = T.expand(FAKE, tmp_path)
    assert len(cells) == 3 * 2 * 2  # combinations x attacks x seeds
    assert all("momentum" not in c.cell.raw.get("workers", {}) and "weight_decay" not in c.cell.raw.get("optimizer", {}) for c in cells)
    assert len({c.folder for c in cells}) == len(cells)


# -- real runs on digits ---------------------------------------------------------------------------------
REAL = """
[data]
validation_size = 200
[workers]
n = 7
[optimizer]
name = "sgd"
[train]
rounds = 12
eval_every = 4
checkpoint_every = 4
threads = 1
[matrix]
aggregators = ["median"]
attacks = ["sign_flip", {name = "gaussian", std = 30.0}]
byzantine = [1, 2]
data = [{partition = "gamma_similarity", gamma = 0.5}, {partition = "extreme"}]
seeds = [0, 1]
[tune]
lr = [0.2, 1.0]
"""
LRS = (0.2, 1.0)


def _hand_choice(out: Path, f: int, het: str, attacks: list[str]) -> tuple[float, float]:
    """The choice recomputed from the run folders' metrics: (lr, worst-case test accuracy)."""
    worst = {}
    for lr in LRS:
        per_attack = {}
        for a in attacks:
            val, test = [], []
            for seed in (0, 1):
                folder = out / "cells" / f"lr{lr}_mom0.0_wd0.0" / f"median__{a}__f{f}__{het}__seed{seed}"
                rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
                val.append([r["validation_accuracy"] for r in rows])
                test.append([r["test_accuracy"] for r in rows])
            per_attack[a] = (max(np.mean(val, 0)), max(np.mean(test, 0)))
        worst[lr] = (min(v for v, _ in per_attack.values()), min(t for _, t in per_attack.values()))
    lr = LRS[0]
    for other in LRS[1:]:
        if worst[other][0] > worst[lr][0]:
            lr = other
    return lr, worst[lr][1]


def test_real_runs_choose_by_hand_computation_and_resume(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "t.toml"
    cfg.write_text(REAL)
    out = tmp_path / "o"
    assert main(["tune", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "worst-case validation" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 4  # (f, heterogeneity) for one rule
    for r in rows:
        s = r["setting"]
        assert s["attacks"] == ["sign_flip", "gaussian(std=30.0)"]
        lr, worst_test = _hand_choice(out, s["byzantine"], s["heterogeneity"], s["attacks"])
        assert r["chosen"]["lr"] == lr
        assert r["worst_case_test_accuracy"] == pytest.approx(worst_test)
        assert 0 <= r["worst_case_test_accuracy"] <= 1
    assert 1.0 in {r["chosen"]["lr"] for r in rows}  # not always the first combination (f=1: ~0.3-0.46 vs ~0.2 on validation)
    assert "lr = 0.2" in (out / "cells" / "lr0.2_mom0.0_wd0.0" / "median__sign_flip__f1__extreme__seed0" / "config.toml").read_text()
    by_het = {(r["setting"]["byzantine"], r["setting"]["heterogeneity"]) for r in rows}
    assert by_het == {(1, "gamma0.5"), (2, "gamma0.5"), (1, "extreme"), (2, "extreme")}
    for name in ["heatmap_median.png", "heatmap_best.png", "results.md"]:
        assert (out / name).stat().st_size > 0
    # resume: finished runs are skipped; a run without its summary (killed at the end) is resumed alone
    victim = out / "cells" / "lr1.0_mom0.0_wd0.0" / "median__gaussian(std=30.0)__f2__extreme__seed1"
    (victim / "summary.json").unlink()
    calls = []
    real = M._run_cell
    monkeypatch.setattr(M, "_run_cell", lambda raw, d, th: calls.append(d) or real(raw, d, th))
    assert main(["tune", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert calls == [str(victim)]
    assert json.loads((out / "results.json").read_text()) == rows


def test_cli_overrides_and_refusal(tmp_path, capsys):
    cfg = tmp_path / "t.toml"
    cfg.write_text('[workers]\nn = 7\n[matrix]\naggregators = ["median"]\nbyzantine = [1]\n[tune]\nlr = [0.1]\n')
    raw = M.load_matrix_config(cfg, ["tune.lr=[0.5, 0.05]", "matrix.seeds=[3]", "data.validation_size=50"], sections=("matrix", "tune"))
    assert [c["lr"] for c in T.grid(raw)] == [0.5, 0.05] and raw["matrix"]["seeds"] == [3]
    assert main(["tune", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "data.validation_size = 0" in capsys.readouterr().err and not (tmp_path / "o").exists()
