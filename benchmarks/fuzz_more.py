"""Hand-written cases of ``fuzz_cli.py``: combinations, files, ``--out``, resumes, learned folders, data, other commands."""

from __future__ import annotations

import gzip

from fuzz_cases import (
    BAD_FILES,
    BIG,
    LAUNCH,
    META,
    NOISE,
    RUN,
    Case,
    _pop,
    _set,
    _sets,
    bad_file,
    both,
    cifar_dir,
    crafted_pickle,
    edit_checkpoint,
    idx_bytes,
    learned,
    learned_variants,
    mkdir,
    mnist_dir,
    replace_file,
    run_folder,
    write,
)

MATRIX_FILE = (
    "matrix",
    "--quiet",
    "--out",
    "out",
    *_sets("train.rounds=2", "train.eval_every=1", "train.threads=1", "data.download=false"),
)
MATRIX = (*MATRIX_FILE, *_sets('matrix.aggregators=["mean"]', 'matrix.attacks=["none"]', "matrix.byzantine=[0]"))
TUNE = (
    "tune",
    "cfg.toml",
    "--quiet",
    "--out",
    "out",
    *_sets(
        "train.rounds=2",
        "train.eval_every=1",
        "train.threads=1",
        "data.download=false",
        "data.validation_size=100",
        'matrix.aggregators=["mean"]',
        'matrix.attacks=["none"]',
        "matrix.byzantine=[0]",
        "tune.lr=[0.1]",
    ),
)
EMPTY_TOML = write("cfg.toml", "")


def combos() -> list[Case]:
    sets = [
        ("model.name=attention",),
        ("data.name=sequence",),
        ("model.name=cnn_mnist",),
        ("model.name=cnn_cifar",),
        ("data.name=mnist",),
        ("data.name=cifar10",),
        ("data.name=fashion_mnist",),
        ("data.partition=labels", "data.labels_per_worker=11"),
        ("data.public_size=1437",),
        ("data.validation_size=1437",),
        ("data.public_size=1000", "data.validation_size=437"),
        ("workers.n=1437",),
        ("workers.n=1438",),
        ("workers.n=2000000000",),
        ("aggregator.name=zeno",),
        ("workers.byzantine=3", "attack.name=learned_whitebox"),
        ("attack.name=mimic",),
        ("workers.byzantine=9", "attack.name=alie"),
        ("aggregator.name=draco_repetition", "workers.n=10", "workers.byzantine=1"),
        ("aggregator.name=draco_cyclic", "workers.byzantine=1"),
        ("train.algorithm=fedavg", "aggregator.name=draco_cyclic", "workers.byzantine=1"),
        ("train.algorithm=fedavg", "workers.momentum=0.9"),
        ("optimizer.name=adam", "optimizer.betas=[0.9]"),
        ("optimizer.name=adam", "optimizer.betas=[2, 0.9]"),
        ("optimizer.name=adam", 'optimizer.betas=["a", "b"]'),
        ("optimizer.name=adam", "optimizer.betas=[nan, 0.9]"),
        ("optimizer.name=acclip", "optimizer.betas=[0.9, 0.99, 0.5]"),
        ("optimizer.name=adam", "optimizer.betas=[1e400, 0.9]"),
        ("aggregator.pre=5",),
        ('aggregator.pre="nnm"',),
        ("aggregator.pre=[5]",),
        ("aggregator.pre=[{}]",),
        ("aggregator.pre=[{name = 5}]",),
        ('aggregator.pre=[{name = "nope"}]',),
        ("aggregator.pre=[[1]]",),
        ('aggregator.pre=["nnm", "nnm"]',),
        ('aggregator.pre=[{name = "nnm", extra = 1}]',),
        ('aggregator.pre=[{name = "bucketing", s = 100}]',),
        ("train.device=cuda",),
        ("train.device=cuda:99",),
        ("train.device=tpu",),
        ('train.device=""',),
        ("train.device=meta",),
        ("train.device=cpu:0",),
        ("train.device=auto",),
        ("aggregator.name=learned",),
        ("aggregator.name=learned", "aggregator.path=5"),
        ("attack.name=nan", "workers.byzantine=3"),
        ("attack.name=inf", "workers.byzantine=3"),
        ("optimizer.lr=1e-320",),
        ("optimizer.lr=1e308",),
        ("fedavg.local_lr=nan", "train.algorithm=fedavg"),
        ("fedavg.local_lr=-1", "train.algorithm=fedavg"),
        ("workers.momentum=1",),
        ("data.gamma=2", "data.partition=gamma_similarity"),
        ("data.alpha=nan", "data.partition=dirichlet"),
        ("data.alpha=1e-300", "data.partition=dirichlet"),
        ("train.threads=1000000000",),
        ("train.compile=1",),
        ("workers.byzantine_set=redraw", "data.shards=honest"),
    ]
    out = [Case("run combos", (*RUN, *_sets(*s)), must_fail="nan" in s[-1] or "local_lr=-1" in s[-1]) for s in sets]
    out += [Case("run combos", (*RUN, "--set", item)) for item in ("noequals", "a=1", ".x=1", "data.=1", "=5", "data.name=", "data.name")]
    out += [Case("run combos", (*RUN, "--device", d)) for d in ("cuda", "gpu", "")]
    out += [Case("run combos", (*RUN, "--data-dir", p), setup) for p, setup in (("missing", None), ("file", write("file", "x")))]
    out.append(Case("run combos", (*RUN, "--engine", "distributed")))
    return out


