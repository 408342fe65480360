"""Bad input of every kind ends in one ``byzlearn: error: ...`` (exit 2) before anything is written; checkpoints
cannot run code (issue 15). ``benchmarks/fuzz_cli.py`` tries many more cases."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from byzlearn import config as C
from byzlearn.cli import main
from byzlearn.experiments.runner import Run

ROOT = Path(__file__).resolve().parents[1]
AGGREGATOR = ROOT / "docs" / "reproductions" / "l2a-aggregators" / "rnn_lstm"
QUICK = ["train.rounds=4", "train.eval_every=2", "train.checkpoint_every=2", "train.threads=1"]
RUN = ["run", "--quiet", "--out", "out", *[x for o in ["train.rounds=2", "train.eval_every=1", "train.threads=1"] for x in ("--set", o)]]
META = [
    "task.data=digits",
    "task.steps=2",
    "task.unroll=1",
    "task.public_size=100",
    "meta.trajectories=2",
    "meta.validate_every=1",
    "meta.threads=1",
]


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and mtime (what "nothing written" compares)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv, capsys, *words):
    """``argv`` ends in exit code 2 with one ``byzlearn: error:`` line that contains every one of ``words``."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("byzlearn: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def stopped_run(root: Path, name: str = "r") -> Path:
    """A run folder stopped at round 2 of 4, with its checkpoint."""
    assert Run.create(C.load(None, QUICK), root / name).execute(progress=False, stop_after=2) is None
    return root / name


class Marker:
    """Unpickling this writes the file ``pwned``: a checkpoint crafted to run code."""

    def __reduce__(self):
        return (Path.write_text, (Path("pwned"), "code ran"))


# -- checkpoints cannot run code ------------------------------------------------------------------------
def test_a_crafted_run_checkpoint_is_refused_and_runs_nothing(here, capsys):
    r = stopped_run(here)
    torch.save({"simulator": Marker(), "elapsed": 0.0, "loss_sum": 0.0, "loss_count": 0}, r / "checkpoint.pt")
    before = files(r)
    refused(["run", "--quiet", "--resume", "r"], capsys, "r/checkpoint.pt", "refused", "could run code")
    assert not (here / "pwned").exists() and files(r) == before


def test_a_crafted_meta_checkpoint_is_refused_and_runs_nothing(here, capsys):
    (here / "m").mkdir()
    torch.save({"config": Marker()}, here / "m" / "meta_checkpoint.pt")
    refused(
        ["meta-train", "--quiet", "--out", "m", "--resume", *[x for o in META for x in ("--set", o)]],
        capsys,
        "meta_checkpoint.pt",
        "refused",
    )
    assert not (here / "pwned").exists()


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["optimizer.name=adam"],
        ["optimizer.name=acclip"],
        ["optimizer.name=clipped_sgd", "optimizer.momentum=0.9"],
        ["workers.byzantine=2", "aggregator.name=centered_clipping", "attack.name=mimic"],
        ["workers.byzantine=2", "attack.name=alie_optimal", "aggregator.name=trimmed_mean", 'aggregator.pre=[{name = "bucketing", s = 2}]'],
        ["workers.momentum=0.9", "workers.byzantine=1", "attack.name=ipm_optimal"],
        ["train.algorithm=fedavg", "fedavg.local_steps=2", "fedavg.fraction=0.5"],
        ["aggregator.name=draco_repetition", "aggregator.s=1", "workers.n=9", "workers.byzantine=1", "attack.name=constant"],
        ["aggregator.name=zeno", "data.public_size=100", "workers.byzantine=1", "attack.name=sign_flip"],
        ["aggregator.name=learned", f"aggregator.path={json.dumps(str(AGGREGATOR))}"],
    ],
)
def test_every_kind_of_checkpoint_loads_safely_and_resumes_exactly(extra, tmp_path):
    """Generators, optimiser, aggregator, attack and momentum state are tensors and plain values: the
    weights_only loader takes them, and the resumed run ends where the uninterrupted one does."""
    from byzlearn.experiments.runner import load_checkpoint

    cfg = C.load(None, QUICK + extra)
    Run.create(cfg, tmp_path / "full").execute(progress=False)
    assert Run.create(cfg, tmp_path / "cut").execute(progress=False, stop_after=2) is None
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["simulator"]["round"] == 2
    Run.resume(tmp_path / "cut").execute(progress=False)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["simulator"]["theta"] for d in ("full", "cut"))
    assert torch.equal(a, b)


