"""Command line: ``byzlearn run | launch | matrix | tune | reproduce | meta-train | meta-validate | list | demo``.

Also ``python -m byzlearn``. Every bad input is one ``byzlearn: error: ...`` line (exit code 2) before anything is written.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from . import config as config_mod
from .registry import ConfigError


def _default_out(cfg: config_mod.Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.data.name}-{cfg.aggregator['name']}-{cfg.attack['name']}"


def _cmd_run(args: argparse.Namespace) -> int:
    from .experiments.runner import CHECKPOINT, Run, load_checkpoint, saved_config

    if args.engine == "distributed":  # one process of a torchrun / byzlearn launch job; ends the process
        from .distributed import runtime

        runtime.main(
            {
                "config": args.config,
                "overrides": args.set,
                "out": args.out,
                "resume": args.resume,
                "data_dir": args.data_dir,
                "device": args.device,
                "quiet": args.quiet,
            }
        )
    if args.resume:
        if args.config or args.set:
            raise ConfigError("--resume DIR continues a run with its saved config; do not pass CONFIG or --set with it")
        saved_config(Path(args.resume), args.device)  # not a run folder, or a bad config: say so first
        if _finished(args.resume):
            return 0
        if not (Path(args.resume) / CHECKPOINT).exists():
            load_checkpoint(Path(args.resume) / CHECKPOINT)  # the error: no checkpoint to continue from
        run = Run.resume(args.resume, device=args.device)
    else:
        overrides = list(args.set or [])
        if args.data_dir:
            overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
        if args.device:
            overrides.append(f"train.device={args.device}")
        cfg = config_mod.load(args.config, overrides)
        run = Run.create(cfg, args.out or _default_out(cfg))
    summary = run.execute(progress=False if args.quiet else None)
    assert summary is not None
    print(f"run folder: {run.out}")
    print(
        f"final test accuracy {100 * summary['final_test_accuracy']:.2f}%  best {100 * summary['best_test_accuracy']:.2f}%  "
        f"rounds {summary['rounds']}  wall time {summary['wall_time']:.1f} s"
    )
    print(f"plot: {run.out / 'curves.png'}")
    return 0


def _finished(folder: str) -> bool:
    """Say so and return ``True`` when ``--resume folder`` names a finished run (nothing is written then)."""
    from .experiments.runner import finished

    summary = finished(folder)
    if summary is not None:
        print(
            f"run folder {folder} is finished ({summary['rounds']} rounds, final test accuracy "
            f"{100 * summary['final_test_accuracy']:.2f}%): nothing to resume, nothing changed; to train longer, start a "
            f"new run from its config.toml with a larger train.rounds"
        )
    return summary is not None


def _cmd_launch(args: argparse.Namespace) -> int:
    from .distributed.launcher import launch
    from .experiments.runner import check_new, check_resumable, preflight

    if args.master_addr is not None and not args.master_addr.strip():
        raise ConfigError("--master-addr needs an address of this machine (e.g. 127.0.0.1), got an empty string")
    if args.max_restarts < 0:
        raise ConfigError(f"--max-restarts {args.max_restarts} must be >= 0")
    if args.resume and not (args.config or args.set):
        if _finished(args.resume):
            return 0
        check_resumable(args.resume, args.device)  # before any process starts or any log is written
    elif not args.resume and (args.nprocs is None or args.nprocs >= 2):
        overrides = list(args.set or [])
        if args.nprocs is not None and not any(o.strip().startswith("workers.n=") for o in overrides):
            overrides.append(f"workers.n={args.nprocs - 1}")
        if args.data_dir:
            overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
        if args.device:
            overrides.append(f"train.device={json.dumps(args.device)}")
        cfg = config_mod.load(args.config, overrides)
        if args.out:
            check_new(Path(args.out))
        preflight([(cfg, None)])  # data and shards too, before N processes start
    return launch(
        args.nprocs,
        args.config,
        list(args.set or []),
        args.out,
        resume=args.resume,
        data_dir=args.data_dir,
        device=args.device,
        quiet=args.quiet,
        max_restarts=args.max_restarts,
        master_addr=args.master_addr,
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from . import coding  # noqa: F401  (registers draco_repetition, draco_cyclic)
    from .aggregators import AGGREGATORS, PREAGGREGATORS
    from .attacks import ATTACKS
    from .data import DATASETS, PARTITION_SCHEMES
    from .models import MODELS
    from .optim import OPTIMIZERS

    for title, reg in [
        ("aggregation rules (aggregator.name)", AGGREGATORS),
        ("pre-aggregators (aggregator.pre)", PREAGGREGATORS),
        ("attacks (attack.name)", ATTACKS),
        ("data sets (data.name)", DATASETS),
        ("models (model.name)", MODELS),
        ("server optimisers (optimizer.name)", OPTIMIZERS),
    ]:
        print(f"{title}:")
        skip = ("params", "input_shape", "num_classes", "data_dir", "download")
        for e in reg.entries():
            keys = ", ".join(reg.parameters(e.name, skip))
            print(f"  {e.name:<20} {e.summary}" + (f"  [keys: {keys}]" if keys else ""))
    print(f"partitions (data.partition): {', '.join(PARTITION_SCHEMES)}")
    return 0


def _cmd_matrix(args: argparse.Namespace) -> int:
    from .experiments.matrix import expand, load_matrix_config, run_matrix
    from .experiments.runner import check_folder, preflight

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    _check_tables(config_mod.read_toml(args.config))  # a bad file is a ConfigError naming it
    raw = load_matrix_config(args.config, overrides)
    out = check_folder(args.out or Path("runs") / f"matrix-{Path(args.config).stem if args.config else 'default'}")
    _check_matrix(raw)
    preflight([(config_mod.from_dict(c.raw), out / "cells" / c.slug) for c in expand(raw)])
    rows = run_matrix(raw, out, jobs=args.jobs, progress=False if args.quiet else None, command=args.command_line)
    print((out / "table.md").read_text())
    print(f"{len(rows)} cells; results: {out / 'results.md'}, {out / 'results.csv'}, {out / 'results.json'}, {out / 'heatmap.png'}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from .experiments.matrix import load_matrix_config
    from .experiments.runner import check_folder, preflight
    from .experiments.tune import expand, run_tune

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.data_dir={json.dumps(args.data_dir)}")
    _check_tables(config_mod.read_toml(args.config))
    raw = load_matrix_config(args.config, overrides, sections=("matrix", "tune"))
    out = check_folder(args.out or Path("runs") / f"tune-{Path(args.config).stem}")
    _check_matrix(raw)
    preflight([(config_mod.from_dict(tc.cell.raw), tc.folder) for tc in expand(raw, out)[1]])
    rows = run_tune(raw, out, jobs=args.jobs, progress=False if args.quiet else None, command=args.command_line)
    print((out / "table.md").read_text())
    print(f"{len(rows)} choices; results: {out / 'results.md'}, {out / 'results.json'}, {out / 'heatmap_best.png'}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments import reproduce
    from .experiments.runner import check_folder

    reproduce.load_all()
    if args.name is None:
        for e in reproduce.REPRODUCTIONS.entries():
            print(f"  {e.name:<24} {e.summary}")
        return 0
    reproduce.REPRODUCTIONS.get(args.name)  # an unknown name lists the known ones
    if args.check:
        return _check_reproduction(args)
    out = check_folder(args.out or reproduce.folder(args.name))
    created = [p for p in (out, *out.parents) if not p.exists()]
    try:
        reproduce.run(args.name, out, quick=args.quick, data_dir=args.data_dir)
    except ConfigError:  # e.g. its data is missing: leave no empty folder behind
        for p in created:
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    print(f"results: {out / 'results.md'}")
    return 0


def _check_reproduction(args: argparse.Namespace) -> int:
    """``reproduce NAME --check``: re-run into a temporary folder (or --out), compare with the committed results."""
    import tempfile

    from .experiments import check, reproduce

    committed = reproduce.folder(args.name)
    if args.quick:
        raise ConfigError("--check compares a full re-run with the committed results: drop --quick")
    if not (committed / "results.json").is_file():
        raise ConfigError(
            f"no committed results at {committed / 'results.json'}: run --check from the repository root "
            f"(or run `byzlearn reproduce {args.name}` first to have something to compare with)"
        )
    rows_old = json.loads((committed / "results.json").read_text())
    with tempfile.TemporaryDirectory(prefix=f"byzlearn-check-{args.name}-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        reproduce.run(args.name, out, quick=False, data_dir=args.data_dir)
        rows_new = json.loads((out / "results.json").read_text())
        lines, bad = check.compare(rows_old, rows_new, args.margin)
        lines.append(check.numerics_line(committed, out))
    print("\n".join(lines))
    print(f"{args.name}: {'matches' if not bad else f'{bad} mismatch(es) against'} {committed / 'results.json'}")
    return 1 if bad else 0


def _cmd_meta_train(args: argparse.Namespace) -> int:
    from .experiments.runner import check_folder
    from .learned.meta_train import CHECKPOINT, load_config, meta_train

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"task.data_dir={json.dumps(args.data_dir)}")
    cfg = load_config(args.config, overrides)
    check_folder(args.out)
    if args.resume and not (Path(args.out) / CHECKPOINT).exists():
        raise ConfigError(
            f"--resume: {str(Path(args.out) / CHECKPOINT)!r} does not exist (meta-training writes it at every "
            "validation); drop --resume to start, or give the --out of a meta-training that ran"
        )
    card = meta_train(cfg, args.out, progress=False if args.quiet else None, resume=args.resume)
    print(
        f"{card['method']}: best validation score {card['validation_score']:.4f} (trajectory {card['best_trajectory']} of "
        f"{card['trajectories_run']}), {card['meta_steps']} meta-steps in {card['wall_time']:.0f} s "
        f"({card['meta_steps_per_second']:.2f} steps/s)"
    )
    print(
        f"saved: {Path(args.out) / 'aggregator.safetensors'}, card.json, meta_loss.png; use it with "
        f"--set aggregator.name=learned --set aggregator.path={json.dumps(str(args.out))}"
    )
    return 0


def _cmd_meta_validate(args: argparse.Namespace) -> int:
    from .experiments.runner import check_folder
    from .learned.meta_train import meta_validate

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"task.data_dir={json.dumps(args.data_dir)}")
    if args.json:
        if Path(args.json).is_dir():
            raise ConfigError(f"--json {args.json!r} is a folder; give a file name, e.g. {Path(args.json) / 'scores.json'}")
        check_folder(Path(args.json).parent, "--json's folder")
    res = meta_validate(args.folder, overrides)
    print(
        f"{res['method']} ({args.folder}), {res['steps']}-round validation trajectories, input_clip = "
        f"{str(res['input_clip']).lower()}: score {res['score']:.4f} (mean capped training loss; lower is better)"
    )
    for setting, score in res["settings"].items():
        print(f"  {setting:<24} {score:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import main as demo
    from .experiments.runner import check_folder

    return demo(out=check_folder(args.out) if args.out else None, quiet=args.quiet)


def _check_tables(raw: dict) -> dict:
    """``raw`` (a parsed config file), checked to hold only tables at the top level."""
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {values!r}; fix the config file")
    return raw


MATRIX_LISTS = ("aggregators", "attacks", "byzantine", "data", "seeds", "momentum")


def _check_matrix(raw: dict) -> None:
    """The ``[matrix]`` values a matrix expands over: non-empty lists (of integers for ``byzantine`` and ``seeds``,
    of tables for ``data``), before the cells are built."""
    _check_tables(raw)
    m = raw.get("matrix", {})
    for key in MATRIX_LISTS:
        if key in m and (not isinstance(m[key], list) or not m[key]):
            raise ConfigError(
                f"matrix.{key} = {m[key]!r} must be a non-empty list, e.g. matrix.{key} = "
                + {"byzantine": "[0, 3]", "seeds": "[0, 1]", "data": '[{partition = "iid"}]'}.get(key, '["mean"]')
            )
    for key in ("byzantine", "seeds"):
        for v in m.get(key, []):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"matrix.{key} = {m[key]!r}: each entry must be an integer >= 0")
    for v in m.get("data", []):
        if not isinstance(v, dict):
            raise ConfigError(f'matrix.data = {m["data"]!r}: each entry must be a table of data keys, e.g. {{partition = "iid"}}')


COMMANDS = {
    "run": _cmd_run,
    "launch": _cmd_launch,
    "list": _cmd_list,
    "matrix": _cmd_matrix,
    "tune": _cmd_tune,
    "reproduce": _cmd_reproduce,
    "meta-train": _cmd_meta_train,
    "meta-validate": _cmd_meta_validate,
    "demo": _cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    from .cli_parser import build_parser as parser

    return parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = "byzlearn " + " ".join(shlex.quote(a) for a in argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"byzlearn: error: {e}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"byzlearn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