def config_files() -> list[Case]:
    out = []
    for what, content in BAD_FILES.items():
        setup = bad_file("cfg.toml", content)
        for base in (RUN, MATRIX, TUNE, META, LAUNCH):
            argv = base if base is TUNE else (*base, "cfg.toml")
            out.append(Case("config file", argv, setup, must_fail=what == "lr nan" and base is not META))
    out += [Case("config file", (cmd, "missing.toml", "--out", "out")) for cmd in ("run", "matrix", "tune", "meta-train", "launch")]
    out += [
        Case("config file", (*MATRIX_FILE, "cfg.toml"), write("cfg.toml", f"[matrix]\n{text}\n"))
        for text in (
            "aggregators = 5",
            "aggregators = [5]",
            "attacks = [{}]",
            "byzantine = [-1]",
            "byzantine = 3",
            "seeds = ['x']",
            "data = [5]",
            "data = [{nope = 1}]",
            "colour = 1",
            "honest = 0",
            "momentum = [nan]",
            "aggregators = []",
        )
    ]
    return out


def outs() -> list[Case]:
    file = inside = write("taken", "x")
    cmds = [
        ("run", "--quiet"),
        MATRIX[:2],
        ("tune", "cfg.toml", "--quiet"),
        META[:2],
        ("demo", "--quiet"),
        ("reproduce", "draco-table1", "--quick"),
        ("launch", "-n", "3"),
    ]
    out = []
    for cmd in cmds:
        setup = both(file, EMPTY_TOML) if cmd[0] == "tune" else file
        out.append(Case("out folders", (*cmd, "--out", "taken"), setup))
        out.append(Case("out folders", (*cmd, "--out", "taken/sub"), both(inside, EMPTY_TOML) if cmd[0] == "tune" else inside))
    out.append(Case("out folders", ("run", "--quiet", "--out", "r"), run_folder(True)))
    out.append(Case("out folders", ("launch", "-n", "3", "--out", "r"), run_folder(True)))
    out.append(Case("out folders", ("meta-validate", "agg", "--json", "d"), both(learned(), mkdir("d"))))
    out.append(Case("out folders", ("meta-validate", "agg", "--json", "taken/x.json"), both(learned(), file)))
    return out