def test_the_meta_training_checkpoint_loads_safely(tmp_path):
    from byzlearn.checkpoints import load_meta_checkpoint
    from byzlearn.learned.meta_train import load_config, meta_train

    cfg = load_config(None, META + ["meta.trajectories=3"])
    assert meta_train(cfg, tmp_path / "m", progress=False, stop_after=1) is None
    ck = load_meta_checkpoint(tmp_path / "m" / "meta_checkpoint.pt")
    assert ck["next"] == 2 and isinstance(ck["rng"], torch.Tensor)


# -- --set values, config files, --out ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "item, words",
    [
        ("aggregator.pre=5", ["aggregator.pre", "list"]),
        ("aggregator.pre=[5]", ["aggregator.pre[0]"]),
        ("optimizer.betas=[nan, 0.9]", ["optimizer.betas[0]", "nan"]),
        ("optimizer.lr=-1", ["optimizer.lr", ">= 0"]),
        ("optimizer.lr=nan", ["optimizer.lr", "nan"]),
        ("optimizer.lr=inf", ["optimizer.lr", "finite"]),
        ("fedavg.local_lr=nan", ["fedavg.local_lr"]),
        ("train.seed=1180591620717411303424", ["train.seed", "64-bit"]),
        ("train.seed=4611686018427387904", ["train.seed", "2^40"]),
        ("workers.batch_size=100000000", ["workers.batch_size"]),
        ("optimizer.betas=[0.9]", ["optimizer.betas", "two numbers"]),
        ("train.threads=100000", ["train.threads"]),
        ("data.labels_per_worker=-1", ["data.labels_per_worker"]),
        ("data.alpha=inf", ["data.alpha"]),
    ],
)
def test_bad_set_values_are_one_line_errors_before_the_run_folder(item, words, here, capsys):
    extra = ["--set", "optimizer.name=adam"] if item.startswith("optimizer.betas") else []
    refused([*RUN, *extra, "--set", item], capsys, *words)
    assert not (here / "out").exists()


@pytest.mark.parametrize(
    "sets, words",
    [
        (["workers.byzantine=9", "attack.name=alie"], ["ALIE", "attack.z"]),
        (["workers.byzantine=3", "attack.name=learned_whitebox"], ["learned_whitebox", "'mean'"]),
        (["model.name=attention"], ["model 'attention'", "model.name"]),
    ],
)
def test_attack_and_model_mismatches_stop_before_the_run_folder(sets, words, here, capsys):
    refused([*RUN, *[x for o in sets for x in ("--set", o)]], capsys, *words)
    assert not (here / "out").exists()


