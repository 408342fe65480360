"""End to end through real Flower processes: a SuperLink and SuperNodes on loopback, then ``flwr run``.

The example app of ``examples/flower`` (the commands of its README, no Ray): 7 clients of which 2
Byzantine, on the embedded digits. Trimmed mean under ALIE learns; the plain mean (FedAvg on equal
shards) under IPM (epsilon = 10) does not. Every process is started in its own session by this
test and killed with its group when the test ends, pass or fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower"
BIN = Path(sys.executable).parent
NODES, BYZANTINE, ROUNDS = 7, 2, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, deadline: float, procs: list[subprocess.Popen]) -> None:
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a Flower process exited during start-up")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    home = tmp_path_factory.mktemp("flwr_home")
    logs = tmp_path_factory.mktemp("flwr_logs")
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    link = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-deployment"\n\n[superlink.local-deployment]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        start("superlink", "flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--port", str(link))
        _wait_port(link, time.monotonic() + 60, procs)
        for i in range(NODES):
            start(f"node{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}", "--port", str(_free_port()),
                  "--node-config", f"partition-id={i} num-partitions={NODES}")  # fmt: skip
        yield env, logs
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=15)


def _run(federation, out: Path, **config) -> dict:
    env, logs = federation
    settings = {
        "num-server-rounds": ROUNDS,
        "num-clients": NODES,
        "num-byzantine": BYZANTINE,
        "f": BYZANTINE,
        "results": str(out),
        **config,
    }
    overrides = " ".join(f"{k}='{v}'" if isinstance(v, str) else f"{k}={v}" for k, v in settings.items())  # TOML literal strings
    cmd = [str(BIN / "flwr"), "run", str(EXAMPLE), "local-deployment", "--stream", "-c", overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420, start_new_session=True)
    deadline = time.monotonic() + 60  # the ServerApp writes its results as it ends; --stream may return first
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not out.exists():
        tails = {p.name: p.read_text(errors="replace")[-2000:] for p in sorted(logs.glob("*.log"))[:2]}
        pytest.fail(f"no results from flwr run (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{tails}")
    return json.loads(out.read_text())


def test_trimmed_mean_learns_under_alie_and_fedavg_does_not_under_ipm(federation, tmp_path):
    robust = _run(federation, tmp_path / "robust.json", aggregator="trimmed_mean", attack="alie")
    plain = _run(federation, tmp_path / "plain.json", aggregator="mean", attack='{"name": "ipm", "epsilon": 10.0}')
    for res in (robust, plain):
        assert [h["round"] for h in res["history"]] == list(range(ROUNDS + 1))
        c = res["counters"]
        assert c["replies"] == NODES * ROUNDS and c["byzantine"] == BYZANTINE * ROUNDS, c
        assert c["malformed"] == c["missing"] == c["skipped_rounds"] == 0, c
    acc = lambda res: res["history"][-1]["test_accuracy"]  # noqa: E731
    assert robust["history"][0]["test_accuracy"] < 0.2  # the untrained model
    assert acc(robust) > 0.8, robust["history"]
    assert acc(plain) < 0.3, plain["history"]
