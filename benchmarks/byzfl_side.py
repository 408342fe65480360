"""Run ByzFL 0.0.11's own benchmark training for selected cells, side by side with byzlearn.

Runs under the side environment made by ``benchmarks/byzfl_env.sh`` (``/work/byzfl-venv``); it does
NOT import byzlearn. Usage::

    bash benchmarks/byzfl_env.sh                       # once: creates or checks /work/byzfl-venv
    /work/byzfl-venv/bin/python benchmarks/byzfl_side.py --list
    /work/byzfl-venv/bin/python benchmarks/byzfl_side.py --cells 'trmean-signflip-*' --seeds 0 \
        --steps 800 --out docs/reproductions/byzfl-benchmark/byzfl_runs.json

What runs is ByzFL's own code path, as ``byzfl.run_benchmark`` runs it:

* the per-run config dicts come from ``byzfl.benchmark.benchmark.default_config`` with only the keys
  the cell changes overridden (``model.name = "fc_mnist"``, ``benchmark_config.device = "cpu"``,
  ``f``, the gamma list, aggregator / attack lists, ``nb_steps``, ``results_directory`` and
  ``data_folder``), expanded by the same chain of ByzFL helpers, in the same order, that
  ``run_benchmark`` applies to ``config.json``: ``ensure_optional_config_parameters``,
  ``generate_all_combinations(data, ["pre_aggregators", "milestones"])``, ``ensure_key_parameters``,
  ``set_tolerated_f_equal_to_real_f``, ``set_declared_as_aggregation_parameter``,
  ``compute_number_of_workers``, ``delegate_training_seeds``, ``delegate_data_distribution_seeds``;
* each run is ``byzfl.benchmark.train.start_training(params)``, unmodified: ByzFL's ParamsManager,
  FileManager, ``random_split`` into train/validation, DataDistributor, Client, Server (robust
  aggregator + pre-aggregators), ByzantineClient, the DSGD loop, its evaluations and its timer. The
  accuracies and the training time are read back from the files ByzFL writes
  (``val_accuracy_*.txt``, ``test_accuracy_*.txt``, ``train_loss_*.txt``, ``train_time_*.txt``).

What is bypassed, exactly:

1. ``run_benchmark()`` itself is not called: it reads ``./config.json``, fans the runs out over a
   ``multiprocessing.Pool`` and ends with the hyper-parameter selection. This script calls the same
   expansion helpers (above) and then ``start_training`` once per run, sequentially, in this process,
   so that 1 thread can be enforced and each finished run is saved at once.
2. torchvision. ``byzfl/benchmark/train.py`` does ``from torchvision import datasets, transforms``;
   the torchvision wheel next to this torch does not import. Before ByzFL is imported, a stub
   ``torchvision`` package is put in ``sys.modules`` (the idea of ``benchmarks/aggregators.py``):
   every attribute is an inert placeholder (train.py builds CIFAR / flip transforms at import time)
   except these minimal stand-ins, the only torchvision pieces an MNIST run touches:

   * ``torchvision.datasets.MNIST(root, train, download, transform)``: reads the gzipped IDX files
     ``{root}/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` with numpy (``download`` is ignored;
     nothing is fetched). Like torchvision's class it has ``.data`` (uint8 ``[N, 28, 28]``),
     ``.targets`` (int64 ``[N]``), a settable ``.transform``, and ``__getitem__`` returning
     ``(transform(image), int(target))``; torchvision hands the transform a PIL image of the uint8
     array, here the transform gets the uint8 tensor itself.
   * ``torchvision.transforms.Compose / ToTensor / Normalize``: ``ToTensor`` turns the uint8
     ``[28, 28]`` image into float32 ``[1, 28, 28]`` divided by 255, ``Normalize(mean, std)`` does
     ``x.sub_(mean).div_(std)`` per channel in float32 -- the same arithmetic as torchvision's. The
     constants are ByzFL's own: train.py builds ``transforms_mnist = Compose([ToTensor(),
     Normalize((0.1307,), (0.3081,))])`` with these stand-ins and uses it for train, validation
     and test.
3. Measurement only (no change of behaviour): ``Server._compute_accuracy`` is wrapped with a timer
   so the in-loop evaluation time can be subtracted from ByzFL's ``train_time`` (which includes the
   16 in-loop evaluations of validation + test) to give training-only steps/s as well.

Per run it records the cell (aggregator, pre-aggregators with their effective parameters, attack and
its effective parameters, f, gamma), seeds, the validation and test accuracy at every evaluation point
(steps 0, 50, ..., and the end, as ByzFL records them, 4 decimals), final / best test accuracy,
ByzFL's training-loop time and steps/s, the evaluation time inside it, the whole call's wall time,
the mean honest training loss per 50-step window, and the ByzFL / torch versions, machine and threads.
The output JSON is rewritten (atomically) after every run; a run already in it (same cell, seeds,
steps) is skipped, so a killed job resumes where it stopped.
"""

