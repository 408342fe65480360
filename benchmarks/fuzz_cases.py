"""The cases of ``fuzz_cli.py``: bad ``--set`` values of every key, bad files, ``--out`` naming a file, corrupt
checkpoints, corrupted learned-aggregator folders and data files, for every subcommand."""

from __future__ import annotations

import dataclasses
import json
import random
import shlex
import shutil
import struct
import typing
from pathlib import Path
from typing import Any, Callable, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
AGGREGATOR = ROOT / "docs" / "reproductions" / "l2a-aggregators" / "rnn_lstm"  # a committed trained aggregator
AREAS = (
    "run --set",
    "run combos",
    "config file",
    "out folders",
    "resume",
    "learned folder",
    "data files",
    "matrix/tune",
    "meta-train",
    "launch",
    "other commands",
)
BIG = "1180591620717411303424"  # 2^70
VALUES = ("nan", "inf", "-inf", "-1", "0", "0.5", "1000000000", BIG, f"-{BIG}", "true", "x", '""', "[]", "[1, [2]]", "{a = 1}")
LONG = (
    "rounds",
    "trajectories",
    "steps",
    "validate_steps",
    "local_steps",
    "evals",
    "max_iter",
    "iters",
    "checkpoint_every",
    "eval_every",
    "validate_every",
    "patience",
    "meta_batch",
    "unroll",
    "batch_size",
    "public_batch",
    "eval_batch_size",
)
LR_KEYS = ("optimizer.lr", "fedavg.local_lr")
RUN = (
    "run",
    "--quiet",
    "--out",
    "out",
    "--set",
    "train.rounds=2",
    "--set",
    "train.eval_every=1",
    "--set",
    "train.threads=1",
    "--set",
    "data.download=false",
)
LAUNCH = (
    "launch",
    "--quiet",
    "--out",
    "out",
    "-n",
    "3",
    "--set",
    "train.rounds=2",
    "--set",
    "train.eval_every=1",
    "--set",
    "train.threads=1",
    "--set",
    "data.download=false",
)
META = (
    "meta-train",
    "--quiet",
    "--out",
    "out",
    "--set",
    "task.data=digits",
    "--set",
    "task.steps=2",
    "--set",
    "task.unroll=1",
    "--set",
    "meta.trajectories=1",
    "--set",
    "meta.validate_every=1",
    "--set",
    "meta.threads=1",
    "--set",
    "task.public_size=100",
)
Setup = Callable[[Path], None]


class Case(NamedTuple):
    area: str
    argv: tuple[str, ...]
    setup: Setup | None = None
    must_fail: bool = False  # accepted counts as bad (a NaN learning rate, a resume of a folder without checkpoint)
    unchanged: bool = False  # accepted only if no file changed (a resume of a finished run)

    def command(self) -> str:
        return "byzlearn " + shlex.join(self.argv)


def _sets(*items: str) -> tuple[str, ...]:
    return tuple(x for item in items for x in ("--set", item))


def _values(key: str) -> tuple[str, ...]:
    long = key.rsplit(".", 1)[-1] in LONG or key.startswith("distributed.")
    return tuple(v for v in VALUES if not (long and v == "1000000000"))


def _must_fail(key: str, value: str) -> bool:
    return value == "nan" or (key in LR_KEYS and value in ("inf", "-inf", "-1"))


# -- files -------------------------------------------------------------------------------------------
def write(rel: str, data: bytes | str) -> Setup:
    def setup(root: Path) -> None:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def both(*setups: Setup) -> Setup:
    def setup(root: Path) -> None:
        for s in setups:
            s(root)

    return setup


def mkdir(rel: str) -> Setup:
    return lambda root: (root / rel).mkdir(parents=True, exist_ok=True)


NOISE = random.Random(0).randbytes(4096)
BAD_FILES: dict[str, bytes | str | None] = {  # None: a directory
    "random bytes": NOISE,
    "NUL bytes": b"[train]\x00rounds = 2\n",
    "not UTF-8": "# caf\xe9\n[train]\nrounds = 2\n".encode("latin-1"),
    "UTF-16": "[train]\nrounds = 2\n".encode("utf-16"),
    "a directory": None,
    "section not a table": "data = 5\n",
    "nested garbage": "[data]\nname = { a = [1, { b = 2 }] }\n",
    "unknown section": "[nope]\nx = 1\n",
    "huge int": "[train]\nseed = 99999999999999999999999\n",
    "deep nesting": "[data]\nname = " + "[" * 3000 + "]" * 3000 + "\n",
    "pre not a list": '[aggregator]\nname = "krum"\npre = 5\n',
    "lr nan": "[optimizer]\nlr = nan\n",
}


def bad_file(rel: str, content: bytes | str | None) -> Setup:
    return mkdir(rel) if content is None else write(rel, content)