def test_the_command_prints_one_line_and_exits_2(here):
    r = subprocess.run(
        [sys.executable, "-m", "byzlearn", "run", "--set", "optimizer.lr=-1", "--out", "x"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith("byzlearn: error: optimizer.lr = -1") and not (here / "x").exists()


@pytest.mark.parametrize(
    "content, words",
    [
        (bytes(range(256)) * 4, ["cfg.toml", "UTF-8"]),
        ("# caf\xe9\n[train]\nrounds = 2\n".encode("latin-1"), ["cfg.toml", "UTF-8"]),
        (None, ["cfg.toml", "folder"]),
        ("[data]\nname = " + "[" * 3000 + "]" * 3000 + "\n", ["cfg.toml", "deeply"]),
        ("train = 5\ntask = 5\n", ["must be a table"]),
    ],
)
@pytest.mark.parametrize("command", [["run"], ["matrix"], ["meta-train"]])
def test_bad_config_files_are_named(command, content, words, here, capsys):
    if content is None:
        (here / "cfg.toml").mkdir()
    else:
        (here / "cfg.toml").write_bytes(content.encode() if isinstance(content, str) else content)
    sets = ["--set", "train.rounds=2"] if command != ["meta-train"] else ["--set", "task.steps=2"]
    refused([*command, "cfg.toml", "--out", "out", *sets], capsys, *words)
    assert not (here / "out").exists()


@pytest.mark.parametrize(
    "command", [["run", "--quiet"], ["matrix", "--quiet"], ["meta-train", "--quiet", "--set", "task.data=digits"], ["demo", "--quiet"]]
)
@pytest.mark.parametrize("out", ["taken", "taken/sub"])
def test_out_naming_a_file_is_refused(command, out, here, capsys):
    (here / "taken").write_text("x")
    refused([*command, "--out", out], capsys, "--out", "file")
    assert (here / "taken").read_text() == "x"


def test_matrix_lists_are_checked_before_the_folder(here, capsys):
    for item, word in [
        ("matrix.byzantine=5", "matrix.byzantine"),
        ("matrix.data=[5]", "matrix.data"),
        ("matrix.seeds=[-1]", "matrix.seeds"),
    ]:
        refused(["matrix", "--quiet", "--out", "m", "--set", item], capsys, word)
    refused(
        ["matrix", "--quiet", "--out", "m", "--set", "data.name=mnist", "--set", "data.download=false", "--set", 'data.data_dir="nowhere"'],
        capsys,
        "mnist",
    )
    assert not (here / "m").exists()


def test_meta_training_values_are_checked(here, capsys):
    sets = [x for o in META for x in ("--set", o)]
    for item, word in [
        ("meta.lr=nan", "meta.lr"),
        ("task.server_lr=-1", "task.server_lr"),
        ("aggregator.hidden=0", "aggregator.hidden"),
        ("meta.lr=inf", "meta.lr"),
    ]:
        refused(["meta-train", "--quiet", "--out", "m", *sets, "--set", item], capsys, word)
    refused(["meta-train", "--quiet", "--out", "m", *sets, "--resume"], capsys, "meta_checkpoint.pt", "does not exist")
    assert not (here / "m").exists()


# -- resume --------------------------------------------------------------------------------------------
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _short_theta(p: Path) -> None:
    ck = torch.load(p, weights_only=True)
    ck["simulator"]["theta"] = ck["simulator"]["theta"][:3].clone()
    torch.save(ck, p)


@pytest.mark.parametrize(
    "spoil, words",
    [
        (_truncate, ["r/checkpoint.pt", "truncated"]),
        (lambda p: p.write_bytes(b""), ["r/checkpoint.pt"]),
        (lambda p: p.write_bytes(os.urandom(500)), ["r/checkpoint.pt"]),
        (lambda p: torch.save({"foo": 1}, p), ["r/checkpoint.pt", "not a byzlearn run checkpoint"]),
        (lambda p: (p.unlink(), p.mkdir()), ["r/checkpoint.pt", "folder"]),
        (_short_theta, ["r/checkpoint.pt", "does not fit"]),
        (lambda p: (p.parent / "metrics.jsonl").write_text("{oops\n"), ["metrics.jsonl", "line 1"]),
    ],
)
def test_corrupt_checkpoints_are_named_and_nothing_changes(spoil, words, here, capsys):
    r = stopped_run(here)
    spoil(r / "checkpoint.pt")
    before = files(r)
    refused(["run", "--quiet", "--resume", "r"], capsys, *words)
    assert files(r) == before


def test_resuming_a_folder_without_checkpoint_is_an_error(here, capsys):
    r = stopped_run(here)
    (r / "checkpoint.pt").unlink()
    refused(["run", "--quiet", "--resume", "r"], capsys, "no checkpoint.pt", "--out")
    assert not (r / "summary.json").exists()


def test_resuming_a_finished_run_changes_nothing(here, capsys):
    Run.create(C.load(None, QUICK), here / "r").execute(progress=False)
    before = files(here / "r")
    assert main(["run", "--quiet", "--resume", "r"]) == 0
    assert "finished" in capsys.readouterr().out
    assert files(here / "r") == before


def test_launch_checks_before_any_process_starts(here, capsys, monkeypatch):
    import byzlearn.distributed.launcher as launcher

    calls = []
    monkeypatch.setattr(launcher, "launch", lambda *a, **k: calls.append((a, k)) or 0)
    r = stopped_run(here)
    (r / "checkpoint.pt").unlink()
    refused(["launch", "--resume", "r"], capsys, "no checkpoint.pt")
    refused(
        ["launch", "-n", "3", "--set", "data.name=mnist", "--set", "data.download=false", "--set", 'data.data_dir="nowhere"', "--out", "d"],
        capsys,
        "mnist",
    )
    assert calls == [] and not (here / "d").exists() and not (r / "logs").exists()
    assert main(["launch", "-n", "3", "--out", "d", "--master-addr", "10.1.2.3", "--set", "train.rounds=2"]) == 0
    assert calls[-1][1]["master_addr"] == "10.1.2.3"
    assert main(["launch", "-n", "3", "--out", "d"]) == 0
    assert calls[-1][1]["master_addr"] is None  # the launcher's default: BYZLEARN_MASTER_ADDR, else 127.0.0.1


# -- learned aggregators and data files -----------------------------------------------------------------------
def _card(edit):
    def spoil(d: Path) -> None:
        card = json.loads((d / "card.json").read_text())
        edit(card)
        (d / "card.json").write_text(json.dumps(card))

    return spoil


def _weights(edit):
    def spoil(d: Path) -> None:
        w = load_file(str(d / "aggregator.safetensors"))
        edit(w)
        save_file(w, str(d / "aggregator.safetensors"))

    return spoil


@pytest.mark.parametrize(
    "spoil, words",
    [
        (lambda d: (d / "card.json").write_bytes(os.urandom(300)), ["card.json"]),
        (lambda d: (d / "card.json").write_text("[1, 2]"), ["card.json", "JSON object"]),
        (_card(lambda c: c.pop("network")), ["network"]),
        (_card(lambda c: c["network"].update(hidden="x")), ["network.hidden"]),
        (_card(lambda c: c["network"].update(workers=5)), ["aggregator.safetensors", "shape"]),
        (_card(lambda c: c.pop("p")), ["p = None"]),
        (_card(lambda c: c.update(preprocess="nope")), ["preprocess"]),
        (_card(lambda c: c.update(output="nope")), ["output"]),
        (_card(lambda c: c.pop("probe_lr")), ["probe_lr"]),
        (lambda d: (d / "aggregator.safetensors").write_bytes(os.urandom(300)), ["aggregator.safetensors", "safetensors"]),
        (_weights(lambda w: w.update({k: torch.full_like(v, float("nan")) for k, v in w.items()})), ["NaN"]),
        (_weights(lambda w: w.pop(next(iter(w)))), ["missing"]),
        (_weights(lambda w: w.update({k: v.to(torch.int32) for k, v in w.items()})), ["floating point"]),
    ],
)
def test_corrupted_learned_aggregator_folders_are_named(spoil, words, here, capsys):
    shutil.copytree(AGGREGATOR, here / "agg")
    spoil(here / "agg")
    refused([*RUN, "--set", "aggregator.name=learned", "--set", "aggregator.path=agg"], capsys, *words)
    refused(["meta-validate", "agg"], capsys, *words)
    assert not (here / "out").exists()


def _idx(dims: tuple[int, ...]) -> bytes:
    import struct

    n = int(torch.tensor(dims).prod())
    return bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}i", *dims) + bytes(n)


def test_data_files_without_images_are_refused_before_the_run_folder(here, capsys):
    (here / "mn").mkdir()
    for name, dims in [
        ("train-images-idx3-ubyte", (32, 28, 28)),
        ("train-labels-idx1-ubyte", (32,)),
        ("t10k-images-idx3-ubyte", (0, 28, 28)),
        ("t10k-labels-idx1-ubyte", (0,)),
    ]:
        (here / "mn" / name).write_bytes(_idx(dims))
    refused(
        [*RUN, "--set", "data.name=mnist", "--set", "data.download=false", "--data-dir", "mn"],
        capsys,
        "t10k-images-idx3-ubyte",
        "no pixels",
    )
    (here / "cf").mkdir()
    for i in range(1, 6):
        (here / "cf" / f"data_batch_{i}.bin").write_bytes(bytes(3073) * 2)
    (here / "cf" / "test_batch.bin").mkdir()
    refused([*RUN, "--set", "data.name=cifar10", "--set", "data.download=false", "--data-dir", "cf"], capsys, "test_batch.bin")
    assert not (here / "out").exists()