import argparse
import copy
import fnmatch
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")  # byzfl imports matplotlib / seaborn at import time

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_DATA = "/work/shared/data/mnist"
DEFAULT_OUT = "docs/reproductions/byzfl-benchmark/byzfl_runs.json"
BYZFL_VERSION_EXPECTED = "0.0.11"

# ------------------------------------------------------------------------------------------- cells
# name -> overrides of ByzFL's default_config. Everything not named stays ByzFL's default.
AGGREGATORS = {"trmean": "TrMean", "gm": "GeometricMedian"}
ATTACKS = {"signflip": "SignFlipping", "optipm": "Optimal_InnerProductManipulation", "optalie": "Optimal_ALittleIsEnough"}
F_GAMMA = [(2, 0.66), (4, 0.33), (1, 1.0), (3, 0.0)]
CELLS = {
    f"{a}-{k}-f{f}-g{g}": {"aggregator": AGGREGATORS[a], "attack": ATTACKS[k], "f": f, "gamma": g}
    for (f, g) in F_GAMMA
    for a in AGGREGATORS
    for k in ATTACKS
}


# -------------------------------------------------------------------------------- torchvision stub
_MNIST_CACHE = {}


def _read_idx(path):
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    return data.reshape(dims)


class _MNIST(torch.utils.data.Dataset):
    """Stand-in for ``torchvision.datasets.MNIST`` reading the gzipped IDX files under ``root``."""

    def __init__(self, root, train=True, download=False, transform=None, target_transform=None):
        prefix = "train" if train else "t10k"
        key = (str(root), prefix)
        if key not in _MNIST_CACHE:
            images = _read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
            labels = _read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
            _MNIST_CACHE[key] = (torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
        data, targets = _MNIST_CACHE[key]
        self.root, self.train = root, train
        self.data = data
        self.targets = targets.clone()
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


class _Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class _ToTensor:
    """uint8 ``[H, W]`` -> float32 ``[1, H, W]`` in [0, 1] (torchvision: ``.to(float).div(255)``)."""

    def __call__(self, img):
        if img.dtype != torch.uint8 or img.dim() != 2:
            raise TypeError("this ToTensor stand-in takes a uint8 [H, W] MNIST image")
        return img.unsqueeze(0).contiguous().to(dtype=torch.get_default_dtype()).div(255)


class _Normalize:
    """``(x - mean) / std`` per channel, as torchvision's ``F.normalize`` (float32, in place)."""

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor):
        if not self.inplace:
            tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