# -- run folders and checkpoints (built by the child from a template run) -----------------------------
def _template_run(root: Path, finished: bool) -> None:
    from byzlearn import config
    from byzlearn.experiments.runner import Run

    cfg = config.load(None, ["train.rounds=4", "train.eval_every=2", "train.checkpoint_every=2", "train.threads=1"])
    Run.create(cfg, root / "r").execute(progress=False, stop_after=None if finished else 2)


def run_folder(finished: bool = False) -> Setup:
    return lambda root: _template_run(root, finished)


def edit_checkpoint(edit: Callable[[dict], Any]) -> Setup:
    def setup(root: Path) -> None:
        import torch

        _template_run(root, False)
        ck = torch.load(root / "r" / "checkpoint.pt", weights_only=True)
        torch.save(edit(ck), root / "r" / "checkpoint.pt")

    return setup


def replace_file(rel: str, make: Callable[[bytes], bytes]) -> Setup:
    def setup(root: Path) -> None:
        p = root / rel
        p.write_bytes(make(p.read_bytes()))

    return setup


class Marker:
    """Unpickling it would create the file ``pwned`` (a crafted checkpoint)."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


def crafted_pickle(rel: str) -> Setup:
    def setup(root: Path) -> None:
        import torch

        torch.save({"simulator": Marker(), "elapsed": 0.0}, root / rel)

    return setup


def _set(root: dict, path: str, value: Any) -> dict:
    """``root`` with the value at the dotted ``path`` replaced."""
    d, keys = root, path.split(".")
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    return root


# -- learned aggregators ------------------------------------------------------------------------------
def learned(
    edit_card: Callable[[dict], Any] | None = None,
    weights: Callable[[dict], dict] | None = None,
    raw_card: bytes | None = None,
    raw_weights: bytes | None = None,
) -> Setup:
    def setup(root: Path) -> None:
        shutil.copytree(AGGREGATOR, root / "agg")
        if edit_card is not None:
            card = json.loads((root / "agg" / "card.json").read_text())
            out = edit_card(card)
            (root / "agg" / "card.json").write_text(json.dumps(card if out is None else out))
        if raw_card is not None:
            (root / "agg" / "card.json").write_bytes(raw_card)
        if weights is not None:
            from safetensors.torch import load_file, save_file

            save_file(weights(load_file(str(root / "agg" / "aggregator.safetensors"))), str(root / "agg" / "aggregator.safetensors"))
        if raw_weights is not None:
            (root / "agg" / "aggregator.safetensors").write_bytes(raw_weights)

    return setup


def _fill(w: dict, value: float) -> dict:
    k = next(iter(w))
    w[k] = w[k].clone().fill_(value)
    return w


def _pop(d: dict, key: str) -> dict:
    d.pop(key)
    return d


def learned_variants() -> dict[str, Setup | None]:
    import torch

    first = lambda w: next(iter(w))  # noqa: E731
    return {
        "missing folder": None,
        "no card": both(learned(), lambda r: (r / "agg" / "card.json").unlink()),
        "no weights": both(learned(), lambda r: (r / "agg" / "aggregator.safetensors").unlink()),
        "card garbage": learned(raw_card=NOISE[:300]),
        "card a list": learned(raw_card=b"[1, 2]"),
        "card empty": learned(raw_card=b""),
        "card a directory": both(learned(), lambda r: (r / "agg" / "card.json").unlink(), mkdir("agg/card.json")),
        "wrong format": learned(lambda c: _set(c, "format", "other/2")),
        "no network": learned(lambda c: _pop(c, "network")),
        "network = 5": learned(lambda c: _set(c, "network", 5)),
        "network unknown key": learned(lambda c: _set(c, "network.colour", 1)),
        "network hidden = 'x'": learned(lambda c: _set(c, "network.hidden", "x")),
        "network hidden = 0": learned(lambda c: _set(c, "network.hidden", 0)),
        "network hidden = -3": learned(lambda c: _set(c, "network.hidden", -3)),
        "network cell = 'rnn'": learned(lambda c: _set(c, "network.cell", "rnn")),
        "network workers = 5": learned(lambda c: _set(c, "network.workers", 5)),
        "no p": learned(lambda c: _pop(c, "p")),
        "no preprocess": learned(lambda c: _pop(c, "preprocess")),
        "no output": learned(lambda c: _pop(c, "output")),
        "no probe_lr": learned(lambda c: _pop(c, "probe_lr")),
        "preprocess = 'nope'": learned(lambda c: _set(c, "preprocess", "nope")),
        "output = 'nope'": learned(lambda c: _set(c, "output", "nope")),
        "p = 'x'": learned(lambda c: _set(c, "p", "x")),
        "step_scale = 'x'": learned(lambda c: _set(c, "step_scale", "x")),
        "method = 5": learned(lambda c: _set(c, "method", 5)),
        "training_config = 5": learned(lambda c: _set(c, "training_config", 5)),
        "weights garbage": learned(raw_weights=NOISE),
        "weights empty": learned(raw_weights=b""),
        "weights truncated": both(learned(), replace_file("agg/aggregator.safetensors", lambda b: b[: len(b) // 2])),
        "NaN weights": learned(weights=lambda w: _fill(w, float("nan"))),
        "Inf weights": learned(weights=lambda w: _fill(w, float("inf"))),
        "missing tensor": learned(weights=lambda w: _pop(w, first(w))),
        "extra tensor": learned(weights=lambda w: {**w, "extra": torch.zeros(2)}),
        "wrong shape": learned(weights=lambda w: {**w, first(w): torch.zeros(3, 3)}),
        "int weights": learned(weights=lambda w: {k: v.to(torch.int32) for k, v in w.items()}),
    }


# -- data files ---------------------------------------------------------------------------------------
def idx_bytes(dims: tuple[int, ...], fill: int = 1) -> bytes:
    n = 1
    for d in dims:
        n *= d
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + bytes([fill % 256]) * n


def mnist_dir(**override: bytes | None) -> Setup:
    files = {
        "train-images-idx3-ubyte": idx_bytes((64, 28, 28), 3),
        "train-labels-idx1-ubyte": idx_bytes((64,), 1),
        "t10k-images-idx3-ubyte": idx_bytes((16, 28, 28), 5),
        "t10k-labels-idx1-ubyte": idx_bytes((16,), 2),
    }
    files.update(override)
    return data_folder("mn", files)


def data_folder(sub: str, files: dict[str, bytes | None]) -> Setup:
    """A set-up writing ``files`` into ``root/sub``: ``None`` makes a folder of that name, ``b"<missing>"`` leaves it out."""

    def setup(root: Path) -> None:
        (root / sub).mkdir()
        for name, data in files.items():
            if data is None:
                (root / sub / name).mkdir()
            elif data != b"<missing>":
                (root / sub / name).write_bytes(data)

    return setup


def cifar_dir(**override: bytes | None) -> Setup:
    rec = bytes([3]) + bytes(3072)
    files = {f"data_batch_{i}.bin": rec * 4 for i in range(1, 6)}
    files["test_batch.bin"] = rec * 4
    files.update(override)
    return data_folder("cf", files)


def all_cases() -> list[Case]:
    from byzlearn import (
        coding,  # noqa: F401  (registers the DRACO rules)
        config,
    )
    from byzlearn.aggregators import AGGREGATORS, PREAGGREGATORS
    from byzlearn.attacks import ATTACKS
    from byzlearn.learned.meta_train import SECTIONS as META_SECTIONS
    from byzlearn.optim import OPTIMIZERS
    from fuzz_more import more_cases

    cases: list[Case] = []
    # -- every key of every section and component -----------------------------------------------------
    keys: list[tuple[str, tuple[str, ...]]] = []
    for section, cls in config.FIXED_SECTIONS.items():
        prefix = _sets("train.algorithm=fedavg") if section == "fedavg" else ()
        keys += [(f"{section}.{f.name}", prefix) for f in dataclasses.fields(cls)]
    for reg, section, base in (
        (ATTACKS, "attack", ("workers.byzantine=3",)),
        (OPTIMIZERS, "optimizer", ()),
        (AGGREGATORS, "aggregator", ("workers.byzantine=1", "data.public_size=100", "workers.n=9")),
    ):
        for name in reg.names():
            if name in ("learned", "learned_whitebox"):
                continue  # in "learned folder"
            params = [
                k for k in reg.parameters(name, ("params",)) if not (section == "aggregator" and k == "f" and name not in ("mean", "krum"))
            ]
            keys += [(f"{section}.{k}", _sets(*base, f"{section}.name={name}")) for k in params]
    for key, prefix in keys:
        for v in _values(key):
            cases.append(Case("run --set", (*RUN, *prefix, "--set", f"{key}={v}"), must_fail=_must_fail(key, v)))
    for name in PREAGGREGATORS.names():
        for k in PREAGGREGATORS.parameters(name, ("f",)):
            for v in ("nan", "inf", "-1", "0", BIG, '"x"', "[]"):
                cases.append(
                    Case(
                        "run --set",
                        (*RUN, *_sets("workers.byzantine=2", f'aggregator.pre=[{{name = "{name}", {k} = {v}}}]')),
                        must_fail=v == "nan",
                    )
                )
    for section, cls in META_SECTIONS.items():
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            for v in ("nan", "inf", "-1", "0", BIG, "x", "[]", "{a = 1}", "[{name = 5}]"):
                if v.startswith("[{") and hint is not list:
                    continue
                cases.append(Case("meta-train", (*META, "--set", f"{section}.{f.name}={v}"), must_fail=v == "nan"))
    cases += more_cases()
    return cases
