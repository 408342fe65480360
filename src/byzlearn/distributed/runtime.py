"""Entry point of every process of a distributed run (``byzlearn run --engine distributed``).

Start-up: every rank joins the gloo process group (``MASTER_ADDR``/``MASTER_PORT``; ``group.init``
also opens the rank's message links; a watchdog ends a rank that cannot join within
``distributed.timeout``); rank 0 resolves the config (from CONFIG and ``--set``, or
from the run folder when resuming), validates it and broadcasts it, so that every rank runs the
very same config whatever files its machine has; then each rank takes its role:

- ``mode = "server"``: rank 0 drives a ``Run`` (run folder, metrics, checkpoints, summary, plot)
  whose engine is ``server.ServerEngine``; ranks 1..n run ``worker.WorkerProcess``;
- ``mode = "decentralized"``: rank 0 drives a ``Run`` whose engine is ``monitor.MonitorEngine`` (it
  records the peers' accuracy and takes no part in the protocol); ranks 1..n run ``peers.PeerProcess``.

Resume: ``--resume DIR``, or a torchrun restart (``TORCHELASTIC_RESTART_COUNT > 0``) with an
``--out`` folder that holds a checkpoint, continues the run from its last checkpoint; workers need
no state of their own (they replay the shared random streams).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .. import config as config_mod
from ..config import Config
from ..experiments.runner import CHECKPOINT, Run, check_new, saved_config
from ..registry import ConfigError
from . import group
from .group import World

EVENTS = "distributed.log"


def default_out(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.data.name}-{cfg.aggregator['name']}-{cfg.attack['name']}-distributed"


def check_mode(cfg: Config) -> None:
    """Checks of settings the distributed runtime needs beyond the simulator's."""
    from ..engine.validate import validate

    validate(cfg)
    dc = cfg.distributed
    if dc.mode == "decentralized":
        from ..decentralized.agreement import requirement

        problem = requirement(dc.agreement, cfg.workers.n, cfg.workers.byzantine)
        if problem:
            raise ConfigError(f"distributed.agreement = {dc.agreement!r}: {problem}")
        if cfg.workers.byzantine_set != "fixed":
            raise ConfigError("decentralised mode needs workers.byzantine_set = 'fixed' (a peer is Byzantine for the whole run)")
        if str(cfg.aggregator["name"]).startswith("draco_"):
            raise ConfigError("DRACO needs a server: use distributed.mode = 'server' with a draco_* aggregator")


def _resolve(args: dict[str, Any], world: World) -> tuple[Config, Path, bool]:
    """Rank 0: the config, the run folder and whether the run resumes."""
    resume = args.get("resume")
    out = args.get("out")
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0
    if not resume and restarted and out and (Path(out) / CHECKPOINT).exists():
        resume = out  # torchrun restarted the job after a failure: continue from the last checkpoint
    if resume:
        if args.get("config") or args.get("overrides"):
            raise ConfigError("--resume DIR continues a run with its saved config; do not pass CONFIG or --set with it")
        cfg = saved_config(Path(resume), args.get("device"))
        folder, resuming = Path(resume), True
        if cfg.distributed.mode == "decentralized":
            raise ConfigError("a decentralised run cannot be resumed: the peers' states are not checkpointed; start it again")
    else:
        overrides = list(args.get("overrides") or [])
        if args.get("data_dir"):
            overrides.append(f"data.data_dir={json.dumps(args['data_dir'])}")
        if args.get("device"):
            overrides.append(f"train.device={args['device']}")
        cfg = config_mod.load(args.get("config"), overrides)
        folder, resuming = Path(out) if out else default_out(cfg), False
        check_new(folder)
    check_mode(cfg)
    group.check_world(cfg, world)
    return cfg, folder, resuming