def install_torchvision_stub():
    class _Placeholder:
        def __init__(self, name):
            self._name = name

        def __call__(self, *a, **k):  # byzfl builds unused transforms at import time: stay inert
            return _Placeholder(f"{self._name}()")

        def __getattr__(self, item):
            return _Placeholder(f"{self._name}.{item}")

    class _StubModule(types.ModuleType):
        def __getattr__(self, item):
            if item.startswith("__"):
                raise AttributeError(item)
            return _Placeholder(f"{self.__name__}.{item}")

    for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[key]
    root = _StubModule("torchvision")
    root.__path__ = []
    sys.modules["torchvision"] = root
    for sub in ("datasets", "transforms", "models", "io", "ops", "utils"):
        mod = _StubModule(f"torchvision.{sub}")
        setattr(root, sub, mod)
        sys.modules[f"torchvision.{sub}"] = mod
    root.datasets.MNIST = _MNIST
    root.transforms.Compose = _Compose
    root.transforms.ToTensor = _ToTensor
    root.transforms.Normalize = _Normalize


def import_byzfl():
    install_torchvision_stub()
    import importlib
    from importlib.metadata import version

    import byzfl  # noqa: F401

    # by module path: byzfl's ``from .benchmark import *`` rebinds the attribute ``byzfl.benchmark``
    bench = importlib.import_module("byzfl.benchmark.benchmark")
    train = importlib.import_module("byzfl.benchmark.train")

    return byzfl, bench, train, version("byzfl")


# ------------------------------------------------------------------------------------ config build
def build_params(bench, cell, seed, steps, data_folder, results_dir, dd_seed=0):
    """ByzFL's default_config with the cell's overrides, expanded as run_benchmark does."""
    data = copy.deepcopy(bench.default_config)
    bc = data["benchmark_config"]
    bc["device"] = "cpu"
    bc["nb_steps"] = int(steps)
    bc["f"] = [cell["f"]]
    bc["training_seed"] = int(seed)
    bc["nb_training_seeds"] = 1
    bc["data_distribution_seed"] = int(dd_seed)
    bc["nb_data_distribution_seeds"] = 1
    assert bc["data_distribution"][0]["name"] == "gamma_similarity_niid"
    bc["data_distribution"][0]["distribution_parameter"] = [float(cell["gamma"])]
    data["model"]["name"] = "fc_mnist"
    data["aggregator"] = [a for a in data["aggregator"] if a["name"] == cell["aggregator"]]
    data["attack"] = [a for a in data["attack"] if a["name"] == cell["attack"]]
    if len(data["aggregator"]) != 1 or len(data["attack"]) != 1:
        raise ValueError(f"cell not in ByzFL's default_config: {cell}")
    ev = data["evaluation_and_results"]
    ev["data_folder"] = str(data_folder)
    ev["results_directory"] = str(results_dir)

    data = bench.ensure_optional_config_parameters(data)
    dict_list = bench.generate_all_combinations(data, ["pre_aggregators", "milestones"])
    dict_list = bench.ensure_key_parameters(dict_list)
    dict_list = bench.set_tolerated_f_equal_to_real_f(dict_list)  # no tolerated_f in the config
    dict_list = bench.set_declared_as_aggregation_parameter(dict_list)
    dict_list = bench.compute_number_of_workers(dict_list)
    dict_list = bench.delegate_training_seeds(dict_list)
    dict_list = bench.delegate_data_distribution_seeds(dict_list)
    if len(dict_list) != 1:
        raise RuntimeError(f"expected one run, ByzFL's expansion gave {len(dict_list)}")
    return dict_list[0]