def resumes() -> list[Case]:
    ck = "r/checkpoint.pt"
    variants = {
        "missing folder": None,
        "a file": write("r", "x"),
        "empty folder": mkdir("r"),
        "no checkpoint": both(run_folder(), lambda r: (r / ck).unlink()),
        "config garbage": both(run_folder(), write("r/config.toml", NOISE)),
        "config lr nan": both(run_folder(), replace_file("r/config.toml", lambda b: b.replace(b"lr = 0.1", b"lr = nan"))),
        "checkpoint empty": both(run_folder(), write(ck, b"")),
        "checkpoint random": both(run_folder(), write(ck, NOISE)),
        "checkpoint truncated": both(run_folder(), replace_file(ck, lambda b: b[: len(b) // 2])),
        "checkpoint a directory": both(run_folder(), lambda r: (r / ck).unlink(), mkdir(ck)),
        "checkpoint a dict": edit_checkpoint(lambda c: {"foo": 1}),
        "checkpoint a tensor": edit_checkpoint(lambda c: c["simulator"]["theta"]),
        "simulator empty": edit_checkpoint(lambda c: _set(c, "simulator", {})),
        "no elapsed": edit_checkpoint(lambda c: _pop(c, "elapsed")),
        "short theta": edit_checkpoint(lambda c: _set(c, "simulator.theta", c["simulator"]["theta"][:3].clone())),
        "NaN theta": edit_checkpoint(lambda c: _set(c, "simulator.theta", c["simulator"]["theta"].clone().fill_(float("nan")))),
        "round 'x'": edit_checkpoint(lambda c: _set(c, "simulator.round", "x")),
        "round -5": edit_checkpoint(lambda c: _set(c, "simulator.round", -5)),
        "round 99": edit_checkpoint(lambda c: _set(c, "simulator.round", 99)),
        "generator garbage": edit_checkpoint(lambda c: _set(c, "simulator.generators.sample", c["simulator"]["theta"])),
        "optimizer garbage": edit_checkpoint(lambda c: _set(c, "simulator.optimizer", {"state": 5})),
        "sampler wrong shape": edit_checkpoint(lambda c: _set(c, "simulator.sampler.order", c["simulator"]["theta"][:4].long())),
        "crafted pickle": both(run_folder(), crafted_pickle(ck)),
        "metrics garbage": both(run_folder(), write("r/metrics.jsonl", "{not json\n")),
        "metrics without round": both(run_folder(), write("r/metrics.jsonl", '{"x": 1}\n')),
    }
    must = ("no checkpoint", "crafted pickle", "config lr nan")
    out = [Case("resume", ("run", "--quiet", "--resume", "r"), s, must_fail=k in must) for k, s in variants.items()]
    for k in ("missing folder", "no checkpoint", "checkpoint truncated", "crafted pickle", "checkpoint a dict", "config garbage"):
        out.append(Case("resume", ("launch", "--quiet", "--resume", "r"), variants[k], must_fail=k in ("no checkpoint", "crafted pickle")))
    out += [
        Case("resume", ("run", "--resume", "r", "cfg.toml"), both(run_folder(), EMPTY_TOML)),
        Case("resume", ("run", "--resume", "r", "--set", "train.rounds=8"), run_folder()),
    ]
    meta_ck = "out/meta_checkpoint.pt"
    for what, setup in {
        "empty": write(meta_ck, b""),
        "random": write(meta_ck, NOISE),
        "a directory": mkdir(meta_ck),
        "crafted pickle": crafted_pickle(meta_ck),
        "none": mkdir("out"),
    }.items():
        out.append(Case("resume", (*META, "--resume"), both(mkdir("out"), setup), must_fail=what in ("crafted pickle", "none")))
    return out


def finished() -> list[Case]:
    """A finished run resumed: exit 0, nothing changed (the fuzzer checks the files for this area's ok cases too)."""
    return [
        Case("resume", ("run", "--quiet", "--resume", "r"), run_folder(True), unchanged=True),
        Case("resume", ("launch", "--quiet", "--resume", "r"), run_folder(True), unchanged=True),
    ]


def learned_folders() -> list[Case]:
    out = []
    agg = _sets("aggregator.name=learned", "aggregator.path=agg")
    for what, setup in learned_variants().items():
        out.append(Case("learned folder", (*RUN, *agg), setup, must_fail=what in ("NaN weights", "Inf weights")))
        out.append(
            Case(
                "learned folder",
                ("meta-validate", "agg", "--set", "meta.validate_steps=1", "--set", "task.data=digits"),
                setup,
                must_fail=what in ("NaN weights", "Inf weights"),
            )
        )
    for k, v in (("probe_lr", "nan"), ("probe_lr", "-1"), ("input_clip", "5"), ("max_ratio", "nan"), ("max_ratio", "0"), ("f", BIG)):
        out.append(Case("learned folder", (*RUN, *agg, "--set", f"aggregator.{k}={v}"), learned(), must_fail=v == "nan"))
    out.append(Case("learned folder", (*META, "--set", "meta.init=agg"), learned(weights=lambda w: _fill_nan(w)), must_fail=True))
    out.append(Case("learned folder", (*META, "--set", "meta.init=missing")))
    out.append(Case("learned folder", ("meta-validate", "agg", "--set", "aggregator.hidden=5"), learned()))
    out.append(Case("learned folder", ("meta-validate", "agg", "--set", "meta.validate_steps=nan"), learned(), must_fail=True))
    out.append(
        Case("learned folder", (*RUN, *agg, *_sets("workers.byzantine=3", "attack.name=learned_whitebox", "attack.steps=-1")), learned())
    )
    return out


def _fill_nan(w: dict) -> dict:
    k = next(iter(w))
    w[k] = w[k].clone().fill_(float("nan"))
    return w


def data_files() -> list[Case]:
    tr, tl, ti, te = "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
    mn = {
        "valid": {},
        "train images missing": {tr: b"<missing>"},
        "train images empty": {tr: b""},
        "train images truncated": {tr: idx_bytes((64, 28, 28))[:5000]},
        "random bytes": {tr: NOISE},
        "wrong magic": {tl: b"\x00\x00\x09\x01" + idx_bytes((64,))[4:]},
        "gz garbage": {tr: b"<missing>", tr + ".gz": NOISE},
        "gz truncated": {tr: b"<missing>", tr + ".gz": gzip.compress(idx_bytes((64, 28, 28)))[:20]},
        "0 train images": {tr: idx_bytes((0, 28, 28)), tl: idx_bytes((0,))},
        "0 test images": {ti: idx_bytes((0, 28, 28)), te: idx_bytes((0,))},
        "labels 12": {tl: idx_bytes((64,), 12)},
        "count mismatch": {tl: idx_bytes((60,))},
        "test 14x14": {ti: idx_bytes((16, 14, 14))},
        "labels 3-d": {tl: idx_bytes((64, 1, 1))},
        "images a directory": {tr: None},
        "0x0 images": {tr: idx_bytes((64, 0, 0)), ti: idx_bytes((16, 0, 0))},
    }
    out = [Case("data files", (*RUN, "--data-dir", "mn", "--set", "data.name=mnist"), mnist_dir(**o)) for o in mn.values()]
    out.append(Case("data files", (*RUN, "--data-dir", "mn", *_sets("data.name=mnist", "model.name=cnn_cifar")), mnist_dir()))
    rec = bytes([3]) + bytes(3072)
    cf = {
        "valid": {},
        "batch empty": {"data_batch_1.bin": b""},
        "batch truncated": {"data_batch_1.bin": rec[:1000]},
        "label 11": {"test_batch.bin": bytes([11]) + bytes(3072)},
        "batch a directory": {"data_batch_2.bin": None},
        "archive garbage": {"data_batch_1.bin": b"<missing>", "cifar-10-binary.tar.gz": NOISE},
    }
    out += [Case("data files", (*RUN, "--data-dir", "cf", "--set", "data.name=cifar10"), cifar_dir(**o)) for o in cf.values()]
    return out


def matrix_tune() -> list[Case]:
    out = []
    for key in ("aggregators", "attacks", "byzantine", "data", "seeds", "honest", "momentum", "colour"):
        for v in ("5", "[]", "[5]", "[nan]", "[-1]", f"[{BIG}]", "[{}]", '["x"]', "{a = 1}"):
            out.append(Case("matrix/tune", (*MATRIX, "--set", f"matrix.{key}={v}"), must_fail=v == "[nan]"))
    for key in ("lr", "momentum", "weight_decay", "colour"):
        for v in ("5", "[]", "[nan]", "[-1]", "[inf]", '["x"]', "[0.1, 0.1]", "[2]"):
            out.append(Case("matrix/tune", (*TUNE, "--set", f"tune.{key}={v}"), EMPTY_TOML, must_fail=v == "[nan]"))
    out.append(Case("matrix/tune", TUNE[:1] + TUNE[2:], EMPTY_TOML))
    out.append(Case("matrix/tune", (*MATRIX, "--set", "data.name=mnist")))
    out.append(Case("matrix/tune", (*MATRIX, "--jobs", "0")))
    out.append(Case("matrix/tune", (*MATRIX, "--jobs", "-3")))
    out.append(Case("matrix/tune", (*MATRIX, "--set", "optimizer.lr=nan"), must_fail=True))
    return out


def launch() -> list[Case]:
    base = ("launch", "--quiet", "--out", "out", *_sets("train.rounds=2", "train.threads=1", "data.download=false"))
    cases = [(*base, "-n", n) for n in ("0", "1", "-5", BIG, "x")]
    cases += [(*base, "-n", "3", "--max-restarts", m) for m in ("-1", BIG)]
    cases += [(*base, "-n", "3", "--master-addr", a) for a in ("999.0.0.1", "not-a-host.invalid", "8.8.8.8", "")]
    cases += [
        (*base, "-n", "3", "--device", "cuda"),
        (*base, "-n", "3", "--set", "workers.n=3"),
        (*base, "-n", "3", "--set", "optimizer.lr=nan"),
        (*base, "-n", "3", "--set", "data.name=mnist"),
        (*base, "-n", "3", "--set", "distributed.mode=decentralized", "--set", "workers.byzantine=1"),
    ]
    return [Case("launch", c, must_fail="nan" in " ".join(c)) for c in cases]


def others() -> list[Case]:
    return [
        Case("other commands", c)
        for c in (
            ("reproduce", "nope"),
            ("reproduce", "nope", "--quick", "--out", "x"),
            ("list", "extra"),
            ("nope",),
            ("meta-validate", "missing"),
            ("meta-validate", "agg", "--set", "nope.x=1"),
            ("run", "--resume"),
            ("demo", "--out", ""),
            ("meta-train", "--set", "meta.lr=nan"),
        )
    ] + [
        Case("other commands", ("meta-validate", "agg", "--set", s), learned(), must_fail="nan" in s)
        for s in ("meta.validate_steps=-1", "task.data=nope", "meta.seed=" + BIG, "task.server_lr=nan")
    ]


def more_cases() -> list[Case]:
    return (
        combos() + config_files() + outs() + resumes() + finished() + learned_folders() + data_files() + matrix_tune() + launch() + others()
    )
