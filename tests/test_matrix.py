"""The robustness matrix: cells, result files, resumption, and that it separates rules."""

import csv
import json

import pytest

from byzlearn.cli import main
from byzlearn.experiments import matrix as M
from byzlearn.registry import ConfigError

RAW = {
    "workers": {"n": 7},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "train": {"rounds": 60, "eval_every": 30, "checkpoint_every": 60},
    "matrix": {"aggregators": ["mean", "median"], "attacks": ["none", {"name": "gaussian", "std": 100.0}], "byzantine": [0, 2]},
}


def test_expand_cells():
    cells = M.expand(RAW)
    # f=0: one 'none' cell per rule; f=2: both attacks
    assert [(c.method, c.attack, c.setting["byzantine"]) for c in cells] == [
        ("mean", "none", 0),
        ("median", "none", 0),
        ("mean", "none", 2),
        ("median", "none", 2),
        ("mean", "gaussian(std=100.0)", 2),
        ("median", "gaussian(std=100.0)", 2),
    ]
    assert len({c.slug for c in cells}) == len(cells)


def test_matrix_bad_cells_fail_before_running():
    with pytest.raises(ConfigError, match="krum"):
        M.expand({**RAW, "matrix": {"aggregators": ["krum"], "byzantine": [3]}})  # n=7 < 2f+3
    with pytest.raises(ConfigError, match="matrix.rules"):
        M.expand({**RAW, "matrix": {"rules": ["mean"]}})


def test_run_matrix_writes_results_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "m"
    rows = M.run_matrix(RAW, out, jobs=1, progress=False, command="byzlearn matrix x.toml")
    assert len(rows) == 6
    for name in ["results.csv", "results.json", "results.md", "heatmap.png", "table.md", "matrix.toml"]:
        assert (out / name).is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved == rows
    assert {"method", "setting", "final_test_accuracy", "best_test_accuracy"} <= set(saved[0])
    assert "byzlearn matrix x.toml" in (out / "results.md").read_text()
    with open(out / "results.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    acc = {(r["method"], r["setting"]["attack"], r["setting"]["byzantine"]): r["final_test_accuracy"] for r in rows}
    # the mean collapses under a large Gaussian attack, the median does not
    assert acc[("mean", "gaussian(std=100.0)", 2)] < 0.3
    assert acc[("median", "gaussian(std=100.0)", 2)] > 0.7
    # finished cells are not run again
    monkeypatch.setattr(M, "_run_cell", lambda *a, **k: pytest.fail("a finished cell was run again"))
    again = M.run_matrix(RAW, out, jobs=1, progress=False)
    assert again == rows


def test_matrix_cli(tmp_path, capsys):
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        "[workers]\nn = 5\n[train]\nrounds = 10\neval_every = 10\n"
        '[matrix]\naggregators = ["mean", "median"]\nbyzantine = [1]\nattacks = ["zero"]\n'
    )
    assert main(["matrix", str(cfg), "--out", str(tmp_path / "o"), "--quiet", "--set", "matrix.seeds=[0, 1]"]) == 0
    assert len(json.loads((tmp_path / "o" / "results.json").read_text())) == 4
    assert "median" in capsys.readouterr().out


def test_worst_attack_is_the_lowest_accuracy_per_rule_and_setting():
    from byzlearn.experiments.matrix import worst_attack_table, worst_attacks

    def row(method, attack, acc, het="iid", mom=0.0):
        return {
            "method": method,
            "final_test_accuracy": acc,
            "setting": {"attack": attack, "byzantine": 3, "heterogeneity": het, "momentum": mom, "seed": 0},
        }

    rows = [
        row("krum", "none", 0.9),
        row("krum", "alie", 0.5),
        row("krum", "ipm", 0.2),
        row("krum", "ipm", 0.7, het="dirichlet0.1"),
        row("krum", "alie", 0.6, het="dirichlet0.1"),
        row("median", "none", 0.05),  # "none" never counts as an attack
        row("median", "alie", 0.8),
    ]
    w = worst_attacks(rows)
    assert w[("krum", "iid, m=0.0, f=3, seed 0")] == (0.2, "ipm")
    assert w[("krum", "dirichlet0.1, m=0.0, f=3, seed 0")] == (0.6, "alie")
    assert w[("median", "iid, m=0.0, f=3, seed 0")] == (0.8, "alie")
    table = worst_attack_table(rows)
    assert "| krum | 20.0 (ipm) / 90.0 | 60.0 (alie) |" in table and "| median | 80.0 (alie) / 5.0 |  |" in table
    assert worst_attack_table([row("mean", "none", 0.9)]) == ""