def effective_parameters(byzfl, params):
    """The parameters ByzFL's objects end up with (explicit + constructor defaults)."""
    ra = byzfl.RobustAggregator(copy.deepcopy(params["aggregator"]), copy.deepcopy(params["pre_aggregators"]))

    def attrs(obj):
        return {k: v for k, v in vars(obj).items() if isinstance(v, (int, float, str, bool))}

    attack_params = copy.deepcopy(params["attack"]["parameters"])
    attack_params["aggregator_info"] = copy.deepcopy(params["aggregator"])
    attack_params["pre_agg_list"] = copy.deepcopy(params["pre_aggregators"])
    attack_params["f"] = params["benchmark_config"]["f"]
    byz = byzfl.ByzantineClient({"name": params["attack"]["name"], "f": params["benchmark_config"]["f"], "parameters": attack_params})
    attack = {"name": params["attack"]["name"], **attrs(byz.attack)}
    if hasattr(byz.attack, "agg"):
        attack["agg"] = {"name": type(byz.attack.agg).__name__, **attrs(byz.attack.agg)}
        attack["pre_agg_list"] = [{"name": type(p).__name__, **attrs(p)} for p in byz.attack.pre_agg_list]
    return {
        "aggregator": {"name": type(ra.aggregator).__name__, **attrs(ra.aggregator)},
        "pre_aggregators": [{"name": type(p).__name__, **attrs(p)} for p in ra.pre_agg_list],
        "attack": attack,
        "byzantine_vectors": f"one vector computed per step, repeated f={byz.f} times",
    }


# ---------------------------------------------------------------------------------------- one run
def _load_txt(path):
    return np.atleast_1d(np.loadtxt(path, delimiter=",")).tolist()


def run_one(byzfl, train, params, keep_dir=None):
    eval_times = []
    server_cls = byzfl.Server
    original = server_cls._compute_accuracy

    def timed(self, loader):
        t0 = time.perf_counter()
        try:
            return original(self, loader)
        finally:
            eval_times.append(time.perf_counter() - t0)

    server_cls._compute_accuracy = timed
    t0 = time.perf_counter()
    try:
        # deep copy: start_training writes the attack's aggregator / pre-aggregator objects into
        # params["attack"]["parameters"] (ByzantineClient), which would not serialise
        train.start_training(copy.deepcopy(params))
    finally:
        server_cls._compute_accuracy = original
    wall = time.perf_counter() - t0

    res_root = Path(params["evaluation_and_results"]["results_directory"])
    folders = [p for p in res_root.iterdir() if p.is_dir()]
    if len(folders) != 1:
        raise RuntimeError(f"expected one ByzFL result folder in {res_root}, got {folders}")
    folder = folders[0]
    ts = params["benchmark_config"]["training_seed"]
    dd = params["benchmark_config"]["data_distribution_seed"]
    tag = f"tr_seed_{ts}_dd_seed_{dd}.txt"
    val = _load_txt(folder / f"val_accuracy_{tag}")
    test = _load_txt(folder / f"test_accuracy_{tag}")
    loss = np.asarray(_load_txt(folder / f"train_loss_{tag}"))
    train_time = float(np.loadtxt(folder / f"train_time_{tag}", delimiter=","))
    if keep_dir is not None:
        shutil.copytree(folder, Path(keep_dir) / folder.name, dirs_exist_ok=True)

    steps = params["benchmark_config"]["nb_steps"]
    delta = params["evaluation_and_results"]["evaluation_delta"]
    eval_steps = list(range(0, steps, delta)) + [steps]
    # the last two accuracy calls (validation, test) come after ByzFL's timer stops
    eval_in_loop = float(sum(eval_times[:-2]))
    windows = [float(np.mean(loss[i : i + delta])) for i in range(0, steps, delta)]
    best_i = int(np.argmax(test))
    return {
        "folder": folder.name,
        "eval_steps": eval_steps,
        "val_accuracy": val,
        "test_accuracy": test,
        "final_val_accuracy": val[-1],
        "final_test_accuracy": test[-1],
        "best_test_accuracy": test[best_i],
        "best_test_step": eval_steps[best_i],
        "best_val_accuracy": max(val),
        "train_loss_mean_per_window": windows,
        "train_loss_window": delta,
        "train_time_s": train_time,
        "steps_per_s": steps / train_time,
        "eval_time_in_loop_s": eval_in_loop,
        "train_only_steps_per_s": steps / (train_time - eval_in_loop),
        "n_accuracy_calls": len(eval_times),
        "total_wall_s": wall,
    }


