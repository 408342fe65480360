"""No peer's message can crash, stall or exhaust a byzlearn process (issue 15).

The links (``distributed.mesh``) are tested in one process over three in-process meshes; the runtime
in a real ``byzlearn launch`` job on loopback where one rank runs hostile code
(``BYZLEARN_FAULT=hostile@R``): raw gloo sends longer than any receive, and through the links
too-long, wrong-dtype, raw-byte, garbage, empty and absurd frames, good frames on every tag nobody
expects, and a flood, to the server and to every worker.
"""

import ipaddress
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from byzlearn import config as C
from byzlearn.distributed import frames, mesh
from byzlearn.distributed.faults import FLOOD, HOSTILE, hostile_expected, hostile_message
from byzlearn.distributed.frames import Frame, Kind, Layout, Malformed
from byzlearn.distributed.launcher import launch, rendezvous_env
from byzlearn.distributed.mesh import WIRE, WIRE_MAGIC, Mesh
from byzlearn.distributed.protocol import TAG_GRAD
from byzlearn.distributed.transport import Closed, Inbox, Links
from byzlearn.engine import make_simulator
from byzlearn.registry import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture
def links():
    """Three ranks' links in this process (threads), over an in-process store."""
    store = dist.HashStore()
    meshes: dict[int, Mesh] = {}
    threads = [threading.Thread(target=lambda r=r: meshes.setdefault(r, Mesh.connect(r, 3, store, "127.0.0.1", 20.0))) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    yield [Links(r, meshes[r]) for r in range(3)]
    for m in meshes.values():
        m.close()


def get(inbox: Inbox, seconds: float = 5.0):
    item = inbox.get(time.monotonic() + seconds)
    assert item is not None, "nothing arrived"
    return item


def test_every_hostile_message_is_refused_before_it_hurts(links):
    payload = torch.arange(200, dtype=torch.float32)
    layout = Layout(torch.float32, {Kind.GRAD: 200})
    inbox = Inbox()
    links[0].listen(1, TAG_GRAD, layout, inbox)
    expected = {
        "long": "longer than any frame",
        "dtype": "float64 message on a float32 channel",
        "bytes": "uint8 message",
        "garbage": "bad magic",
        "empty": "bad magic",
        "declared": "declares 2147483647 values",
        "good": "does not receive",
    }
    for name, tag in HOSTILE:
        links[1].send(0, tag, hostile_message(name, 4, 1, payload, torch.float32))
    # one sender per (rank, tag): order holds within a tag, not across tags
    got = [get(inbox) for _ in HOSTILE]
    assert all(src == 1 and isinstance(msg, Malformed) for src, msg in got), got
    on_grad = [str(msg) for _, msg in got if "does not receive" not in str(msg)]
    grad_names = [name for name, tag in HOSTILE if tag == TAG_GRAD]
    assert len(on_grad) == len(grad_names) and all(expected[n] in m for n, m in zip(grad_names, on_grad)), on_grad
    assert len(got) - len(on_grad) == len(HOSTILE) - len(grad_names)
    links[1].send(0, TAG_GRAD, frames.encode(Kind.GRAD, 5, 1, payload))
    src, msg = get(inbox)
    assert isinstance(msg, Frame) and msg.round == 5 and torch.equal(msg.payload, payload)
    # a link header claiming a terabyte is skipped, never allocated; the peer's link then ends like any closed one
    sock = links[1].mesh.socks[0]
    sock.sendall(WIRE.pack(WIRE_MAGIC, TAG_GRAD, 1, 10**12) + bytes(1 << 16))
    sock.shutdown(socket.SHUT_WR)
    src, msg = get(inbox)
    assert src == 1 and isinstance(msg, Closed)
    assert links[0].receivers_done(5.0)


def test_bytes_that_are_not_a_message_end_only_that_link(links):
    layout = Layout(torch.float32, {Kind.GRAD: 4})
    inbox = Inbox()
    links[0].listen(1, TAG_GRAD, layout, inbox)
    links[0].listen(2, TAG_GRAD, layout, inbox)
    links[1].mesh.socks[0].sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(get(inbox)[1], Malformed)
    src, msg = get(inbox)
    assert src == 1 and isinstance(msg, Closed) and "not a message" in msg.reason
    links[2].send(0, TAG_GRAD, frames.encode(Kind.GRAD, 1, 2, torch.ones(4)))
    src, msg = get(inbox)
    assert src == 2 and isinstance(msg, Frame)
    closed = Inbox()
    links[1].on_close_inbox = closed
    links[1].send(0, TAG_GRAD, frames.encode(Kind.GRAD, 1, 1, torch.ones(4)))  # rank 0 shut that link
    src, msg = get(closed)
    assert src == 0 and isinstance(msg, Closed)


def test_a_flood_is_held_back_loses_nothing_and_delays_no_other_peer(links, monkeypatch):
    monkeypatch.setattr(mesh, "QUEUE_BYTES", 1 << 20)  # 16 frames of 64 KiB may wait in the inbox
    layout = Layout(torch.float32, {Kind.GRAD: 1 << 14})
    flood, other = Inbox(), Inbox()
    rcv = links[0].listen(2, TAG_GRAD, layout, flood)
    links[0].listen(1, TAG_GRAD, layout, other)
    assert rcv.limit == 16
    n = 1000  # 64 MB: more than the kernel's socket buffers hold
    for i in range(n):
        links[2].send(0, TAG_GRAD, frames.encode(Kind.GRAD, i, 2, torch.full((1 << 14,), float(i))))
    time.sleep(1.0)
    assert flood.pending(2) == rcv.limit
    assert not links[2].drain(0.2)  # the rest waits on the flooder's side: TCP flow control
    t0 = time.monotonic()
    links[1].send(0, TAG_GRAD, frames.encode(Kind.GRAD, 0, 1, torch.ones(1 << 14)))
    assert isinstance(get(other)[1], Frame) and time.monotonic() - t0 < 1.0  # another peer is not held up
    rounds = []
    for _ in range(n):
        msg = get(flood)[1]
        assert flood.pending(2) <= rcv.limit
        rounds.append(msg.round)
    assert rounds == list(range(n))  # back-pressure, not loss: every frame, in order
    assert links[2].drain(5.0)


def test_launch_binds_the_rendezvous_where_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    env = rendezvous_env("127.0.0.1")
    assert env["MASTER_ADDR"] == "127.0.0.1" and env.get("GLOO_SOCKET_IFNAME") == "lo"
    assert "GLOO_SOCKET_IFNAME" not in rendezvous_env("10.1.2.3")
    monkeypatch.setenv("BYZLEARN_MASTER_ADDR", "192.0.2.1")  # TEST-NET-1: never an address of this machine
    with pytest.raises(ConfigError, match="BYZLEARN_MASTER_ADDR"):
        launch(2, None, ["data.name=digits"], str(tmp_path / "x"), quiet=True)
    assert not (tmp_path / "x").exists()


# -- a hostile rank in a real job ------------------------------------------------------------------

JOB = [
    "data.name=digits",
    "model.name=logreg",
    "workers.n=4",
    "workers.byzantine=1",
    "attack.name=alie",
    "aggregator.name=median",
    "train.rounds=60",
    "train.eval_every=20",
    "optimizer.lr=0.5",
]


def listening_addresses(pids: list[int]) -> list[str]:
    """The addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                raw = bytes.fromhex(cols[1].split(":")[0])
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                out.append(socket.inet_ntop(family, raw))
    return out


def test_a_hostile_rank_changes_nothing_but_the_malformed_count(tmp_path):
    """Every hostile message is counted and dropped: the run follows the simulator's trajectory exactly."""
    sim = make_simulator(C.load(None, JOB + ["train.threads=1"]))
    byz = set(sim.byzantine.tolist())
    hostile = 1 + min(w for w in range(4) if w not in byz)  # an honest worker's rank: its real gradients count
    for _ in range(60):
        sim.step()
    out, result = tmp_path / "r", {}
    t = threading.Thread(
        target=lambda: result.setdefault(
            "code", launch(None, None, JOB, str(out), quiet=True, rank0_log=True, grace=2.0, faults={hostile: "hostile@5"})
        )
    )
    t.start()
    end, addresses = time.monotonic() + 60, []
    while time.monotonic() < end and t.is_alive() and not addresses:
        if (out / "metrics.jsonl").exists() and (out / "logs" / "pids.json").exists():
            pids = [int(p) for p in json.loads((out / "logs" / "pids.json").read_text())["pids"].values()]
            addresses = listening_addresses(pids)
        time.sleep(0.05)
    t.join(120)
    assert result.get("code") == 0, (out / "logs" / "rank0.log").read_text()[-3000:]
    # the store and gloo listen on loopback only (the links stopped listening once connected)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses
    s = json.loads((out / "summary.json").read_text())
    assert s["rounds"] == 60 and s["crashed_workers"] == [] and s["missing_gradients"] == 0 and s["late_gradients"] == 0
    assert s["malformed_messages"] == hostile_expected(5, 60) == 55 * len(HOSTILE) + FLOOD
    theta = torch.load(out / "checkpoint.pt", weights_only=True)["simulator"]["theta"]
    torch.testing.assert_close(theta, sim.theta.detach(), atol=1e-5, rtol=0)
    log = (out / "distributed.log").read_text()
    for reason in (
        "longer than any frame",
        "float64 message on a float32 channel",
        "uint8 message",
        "bad magic",
        "declares 2147483647",
        "which this process does not receive",
        "kind STOP is not expected",
    ):
        assert reason in log, reason
    for rank in range(5):
        text = (out / "logs" / f"rank{rank}.log").read_text()
        assert "Traceback" not in text and "terminate called" not in text, (rank, text[-2000:])