def _local_config(args: dict[str, Any]) -> Config | None:
    """What a rank can read of the config by itself (for the backend and the start-up timeout)."""
    try:
        if args.get("resume"):
            return saved_config(Path(args["resume"]))
        return config_mod.load(args.get("config"), list(args.get("overrides") or []))
    except Exception:  # noqa: BLE001 - rank 0 reports config problems; the others wait for its broadcast
        return None


def main(args: dict[str, Any]) -> None:
    """Run this process's part and end the process with its exit code (0; 2 for a config error; 1 otherwise).

    Only a missing process-group environment raises (``ConfigError``): nothing has started then.
    """
    world = group.world_from_env()
    try:
        code = _main(world, args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"byzlearn: error: {e}", file=sys.stderr)
        code = 2
    except BaseException:  # noqa: BLE001 - report it; the other ranks see this one's links close
        traceback.print_exc()
        code = 1
    group.leave(code)  # no destructor may wait on a hung peer's link


def _main(world: World, args: dict[str, Any]) -> int:
    local = _local_config(args)
    timeout = local.distributed.timeout if local is not None else config_mod.DistributedConfig.timeout
    backend = group.backend_name(local) if local is not None else "gloo"
    text = error = None
    cfg: Config | None = None
    folder, resuming = Path("."), False
    if world.rank == 0:
        try:
            cfg, folder, resuming = _resolve(args, world)
            text = cfg.to_toml()
        except (ConfigError, FileNotFoundError) as e:
            error = str(e)
    watchdog = group.Watchdog(timeout, f"rank {world.rank}: joining the process group of {world.world_size} processes")
    group.init(world, backend, timeout)
    text, error = group.share_text(world, text, error)
    watchdog.cancel()
    if error is not None:
        if world.rank == 0:
            print(f"byzlearn: error: {error}", file=sys.stderr)
        return 2
    if cfg is None:
        cfg = config_mod.from_dict(__import__("tomllib").loads(text))
    mode = cfg.distributed.mode
    if world.rank != 0:
        rank_cfg = group.rank_device(cfg, world)
        if mode == "server":
            from .worker import WorkerProcess

            return WorkerProcess(rank_cfg, world).run()
        from .peers import PeerProcess

        return PeerProcess(rank_cfg, world).run()
    return _rank0(cfg, world, folder, resuming, args)


def _rank0(cfg: Config, world: World, folder: Path, resuming: bool, args: dict[str, Any]) -> int:
    engines: list[Any] = []

    def build(c: Config):
        c = group.rank_device(c, world)
        if c.distributed.mode == "server":
            from .server import ServerEngine

            engine = ServerEngine(c, world)
        else:
            from .monitor import MonitorEngine

            engine = MonitorEngine(c, world)
        engines.append(engine)
        return engine

    if resuming:
        run = Run.resume(folder, device=args.get("device"), engine=build)
    else:
        run = Run.create(cfg, folder, engine=build)
    try:
        summary = run.execute(progress=False if args.get("quiet") else None)
    finally:
        engine = engines[-1]
        clean = engine.close()
        log = getattr(engine, "log", [])
        if log:
            with open(folder / EVENTS, "a") as fh:
                fh.write("".join(line + "\n" for line in log))
            print(f"{len(log)} events (crashed workers, malformed messages, skipped rounds): {folder / EVENTS}", file=sys.stderr)
    assert summary is not None
    if clean:
        dist.destroy_process_group()
    print(f"run folder: {run.out}")
    print(
        f"final test accuracy {100 * summary['final_test_accuracy']:.2f}%  best {100 * summary['best_test_accuracy']:.2f}%  "
        f"rounds {summary['rounds']}  wall time {summary['wall_time']:.1f} s"
    )
    if cfg.distributed.mode == "server":
        print(
            f"missing gradients {summary['missing_gradients']}  late {summary['late_gradients']}  "
            f"malformed {summary['malformed_messages']}  crashed workers {summary['crashed_workers']}"
        )
    print(f"plot: {run.out / 'curves.png'}")
    return 0
