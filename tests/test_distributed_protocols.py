"""Worker momentum and robust FedAvg on real processes: the simulator's trajectory, and resume."""

import threading

import pytest
import torch

from test_distributed import job, kill_when, metrics, simulate, theta

pytestmark = pytest.mark.slow

COMMON = ["data.name=digits", "model.name=logreg", "workers.n=5", "train.rounds=100", "optimizer.lr=0.5"]


@pytest.mark.parametrize(
    "extra",
    [
        ["workers.momentum=0.9", "workers.byzantine=1", "attack.name=alie", "aggregator.name=trimmed_mean"],
        [
            "workers.momentum=0.8",
            "workers.momentum_form=sum",
            "workers.byzantine=1",
            "attack.name=label_flip",
            "aggregator.name=median",
            "optimizer.lr=0.05",
        ],
        [
            "train.algorithm=fedavg",
            "fedavg.local_steps=3",
            "fedavg.fraction=0.8",
            "fedavg.local_lr=0.2",
            "workers.byzantine=1",
            "attack.name=sign_flip",
            "attack.reference=mean",
            "aggregator.name=median",
            "optimizer.lr=1.0",
        ],
        [
            "train.algorithm=fedavg",
            "fedavg.local_steps=2",
            "fedavg.aggregate=weights",
            "workers.byzantine=1",
            "attack.name=ipm",
            "aggregator.name=trimmed_mean",
        ],
    ],
)
def test_distributed_follows_the_simulator(tmp_path, extra):
    overrides = COMMON + extra
    s = job(tmp_path / "r", overrides)
    sim = simulate(overrides)
    torch.testing.assert_close(theta(tmp_path / "r"), sim.theta.detach(), atol=1e-5, rtol=0)
    assert s["malformed_messages"] == 0 and s["final_test_accuracy"] > 0.5
    if "fedavg.fraction=0.8" in extra:  # 4 of 5 clients a round: one not sampled, never counted as missing
        assert s["missing_gradients"] == 0


def test_momentum_run_resumes_after_a_server_crash(tmp_path):
    """SIGKILL rank 0: the restarted workers get their momentum rows from the checkpoint, and the run ends
    with the uninterrupted simulator's parameters."""
    overrides = COMMON + [
        "workers.momentum=0.9",
        "workers.byzantine=1",
        "attack.name=alie",
        "aggregator.name=trimmed_mean",
        "train.checkpoint_every=20",
        "train.eval_every=10",
    ]
    out, result = tmp_path / "r", {}
    t = threading.Thread(target=lambda: result.setdefault("s", job(out, overrides, max_restarts=1, faults={1: "slow:0.01"})))
    t.start()
    killed_at = kill_when(out, 0, lambda o, rows: rows[-1]["round"] >= 30 and (o / "checkpoint.pt").exists())
    t.join(180)
    assert killed_at < 100 and result["s"]["rounds"] == 100
    torch.testing.assert_close(theta(out), simulate(overrides).theta.detach(), atol=1e-5, rtol=0)
    assert [r["round"] for r in metrics(out)][-1] == 100
