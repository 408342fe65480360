"""The torch.distributed runtime: real processes on localhost over gloo.

Jobs are started with ``byzlearn launch`` (in-process: its fork server is shared by the whole
file, so a job of 4-7 processes starts in well under a second) and one with ``torchrun``. Shared
jobs are module-scoped fixtures; every test asserts values, not just that a job ran.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from byzlearn import config as C
from byzlearn.cli import main
from byzlearn.distributed import frames
from byzlearn.distributed.faults import VARIANTS, Fault, malformed_expected
from byzlearn.distributed.frames import Kind, Layout, Malformed
from byzlearn.distributed.launcher import free_port, launch
from byzlearn.distributed.runtime import check_mode
from byzlearn.engine import make_simulator
from byzlearn.registry import ConfigError

pytestmark = pytest.mark.slow

# 4 processes: the server and 3 workers, one of them Byzantine (sign flip of its own gradient)
BASE = [
    "data.name=digits",
    "model.name=mlp20",
    "workers.n=3",
    "workers.byzantine=1",
    "attack.name=sign_flip",
    "aggregator.name=median",
    "train.rounds=150",
    "train.eval_every=25",
    "train.checkpoint_every=25",
    "optimizer.name=momentum",
    "optimizer.lr=0.2",
]
# 6 processes, no attack: the fault-free reference of the crash test
FAULT = [
    "data.name=digits",
    "model.name=logreg",
    "workers.n=5",
    "train.rounds=300",
    "train.eval_every=10",
    "train.checkpoint_every=100",
    "optimizer.lr=0.5",
]


def job(out: Path, overrides: list[str], **kw) -> dict:
    code = launch(None, None, overrides, str(out), quiet=True, rank0_log=True, grace=2.0, **kw)
    assert code == 0, (out / "logs" / "rank0.log").read_text()[-3000:]
    return json.loads((out / "summary.json").read_text())


def theta(out: Path) -> torch.Tensor:
    return torch.load(out / "checkpoint.pt", weights_only=True)["simulator"]["theta"]


def simulate(overrides: list[str]):
    sim = make_simulator(C.load(None, overrides + ["train.threads=1"]))
    for _ in range(sim.cfg.train.rounds):
        sim.step()
    return sim


def metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def kill_when(out: Path, rank: int, ready, timeout: float = 60.0) -> int:
    """SIGKILL ``rank`` of the job writing ``out`` once ``ready(out)``; returns the last evaluated round."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rows = metrics(out)
        if rows and ready(out, rows):
            pid = json.loads((out / "logs" / "pids.json").read_text())["pids"][str(rank)]
            os.kill(pid, signal.SIGKILL)
            return rows[-1]["round"]
        time.sleep(0.003)
    raise AssertionError("the job never reached the point where the test kills a process")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The 4-process job, through the command line (``byzlearn launch -n 4``)."""
    out = tmp_path_factory.mktemp("dist") / "base"
    argv = ["launch", "-n", "4", "--out", str(out), "--quiet"] + [a for o in BASE if not o.startswith("workers.n=") for a in ("--set", o)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def base_sim():
    return simulate(BASE)


# -- the CI job and parity ------------------------------------------------------------------------


def test_four_process_job_runs_to_completion_and_learns(base):
    for name in ["config.toml", "metrics.jsonl", "checkpoint.pt", "summary.json", "curves.png", "logs/rank3.log"]:
        assert (base / name).is_file(), name
    s = json.loads((base / "summary.json").read_text())
    assert s["rounds"] == 150 and s["workers"] == 3 and s["byzantine"] == 1
    assert s["final_test_accuracy"] >= 0.88, s
    assert s["missing_gradients"] == 0 and s["malformed_messages"] == 0 and s["crashed_workers"] == []
    assert [r["round"] for r in metrics(base)] == [0, 25, 50, 75, 100, 125, 150]
    # same experiment as the simulator's: the same hash, the distributed section left out at its defaults
    assert s["config_hash"] == C.load(None, BASE).hash()
    assert "[distributed]" not in (base / "config.toml").read_text()


def test_parity_with_the_simulator(base, base_sim):
    """Same config and seed: the same parameters after 150 rounds and the same accuracy curve."""
    torch.testing.assert_close(theta(base), base_sim.theta.detach(), atol=1e-5, rtol=0)
    assert metrics(base)[-1]["test_accuracy"] == pytest.approx(base_sim.evaluate()[1], abs=1 / 360)


@pytest.mark.parametrize(
    "extra",
    [
        ["workers.byzantine=1", "attack.name=alie", "aggregator.name=trimmed_mean"],  # omniscient: collusion channel taps
        ["workers.byzantine=2", "attack.name=gaussian", "aggregator.name=median"],  # randomised: the leader's stream
        ["workers.byzantine=1", "attack.name=dropped", "aggregator.name=median", "distributed.quorum=4"],  # first q of n
    ],
)
def test_parity_of_attacks_through_the_collusion_channel(tmp_path, extra):
    overrides = ["data.name=digits", "model.name=logreg", "workers.n=5", "train.rounds=60", "optimizer.lr=0.5"] + extra
    s = job(tmp_path / "r", overrides)
    torch.testing.assert_close(theta(tmp_path / "r"), simulate(overrides).theta.detach(), atol=1e-5, rtol=0)
    assert s["missing_gradients"] == (60 if "attack.name=dropped" in extra else 0)


@pytest.mark.parametrize(
    "extra",
    [["aggregator.name=draco_cyclic", "workers.byzantine_set=redraw"], ["aggregator.name=draco_repetition", "aggregator.fallback=median"]],
)
def test_draco_workers_send_code_words_and_the_server_decodes(tmp_path, extra):
    overrides = [
        "data.name=digits",
        "model.name=logreg",
        "workers.n=6",
        "workers.byzantine=1",
        "attack.name=constant",
        "train.rounds=40",
        "optimizer.lr=0.5",
    ] + extra
    s = job(tmp_path / "r", overrides)
    assert s["draco_rounds_corrected"] == 40 and s["draco_rounds_detected"] == 0  # the adversary located every round
    torch.testing.assert_close(theta(tmp_path / "r"), simulate(overrides).theta.detach(), atol=1e-5, rtol=0)


def test_torchrun_starts_the_same_runtime(tmp_path):
    out = tmp_path / "tr"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun),
        "--nnodes",
        "1",
        "--nproc-per-node",
        "3",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "-m",
        "byzlearn",
        "run",
        "--engine",
        "distributed",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "data.name=digits",
        "--set",
        "model.name=logreg",
        "--set",
        "workers.n=2",
        "--set",
        "train.rounds=30",
        "--set",
        "optimizer.lr=0.5",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["rounds"] == 30 and s["missing_gradients"] == 0 and s["final_test_accuracy"] > 0.8
    assert "missing gradients 0" in proc.stdout


# -- faults ---------------------------------------------------------------------------------------


def test_a_killed_worker_does_not_stop_training(tmp_path):
    """SIGKILL one worker mid-run: the run finishes, counts the missing gradients, loses < 1 point of accuracy."""
    ref = job(tmp_path / "ref", FAULT)
    out, result = tmp_path / "killed", {}
    t = threading.Thread(target=lambda: result.setdefault("s", job(out, FAULT)))
    t.start()
    killed_at = kill_when(out, 3, lambda o, rows: rows[-1]["round"] >= 50)
    t.join(120)
    s = result["s"]
    assert s["rounds"] == 300 and s["crashed_workers"] == [2]
    # exactly one gradient is missing in every round from the kill on (the others are never waited for)
    assert 0 < s["missing_gradients"] <= 300 - killed_at
    assert s["late_gradients"] == 0 and s["skipped_rounds"] == 0
    assert abs(s["final_test_accuracy"] - ref["final_test_accuracy"]) <= 0.01, (s, ref)
    assert "worker 2 (rank 3) is gone" in (out / "distributed.log").read_text()


def test_slow_and_hung_workers_are_left_behind(tmp_path):
    """First q = 3 of 5 within the deadline: a straggler and a hung (alive) worker cost no waiting."""
    overrides = [
        "data.name=digits",
        "model.name=logreg",
        "workers.n=5",
        "train.rounds=100",
        "optimizer.lr=0.5",
        "aggregator.name=median",
        "distributed.quorum=3",
        "distributed.deadline=30",
    ]
    t0 = time.monotonic()
    s = job(tmp_path / "r", overrides, faults={2: "slow:0.05", 3: "hang@10"})
    assert time.monotonic() - t0 < 60  # no round waited for the 30 s deadline
    assert s["rounds"] == 100 and s["crashed_workers"] == []  # hung is not crashed: its process is alive
    assert s["missing_gradients"] == 200  # 2 of 5 missing in every round: the first q = 3 are taken
    assert s["late_gradients"] >= 1  # the straggler's gradients arrive, for rounds already closed
    assert s["final_test_accuracy"] >= 0.9


def test_malformed_messages_are_byzantine_input(tmp_path):
    """Short, long, wrong-length, bad-magic, future-round and impostor frames are counted and dropped; NaN rows
    reach the rule, which survives them."""
    overrides = ["data.name=digits", "model.name=logreg", "workers.n=4", "train.rounds=60", "optimizer.lr=0.5", "aggregator.name=median"]
    s = job(tmp_path / "r", overrides, faults={2: "malformed@5"})
    assert s["malformed_messages"] == malformed_expected(5, 60) == 48
    assert s["missing_gradients"] == 0  # the rogue worker sends its real gradient after each malformed frame
    assert bool(torch.isfinite(theta(tmp_path / "r")).all())
    assert s["final_test_accuracy"] >= 0.9
    log = (tmp_path / "r" / "distributed.log").read_text()
    for reason in ("shorter", "longer", "declares", "bad magic", "from the future", "claims to come from rank 0"):
        assert reason in log, reason


def test_frame_checks():
    payload = torch.arange(10, dtype=torch.float32)
    layout = Layout(torch.float32, {Kind.GRAD: 10})
    buf = layout.buffer()

    def receive(frame):
        buf.fill_(float("nan"))
        buf[: frame.numel()] = frame
        return layout.parse(buf, src=3)

    f = receive(frames.encode(Kind.GRAD, 7, 3, payload))
    assert (f.kind, f.round, f.sender) == (Kind.GRAD, 7, 3) and torch.equal(f.payload, payload)
    fault = Fault("malformed@0")
    for r, variant in enumerate(VARIANTS):
        sent = fault.frames(r, 3, payload, torch.float32)
        if variant == "nan":
            assert len(sent) == 1 and bool(receive(sent[0]).payload.isnan().all())
        elif variant == "future":
            assert receive(sent[0]).round == r + 7  # well formed: the server rejects it by its round
        else:
            with pytest.raises(Malformed):
                receive(sent[0])
    with pytest.raises(Malformed, match="not expected"):
        receive(frames.encode(Kind.PARAMS, 0, 3, payload))


def test_server_crash_resumes_from_its_checkpoint(tmp_path, base):
    """SIGKILL rank 0 after a checkpoint: the launcher restarts every process, the run resumes and ends with the
    uninterrupted run's parameters."""
    out, result = tmp_path / "r", {}
    t = threading.Thread(target=lambda: result.setdefault("s", job(out, BASE, max_restarts=1, faults={1: "slow:0.01"})))
    t.start()
    killed_at = kill_when(out, 0, lambda o, rows: rows[-1]["round"] >= 50 and (o / "checkpoint.pt").exists())
    t.join(120)
    assert killed_at < 150 and result["s"]["rounds"] == 150
    assert json.loads((out / "logs" / "pids.json").read_text())["attempt"] == 1
    torch.testing.assert_close(theta(out), theta(base), atol=1e-6, rtol=0)
    rounds = [r["round"] for r in metrics(out)]
    assert rounds == sorted(set(rounds)) and rounds[-1] == 150  # no round recorded twice


