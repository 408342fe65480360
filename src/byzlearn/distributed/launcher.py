"""``byzlearn launch -n N``: start the N local processes of a distributed run and supervise them.

Each process runs what ``byzlearn run ... --engine distributed`` runs (``runtime.main``), with the
environment torchrun would give it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` on a free port). The rendezvous and every link listen on
127.0.0.1 only (gloo's too: ``GLOO_SOCKET_IFNAME`` is set to the loopback interface unless given),
or on the address ``master_addr`` / ``BYZLEARN_MASTER_ADDR`` names. The processes are forked from a
``multiprocessing`` fork server that has imported torch and byzlearn once (and computed nothing),
so N processes start in about a second instead of N times torch's import on a small machine.

Unlike torchrun's agent, which stops the whole group when any process fails, the launcher leaves
the group alone when a *worker* dies (the server carries on without it: that is the fault
tolerance under test); only the end of rank 0 ends the job: the workers get a grace period to exit
and are then stopped. When rank 0 fails and ``--max-restarts`` allows, every process is started
again with ``--resume`` on the run folder, which continues from the last checkpoint.

Worker output goes to ``<run folder>/logs/rank<i>.log``; the process ids of the current attempt are
in ``<run folder>/logs/pids.json`` (the fault tests use them to kill a process).
"""

from __future__ import annotations

import ipaddress
import json
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .. import config as config_mod
from ..config import Config
from ..experiments.runner import CHECKPOINT, saved_config
from ..registry import ConfigError
from .group import bind_listener
from .runtime import check_mode, default_out

PRELOAD = [
    "torch",
    "torch._dynamo",
    "torch.distributed",
    "torch.func",
    "torch.optim",
    "numpy",
    "sklearn.datasets",
    "sklearn.model_selection",
    "byzlearn.cli",
    "byzlearn.engine",
    "byzlearn.experiments.runner",
    "byzlearn.plots",
    "byzlearn.distributed.runtime",
    "byzlearn.distributed.server",
    "byzlearn.distributed.worker",
    "byzlearn.distributed.peers",
]
_CTX: Any = None


