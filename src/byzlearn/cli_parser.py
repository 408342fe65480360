"""The command line's arguments: one sub-parser per command (the commands themselves are in ``cli``)."""

from __future__ import annotations

import argparse
from typing import Callable

from .experiments.check import MARGIN


def build_parser(commands: dict[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The argument parser; ``commands`` maps each sub-command to the function that runs it (``cli``)."""
    p = argparse.ArgumentParser(prog="byzlearn", description="Byzantine-robust distributed learning: run, compare and study defences.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train one configuration (simulator)", description="Train one configuration and write a run folder.")
    r.add_argument("config", nargs="?", help="TOML config file (every key has a default)")
    r.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable), e.g. --set aggregator.name=krum"
    )
    r.add_argument("--out", help="run folder (default: runs/<time>-<data>-<rule>-<attack>)")
    r.add_argument("--data-dir", help="where the data set's files are (also: BYZLEARN_DATA, data.data_dir)")
    r.add_argument("--device", help="cpu, cuda, cuda:N or auto (train.device)")
    r.add_argument("--resume", metavar="DIR", help="continue a killed run from its last checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--engine",
        choices=("simulator", "distributed"),
        default="simulator",
        help="simulator (one process) or distributed (one process of a torchrun / byzlearn launch job)",
    )
    r.set_defaults(func=commands["run"])

    la = sub.add_parser(
        "launch",
        help="run a configuration on N local processes (torch.distributed: server + N-1 workers)",
        description="Start N local processes of the torch.distributed runtime (rank 0: server or monitor; "
        "ranks 1..N-1: workers) and write the same run folder as byzlearn run.",
    )
    la.add_argument("config", nargs="?", help="TOML config file (every key has a default)")
    la.add_argument("-n", "--nprocs", type=int, help="processes to start; sets workers.n = N-1 (default: workers.n + 1)")
    la.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    la.add_argument("--out", help="run folder (default: runs/<time>-<data>-<rule>-<attack>-distributed)")
    la.add_argument("--data-dir", help="where the data set's files are (also: BYZLEARN_DATA, data.data_dir)")
    la.add_argument("--device", help="cpu, cuda or auto: with CUDA every rank uses cuda:LOCAL_RANK")
    la.add_argument("--resume", metavar="DIR", help="continue a run from its last checkpoint")
    la.add_argument("--max-restarts", type=int, default=0, help="restart every process from the last checkpoint when rank 0 fails")
    la.add_argument(
        "--master-addr",
        metavar="ADDR",
        help="an address of this machine for the rendezvous, gloo and the links (default: BYZLEARN_MASTER_ADDR, else 127.0.0.1)",
    )
    la.add_argument("--quiet", action="store_true", help="no progress bar")
    la.set_defaults(func=commands["launch"])

    lst = sub.add_parser("list", help="list rules, pre-aggregators, attacks, data sets, models and optimisers")
    lst.set_defaults(func=commands["list"])

    m = sub.add_parser(
        "matrix",
        help="robustness matrix: rules x attacks x f (x heterogeneity), resumable",
        description="Run every cell of a matrix config ([matrix] section) not finished yet; write CSV, JSON, markdown and a heatmap.",
    )
    m.add_argument("config", nargs="?", help="TOML config with a [matrix] section (aggregators, attacks, byzantine, data, seeds)")
    m.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key (matrix.* keys too), repeatable")
    m.add_argument("--out", help="matrix folder (default: runs/matrix-<config name>); re-running it skips finished cells")
    m.add_argument("--data-dir", help="where the data set's files are (also: BYZLEARN_DATA, data.data_dir)")
    m.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes (each single-threaded)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=commands["matrix"])

    tu = sub.add_parser(
        "tune",
        help="choose lr / momentum / weight decay per rule, f and heterogeneity: worst case over attacks, on validation",
        description="Run a matrix config ([matrix]) for every combination of its [tune] lists (lr, momentum, "
        "weight_decay) and choose, per rule, f and heterogeneity, the combination with the best "
        "worst-case validation accuracy over attacks (ByzFL's protocol); needs data.validation_size > 0.",
    )
    tu.add_argument("config", help="TOML config with [matrix] and [tune] sections")
    tu.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key (matrix.* and tune.* keys too), repeatable")
    tu.add_argument("--out", help="output folder (default: runs/tune-<config name>); re-running it skips finished runs")
    tu.add_argument("--data-dir", help="where the data set's files are (also: BYZLEARN_DATA, data.data_dir)")
    tu.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (each single-threaded)")
    tu.add_argument("--quiet", action="store_true", help="no progress bar")
    tu.set_defaults(func=commands["tune"])

    rp = sub.add_parser("reproduce", help="reproduce a source paper's experiment (no NAME: list them)")
    rp.add_argument("name", nargs="?", help="reproduction name")
    rp.add_argument("--out", help="output folder (default: docs/reproductions/NAME)")
    rp.add_argument("--data-dir", help="where the data set's files are (also: BYZLEARN_DATA)")
    rp.add_argument("--quick", action="store_true", help="a reduced version for smoke checks")
    rp.add_argument(
        "--check",
        action="store_true",
        help="re-run into a temporary folder (or --out) and compare row by row with the committed results.json; exit 1 on a mismatch",
    )
    rp.add_argument(
        "--margin", type=float, default=MARGIN, help="with --check: accuracy points a learned row may fall outside its seeds' range"
    )
    rp.set_defaults(func=commands["reproduce"])

    mt = sub.add_parser(
        "meta-train",
        help="meta-train a learned aggregator (RNN/ARNN) by truncated BPTT",
        description="Meta-train a coordinatewise RNN/ARNN aggregator; save it (safetensors + card.json) in --out.",
    )
    mt.add_argument("config", nargs="?", help="TOML with sections aggregator, task, byzantine, meta (every key has a default)")
    mt.add_argument("--out", required=True, help="folder for aggregator.safetensors, card.json, history.json, meta_loss.png")
    mt.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="override a key (repeatable), e.g. --set aggregator.cell=gru"
    )
    mt.add_argument("--data-dir", help="where the data set's files are (task.data_dir; also BYZLEARN_DATA)")
    mt.add_argument("--resume", action="store_true", help="continue from --out's meta_checkpoint.pt (written at every validation)")
    mt.add_argument("--quiet", action="store_true", help="no progress bar")
    mt.set_defaults(func=commands["meta-train"])

    mv = sub.add_parser(
        "meta-validate",
        help="score a trained aggregator on validation trajectories (training data)",
        description="Score a meta-trained aggregator on its card's validation trajectories, optionally longer "
        "or used with other options (model selection without test data).",
    )
    mv.add_argument("folder", help="a folder written by meta-train")
    mv.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override the card's training config, e.g. --set meta.validate_steps=500 --set aggregator.input_clip=true",
    )
    mv.add_argument("--data-dir", help="where the data set's files are (task.data_dir; also BYZLEARN_DATA)")
    mv.add_argument("--json", help="also write the scores to this file")
    mv.set_defaults(func=commands["meta-validate"])

    d = sub.add_parser("demo", help="the main job: a short robustness comparison on the embedded digits data set")
    d.add_argument("--out", help="folder for the runs, table and plot (default: runs/demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=commands["demo"])
    return p