# -- decentralised --------------------------------------------------------------------------------


def test_decentralised_peers_agree_through_reliable_broadcast(tmp_path):
    """4 peers, 1 equivocating: Bracha over real messages delivers every Byzantine value consistently."""
    overrides = [
        "distributed.mode=decentralized",
        "distributed.byzantine_peers=equivocate",
        "distributed.grad_rounds=2",
        "data.name=digits",
        "model.name=logreg",
        "workers.n=4",
        "workers.byzantine=1",
        "train.rounds=30",
        "train.eval_every=10",
        "optimizer.lr=0.5",
    ]
    s = job(tmp_path / "r", overrides)
    assert s["byzantine_deliveries"] > 0 and s["broadcast_conflicts"] == 0
    assert s["final_test_accuracy"] >= 0.85  # the worst honest peer
    assert s["param_diameter"] < 1e-3  # model agreement keeps the honest peers together
    # per step at least the INIT/ECHO/READY of n value and n report broadcasts (3 + 1 agreement rounds here)
    assert s["peer_messages"] > 30 * 3 * 4 * 2 * 3
    assert s["aggregator"] == "rb_trimmed_mean (decentralised)"


# -- configuration --------------------------------------------------------------------------------


def test_distributed_config_section_and_checks():
    default = C.load(None, [])
    assert "distributed" not in default.to_dict()
    assert C.load(None, ["distributed.backend=gloo", "distributed.timeout=30"]).hash() == default.hash()
    changed = C.load(None, ["distributed.quorum=7"])
    assert changed.hash() != default.hash() and changed.to_dict()["distributed"]["quorum"] == 7
    with pytest.raises(ConfigError, match="quorum"):
        check_mode(C.load(None, ["distributed.quorum=11"]))
    with pytest.raises(ConfigError, match="3f"):
        check_mode(C.load(None, ["distributed.mode=decentralized", "workers.n=3", "workers.byzantine=1"]))
    with pytest.raises(ConfigError, match="deadline"):
        check_mode(C.load(None, ["distributed.deadline=0"]))


def test_command_line_errors(tmp_path, capsys):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        assert key not in os.environ
    assert main(["run", "--engine", "distributed", "--set", "data.name=digits"]) == 2
    assert "byzlearn launch" in capsys.readouterr().err
    assert main(["launch", "-n", "4", "--set", "workers.n=5", "--out", str(tmp_path / "x")]) == 2
    assert main(["launch", "-n", "1", "--out", str(tmp_path / "x")]) == 2