def _context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` now (``ConfigError`` when ``host`` is not an address of this machine)."""
    with bind_listener(host, 0) as s:
        return s.getsockname()[1]


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()]
    return "lo" if "lo" in names else next((n for n in names if n.startswith("lo")), None)


def rendezvous_env(master_addr: str) -> dict[str, str]:
    """``MASTER_ADDR`` and, for a loopback address, gloo's interface (when the caller's environment sets none)."""
    env = {"MASTER_ADDR": master_addr}
    try:
        loopback = ipaddress.ip_address(master_addr).is_loopback
    except ValueError:
        loopback = master_addr == "localhost"
    iface = _loopback_interface() if loopback and "GLOO_SOCKET_IFNAME" not in os.environ else None
    if iface:
        env["GLOO_SOCKET_IFNAME"] = iface
    return env


def _child(env: dict[str, str], args: dict[str, Any], log: str | None) -> None:
    """One rank: its environment, its output, then the runtime; never returns."""
    os.environ.update(env)
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
    import threading

    from tqdm import tqdm

    from .group import leave
    from .runtime import main

    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock: a forked rank leaves no semaphore behind
    try:
        main(args)  # ends the process with the rank's exit code
    except ConfigError as e:  # only a missing process-group environment gets here
        print(f"byzlearn: error: {e}", file=sys.stderr)
    leave(2)


def _stop(procs: list, grace: float) -> None:
    end = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()


def launch(
    nprocs: int | None,
    config: str | None,
    overrides: list[str],
    out: str | None,
    resume: str | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    quiet: bool = False,
    max_restarts: int = 0,
    grace: float = 5.0,
    rank0_log: bool = False,
    faults: dict[int, str] | None = None,
    master_addr: str | None = None,
) -> int:
    """Run a distributed job on this machine; returns rank 0's exit code.

    ``grace``: seconds the workers get to exit after rank 0 ended. ``rank0_log``: rank 0's output
    goes to ``logs/rank0.log`` instead of this terminal. ``faults``: rank -> ``BYZLEARN_FAULT``
    spec (``faults`` module), for chaos tests. ``master_addr``: where the rendezvous listens
    (default ``BYZLEARN_MASTER_ADDR``, else 127.0.0.1).
    """
    master_addr = master_addr or os.environ.get("BYZLEARN_MASTER_ADDR") or "127.0.0.1"
    free_port(master_addr)  # an address of another machine stops here, before any process starts
    overrides = list(overrides)
    if resume:
        if config or overrides:
            raise ConfigError("--resume DIR continues a run with its saved config; do not pass CONFIG or --set with it")
        cfg: Config = saved_config(Path(resume), device)
        folder = Path(resume)
    else:
        if nprocs is not None:
            if nprocs < 2:
                raise ConfigError(f"-n {nprocs}: a distributed run needs at least 2 processes (rank 0 and one worker)")
            if any(o.strip().startswith("workers.n=") for o in overrides):
                raise ConfigError("pass either -n N (N processes: rank 0 + N-1 workers) or --set workers.n, not both")
            overrides.append(f"workers.n={nprocs - 1}")
        if data_dir:
            overrides.append(f"data.data_dir={json.dumps(data_dir)}")
        cfg = config_mod.load(config, overrides)
        check_mode(cfg)  # a config error stops here, before any process starts
        folder = Path(out) if out else default_out(cfg)
    world = cfg.workers.n + 1
    if nprocs is not None and nprocs != world:
        raise ConfigError(f"-n {nprocs} does not match the run folder's workers.n = {cfg.workers.n} ({world} processes)")
    logs = folder / "logs"
    ctx = _context()
    attempt, resuming = 0, bool(resume)
    while True:
        logs.mkdir(parents=True, exist_ok=True)
        port = free_port(master_addr)
        if resuming:
            args = {"resume": str(folder), "device": device, "quiet": quiet}
        else:
            args = {"config": config, "overrides": overrides, "out": str(folder), "device": device, "quiet": quiet}
        procs = []
        for rank in range(world):
            env = {
                "RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(world),
                "MASTER_PORT": str(port),
                "BYZLEARN_FAULT": (faults or {}).get(rank, ""),
                **rendezvous_env(master_addr),
            }
            log = str(logs / f"rank{rank}.log") if rank or rank0_log else None
            p = ctx.Process(target=_child, args=(env, args, log), name=f"byzlearn-rank{rank}")
            p.start()
            procs.append(p)
        (logs / "pids.json").write_text(json.dumps({"attempt": attempt, "pids": {str(r): p.pid for r, p in enumerate(procs)}}) + "\n")
        try:
            procs[0].join()
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()
            _stop(procs, 5.0)
            raise
        code = procs[0].exitcode
        _stop(procs[1:], grace if code == 0 else 0.0)
        if code < 0:  # killed by a signal: the shell's convention
            code = 128 - code
        if code in (0, 2) or attempt >= max_restarts:
            if code not in (0, 2):
                print(
                    f"byzlearn launch: rank 0 exited with code {code}; continue the run with byzlearn launch --resume {folder}"
                    if (folder / CHECKPOINT).exists()
                    else f"byzlearn launch: rank 0 exited with code {code}",
                    file=sys.stderr,
                    flush=True,
                )
            return code
        attempt += 1
        resuming = (folder / CHECKPOINT).exists()  # killed before the first checkpoint: start again from round 0
        print(
            f"byzlearn launch: rank 0 exited with code {code}; restart {attempt} of {max_restarts} "
            f"{'from the last checkpoint' if resuming else 'from the start (no checkpoint yet)'}",
            file=sys.stderr,
            flush=True,
        )
