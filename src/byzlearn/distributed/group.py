"""Process group set-up from the environment ``torchrun`` (or ``byzlearn launch``) provides.

World layout: ``world_size = workers.n + 1``. Rank 0 is the parameter server (``mode = "server"``)
or the monitor that records metrics (``mode = "decentralized"``: it takes no part in the protocol);
rank ``i >= 1`` is worker (or peer) ``i - 1``, with its own data shard. ``init_method = env://``:
``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_RANK``), as torchrun sets
them; a multi-node torchrun rendezvous works the same way.

Rendezvous (``rendezvous``): under torchrun's agent (``TORCHELASTIC_USE_AGENT_STORE``) every rank
is a client of the agent's c10d store; otherwise rank 0 hosts the store, listening on
``MASTER_ADDR`` only (c10d's own server would listen on every interface whatever the address; here
the listening socket is bound first and handed to it). ``byzlearn launch`` sets ``MASTER_ADDR`` to
127.0.0.1 unless ``BYZLEARN_MASTER_ADDR`` says otherwise. Each rank's message links
(``mesh.Mesh``) listen on ``BYZLEARN_LINK_ADDR``, by default the local address that routes to
``MASTER_ADDR`` (loopback for a local job), and only until every rank is connected.

Messages travel over those links on CPU tensors, never as gloo receives (``mesh`` says why);
the gloo group serves the start-up only (config broadcast, barrier). On GPUs each rank computes on
``cuda:LOCAL_RANK`` and stages its messages through host memory; ``backend = "nccl"`` creates the
group as ``cpu:gloo,cuda:nccl`` so that CUDA collectives are available beside it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import socket
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import Config
from ..registry import ConfigError
from . import mesh

NEVER = datetime.timedelta(days=7)  # gloo's own timeout: never reached; deadlines live in the runtime


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_server(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The rank and world size torchrun / ``byzlearn launch`` put in the environment."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"--engine distributed needs the process-group environment ({', '.join(missing)} not set): start it with "
            "`byzlearn launch -n N CONFIG` or `torchrun --nproc-per-node N -m byzlearn run CONFIG --engine distributed`"
        )
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    return World(rank, size, local, int(os.environ.get("LOCAL_WORLD_SIZE", size)))


def check_world(cfg: Config, world: World) -> None:
    need = cfg.workers.n + 1
    if world.world_size != need:
        raise ConfigError(
            f"the distributed runtime runs 1 {'server' if cfg.distributed.mode == 'server' else 'monitor'} + workers.n = "
            f"{cfg.workers.n} workers = {need} processes, but the world size is {world.world_size}: start {need} processes "
            f"or set workers.n = {world.world_size - 1}"
        )


def rank_device(cfg: Config, world: World) -> Config:
    """The config this rank runs: ``train.device`` cuda/auto becomes ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    dev = cfg.train.device
    if dev in ("auto", "cuda") and torch.cuda.is_available():
        dev = f"cuda:{world.local_rank % torch.cuda.device_count()}"
    elif dev == "auto":
        dev = "cpu"
    threads = cfg.train.threads if cfg.train.threads > 0 else 1  # one intra-op thread per process by default
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=dev, threads=threads))


def backend_name(cfg: Config) -> str:
    b = cfg.distributed.backend
    if b == "nccl":
        if not (dist.is_nccl_available() and torch.cuda.is_available()):
            raise ConfigError("distributed.backend = 'nccl' needs CUDA and a NCCL build of torch; use gloo (or auto) here")
        return "cpu:gloo,cuda:nccl"
    return "gloo"


class Watchdog:
    """Ends the process (exit code 3) if ``cancel`` is not called within ``seconds``: a start-up that never completes."""

    def __init__(self, seconds: float, what: str):
        self.timer = threading.Timer(seconds, self._fire, args=(seconds, what))
        self.timer.daemon = True
        self.timer.start()

    @staticmethod
    def _fire(seconds: float, what: str) -> None:
        print(f"byzlearn: error: {what} did not complete within {seconds:.0f} s (distributed.timeout)", file=sys.stderr, flush=True)
        os._exit(3)

    def cancel(self) -> None:
        self.timer.cancel()


_HELD: list[socket.socket] = []  # the store's listening socket (c10d serves on its descriptor)


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` only; ``ConfigError`` when ``host`` is not an address of this machine."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        raise ConfigError(
            f"cannot listen on {host}:{port} for the rendezvous ({e}): MASTER_ADDR (for byzlearn launch: "
            "BYZLEARN_MASTER_ADDR, default 127.0.0.1) must be an address of this machine"
        ) from None
    return sock


def rendezvous(world: World):
    """The c10d store of the job (rank 0 hosts it on ``MASTER_ADDR`` only, unless torchrun's agent does)."""
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return dist.PrefixStore(f"/worker/attempt_{attempt}", dist.TCPStore(addr, port, world.world_size, False, NEVER))
    if world.rank == 0:
        sock = bind_listener(addr, port)
        _HELD.append(sock)
        return dist.TCPStore(addr, port, world.world_size, True, NEVER, wait_for_workers=False, master_listen_fd=sock.fileno())
    return dist.TCPStore(addr, port, world.world_size, False, NEVER)


def link_address() -> str:
    """Where this rank's links listen: ``BYZLEARN_LINK_ADDR``, else the local address routing to ``MASTER_ADDR``."""
    if os.environ.get("BYZLEARN_LINK_ADDR"):
        return os.environ["BYZLEARN_LINK_ADDR"]
    family, _, _, _, addr = socket.getaddrinfo(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect(addr)  # no packet is sent: this only asks the routing table
        return s.getsockname()[0]


def init(world: World, backend: str, timeout: float = 120.0) -> None:
    """Join the process group, then open this rank's links to every other rank (``mesh.Mesh``)."""
    store = rendezvous(world)
    dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.world_size, timeout=NEVER)
    mesh.open_mesh(world.rank, world.world_size, dist.PrefixStore("byzlearn/links", store), link_address(), timeout)


def share_text(world: World, text: str | None, error: str | None = None) -> tuple[str | None, str | None]:
    """Rank 0's text (the resolved config) or its error, broadcast to every rank once at start-up."""
    if world.rank == 0:
        data = (error if error is not None else text or "").encode()
        head = torch.tensor([1 if error is not None else 0, len(data)], dtype=torch.int64)
    else:
        head = torch.zeros(2, dtype=torch.int64)
    dist.broadcast(head, src=0)
    status, size = int(head[0]), int(head[1])
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if world.rank == 0 and size else torch.zeros(size, dtype=torch.uint8)
    if size:
        dist.broadcast(buf, src=0)
    out = buf.numpy().tobytes().decode() if size else ""
    return (None, out) if status else (out, None)


def ready(cfg: Config, world: World) -> None:
    """Start-up barrier: every rank has built its engine (data, model) before round 0's deadline starts.

    A collective is safe here (no fault is tolerated during start-up); the watchdog ends a rank that
    waits longer than ``distributed.timeout``.
    """
    watchdog = Watchdog(cfg.distributed.timeout, f"rank {world.rank}: waiting for every rank to be ready")
    dist.barrier()
    watchdog.cancel()


def leave(exit_code: int) -> None:
    """Flush and end the process without running destructors that could wait on a hung peer's link."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
