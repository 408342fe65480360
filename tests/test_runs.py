"""Run folders, resume after a kill, and the command line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from byzlearn import config as C
from byzlearn.cli import main
from byzlearn.experiments.runner import Run

QUICK = [
    "workers.n=6",
    "workers.byzantine=1",
    "train.rounds=40",
    "train.eval_every=10",
    "train.checkpoint_every=15",
    "optimizer.name=momentum",
    "optimizer.lr=0.2",
]


def final_theta(out: Path) -> torch.Tensor:
    return torch.load(out / "checkpoint.pt", weights_only=True)["simulator"]["theta"]


def test_run_folder_contents(tmp_path):
    summary = Run.create(C.load(None, QUICK), tmp_path / "r").execute(progress=False)
    out = tmp_path / "r"
    for name in ["config.toml", "metrics.jsonl", "checkpoint.pt", "summary.json", "curves.png"]:
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 10, 20, 30, 40]
    assert set(rows[1]) == {"round", "train_loss", "test_loss", "test_accuracy", "wall_time"}
    assert rows[0]["train_loss"] is None and all(r["train_loss"] > 0 for r in rows[1:])
    assert summary["final_test_accuracy"] == rows[-1]["test_accuracy"]
    assert summary["best_test_accuracy"] == max(r["test_accuracy"] for r in rows)
    assert summary["rounds"] == 40 and summary["config_hash"] == C.load(None, QUICK).hash()
    assert json.loads((out / "summary.json").read_text()) == summary
    # the saved config is the resolved one: it reloads to the same experiment
    assert C.load(out / "config.toml").to_dict() == C.load(None, QUICK).to_dict()


@pytest.mark.parametrize("stop_after", [7, 15, 22])
def test_resume_follows_the_same_trajectory(tmp_path, stop_after):
    """Stopped at any round (on or off a checkpoint), a resumed run ends with the very same parameters."""
    cfg = C.load(None, QUICK + ["attack.name=none", "workers.byzantine_set=redraw"])
    Run.create(cfg, tmp_path / "full").execute(progress=False)
    assert Run.create(cfg, tmp_path / "cut").execute(progress=False, stop_after=stop_after) is None
    summary = Run.resume(tmp_path / "cut").execute(progress=False)
    assert torch.equal(final_theta(tmp_path / "full"), final_theta(tmp_path / "cut"))
    full = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    cut = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(full) == strip(cut)
    assert summary["final_test_accuracy"] == full[-1]["test_accuracy"]


def test_resume_after_sigkill(tmp_path):
    """A real kill (SIGKILL) of `byzlearn run`, then `byzlearn run --resume DIR`: same final parameters."""
    overrides = ["workers.n=10", "train.rounds=3000", "train.eval_every=500", "train.checkpoint_every=50", "optimizer.lr=0.5"]
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "byzlearn", "run", *args, "--out", str(cut), "--quiet"], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (cut / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert not (cut / "summary.json").exists()
    killed_at = torch.load(cut / "checkpoint.pt", weights_only=True)["simulator"]["round"]
    assert 0 < killed_at < 3000
    subprocess.run([sys.executable, "-m", "byzlearn", "run", "--resume", str(cut), "--quiet"], env=env, check=True)
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "byzlearn", "run", *args, "--out", str(full), "--quiet"], env=env, check=True)
    assert torch.equal(final_theta(full), final_theta(cut))
    final = lambda d: json.loads((d / "summary.json").read_text())["final_test_accuracy"]  # noqa: E731
    assert final(cut) == final(full)


def test_cli_run_list_help(tmp_path, capsys):
    assert main(["run", "--set", "train.rounds=5", "--set", "train.eval_every=5", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and str(tmp_path / "c") in out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ["mean", "none", "digits", "mnist", "fashion_mnist", "cifar10", "mlp20", "cnn_cifar", "sgd", "adam", "dirichlet"]:
        assert word in out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_cli_errors_name_the_key(tmp_path, capsys):
    assert main(["run", "--set", "workers.byzantine=12", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "workers.byzantine" in err and not (tmp_path / "x").exists()
    assert main(["run", "--set", "train.rounds=2", "--set", "train.eval_every=1", "--out", str(tmp_path / "y"), "--quiet"]) == 0
    assert main(["run", "--set", "train.rounds=2", "--out", str(tmp_path / "y")]) == 2  # never overwrite a run
    assert "--resume" in capsys.readouterr().err


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "byzlearn", "--help"], capture_output=True, text=True, check=True)
    assert "run" in r.stdout and "list" in r.stdout