# ------------------------------------------------------------------------------------------- main
def machine_info():
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "arch": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def run_key(rec):
    return (rec["cell"]["name"], rec["training_seed"], rec["data_distribution_seed"], rec["nb_steps"])


def save(out, doc):
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)


def select_cells(spec):
    if spec in ("all", "*"):
        return list(CELLS)
    names = []
    for pat in spec.split(","):
        hits = [n for n in CELLS if fnmatch.fnmatch(n, pat.strip())]
        if not hits:
            raise SystemExit(f"no cell matches {pat!r}; --list shows them")
        names += [h for h in hits if h not in names]
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", default="all", help="comma-separated cell names or fnmatch patterns, or 'all'")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated (data seed stays 0)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--data", default=DEFAULT_DATA, help="folder with the gzipped MNIST IDX files")
    ap.add_argument("--keep-results", default=None, help="copy ByzFL's result folders here")
    ap.add_argument("--list", action="store_true", help="list the cells and exit")
    ap.add_argument("--check", action="store_true", help="import ByzFL under the stub, print versions, exit")
    ap.add_argument("--dry-run", action="store_true", help="print the expanded ByzFL params of each run")
    args = ap.parse_args(argv)

    if args.list:
        for n, c in CELLS.items():
            print(n, c)
        return 0
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    byzfl, bench, train, byzfl_version = import_byzfl()
    if args.check:
        print(f"byzfl {byzfl_version}, torch {torch.__version__}, numpy {np.__version__}: ok")
        return 0 if byzfl_version == BYZFL_VERSION_EXPECTED else 1

    names = select_cells(args.cells)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"runs": []}
    doc["meta"] = {
        "what": "ByzFL's own benchmark training (byzfl.benchmark.train.start_training) on CPU",
        "script": "benchmarks/byzfl_side.py",
        "byzfl_version": byzfl_version,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "data": str(args.data),
        "accuracy_precision": "4 decimals, as ByzFL writes its result files",
    }
    done = {run_key(r) for r in doc["runs"]}
    plan = [(n, s) for s in seeds for n in names]  # seed-major: every cell's first seed comes first
    print(f"{len(plan)} runs planned, output {out}", flush=True)
    for i, (name, seed) in enumerate(plan):
        cell = CELLS[name]
        key = (name, seed, 0, args.steps)
        if key in done:
            print(f"[{i + 1}/{len(plan)}] {name} seed {seed}: already in {out}, skipped", flush=True)
            continue
        with tempfile.TemporaryDirectory(prefix="byzfl_side_") as tmp:
            params = build_params(bench, cell, seed, args.steps, args.data, tmp)
            if args.dry_run:
                print(json.dumps(params, indent=1))
                continue
            eff = effective_parameters(byzfl, params)
            print(f"[{i + 1}/{len(plan)}] {name} seed {seed} ...", flush=True)
            started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            res = run_one(byzfl, train, params, args.keep_results)
        rec = {
            "cell": {"name": name, **cell},
            "training_seed": seed,
            "data_distribution_seed": params["benchmark_config"]["data_distribution_seed"],
            "nb_steps": args.steps,
            "effective_parameters": eff,
            "byzfl_params": params,
            "started": started,
            "byzfl_version": byzfl_version,
            "torch_threads": torch.get_num_threads(),
            **res,
        }
        rec["byzfl_params"]["evaluation_and_results"]["results_directory"] = "<temporary>"
        doc["runs"].append(rec)
        save(out, doc)
        print(
            f"    test final {res['final_test_accuracy']:.4f} best {res['best_test_accuracy']:.4f} "
            f"(step {res['best_test_step']}); ByzFL train_time {res['train_time_s']:.1f}s = "
            f"{res['steps_per_s']:.2f} steps/s ({res['train_only_steps_per_s']:.2f} without in-loop eval); "
            f"wall {res['total_wall_s']:.1f}s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
