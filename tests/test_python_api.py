"""The Python API on a user's own model and data: byzlearn.simulate / grid / forge, and the README's examples run verbatim."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset

import byzlearn
from byzlearn import config as C
from byzlearn.aggregators import functional as R
from byzlearn.attacks.omniscient import alie_vector
from byzlearn.data.user import as_dataset
from byzlearn.engine import make_simulator
from byzlearn.experiments.runner import CHECKPOINT, Run
from byzlearn.experiments.runner import run as run_registered
from byzlearn.models.zoo import logreg
from byzlearn.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Use from Python"


def blobs(m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in 4 dimensions, 2 classes (separable up to a few samples)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (m,), generator=g)
    return torch.randn(m, 4, generator=g) + 3.0 * y[:, None], y


@pytest.fixture(scope="module")
def data():
    (x_tr, y_tr), (x_te, y_te) = blobs(400, 0), blobs(200, 1)
    return x_tr, y_tr, x_te, y_te


class TwoLayer(nn.Module):
    """A user's model, not in byzlearn's registry."""

    def __init__(self, hidden: int = 16):
        super().__init__()
        self.hidden, self.out = nn.Linear(4, hidden), nn.Linear(hidden, 2)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


class Net(nn.Module):
    """A user's model class used as a factory (input_shape, num_classes)."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.layer = nn.Linear(input_shape[0], num_classes)

    def forward(self, x):
        return self.layer(x)


ATTACKED = {
    "workers": {"n": 10, "byzantine": 3, "batch_size": 16},
    "aggregator": {"name": "trimmed_mean"},
    "attack": {"name": "sign_flip", "scale": 10.0},
    "train": {"rounds": 40, "eval_every": 20},
}


def with_(base: dict, **sections) -> dict:
    out = copy.deepcopy(base)
    for name, values in sections.items():
        out.setdefault(name, {}).update(values)
    return out


def flat(module: nn.Module) -> torch.Tensor:
    return parameters_to_vector(module.parameters()).detach()


# -- (a) a user module and tensors train robustly -----------------------------------------------------------
def test_user_module_trains_robustly_under_attack(data):
    torch.manual_seed(0)
    net = TwoLayer()
    before = flat(net).clone()
    robust = byzlearn.simulate(ATTACKED, net, data)
    assert robust["final_test_accuracy"] > 0.9
    assert (robust["model"], robust["data"], robust["parameters"]) == ("TwoLayer", "custom", 4 * 16 + 16 + 16 * 2 + 2)
    assert torch.equal(flat(net), before)  # the user's module is copied, not trained in place
    trained = robust["module"]
    assert isinstance(trained, TwoLayer) and not torch.equal(flat(trained), before)
    with torch.no_grad():
        acc = (trained(data[2]).argmax(1) == data[3]).float().mean().item()
    assert acc == pytest.approx(robust["final_test_accuracy"])
    assert [r["round"] for r in robust["metrics"]] == [0, 20, 40]
    # the same attack breaks the mean: the robustness above is the rule's
    assert byzlearn.simulate(with_(ATTACKED, aggregator={"name": "mean"}), net, data)["final_test_accuracy"] < 0.8


def test_calls_with_different_models_do_not_interfere(data):
    cfg = with_(ATTACKED, train={"rounds": 5, "eval_every": 5})
    small = byzlearn.simulate(cfg, TwoLayer(hidden=3), data)
    net = byzlearn.simulate(cfg, Net, data)
    big = byzlearn.simulate(with_(cfg, model={"name": "wide"}), TwoLayer(hidden=32), data)
    assert [r["parameters"] for r in (small, net, big)] == [4 * 3 + 3 + 3 * 2 + 2, 4 * 2 + 2, 4 * 32 + 32 + 32 * 2 + 2]
    assert [r["model"] for r in (small, net, big)] == ["TwoLayer", "Net", "wide"]
    assert byzlearn.simulate(cfg, data=data)["model"] == "mlp20"  # no model: the registered default, untouched


# -- (b) the API path is the registered path --------------------------------------------------------------
def test_api_run_is_bit_identical_to_registered_run(digits, tmp_path):
    run = {
        "workers": {"n": 5, "byzantine": 1, "batch_size": 16},
        "aggregator": {"name": "median"},
        "attack": {"name": "alie"},
        "train": {"rounds": 20, "eval_every": 10},
    }
    registered = run_registered(
        C.from_dict(with_(run, data={"name": "digits"}, model={"name": "logreg"})), tmp_path / "reg", progress=False
    )
    theta = torch.load(tmp_path / "reg" / CHECKPOINT)["simulator"]["theta"]
    factory = byzlearn.simulate(run, logreg, digits, out=tmp_path / "api")  # the registry's factory and Dataset as user objects
    torch.manual_seed(0)  # train.seed: the registered model's initial weights
    instance = byzlearn.simulate(run, logreg((1, 8, 8), 10), digits)
    for res in (factory, instance):
        assert res["final_test_accuracy"] == registered["final_test_accuracy"]
        assert res["final_test_loss"] == registered["final_test_loss"]
        assert torch.equal(flat(res["module"]), theta)
    assert factory["config_hash"] == registered["config_hash"]  # labelled "logreg" / "digits": the same experiment
    assert torch.equal(torch.load(tmp_path / "api" / CHECKPOINT)["simulator"]["theta"], theta)
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(p.name for p in (tmp_path / "reg").iterdir())


# -- (c) torch data sets are read into the same tensors -----------------------------------------------------
class Pairs(TorchDataset):
    """A map-style data set of (x, y) samples, y a Python int."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_torch_datasets_equal_tensor_input(data):
    x_tr, y_tr, x_te, y_te = data
    cfg = with_(ATTACKED, train={"rounds": 15, "eval_every": 5})
    forms = [
        (TensorDataset(x_tr, y_tr), TensorDataset(x_te, y_te)),
        (Pairs(x_tr, y_tr), Pairs(x_te, y_te)),
        ((x_tr, y_tr), (x_te, y_te)),
        (x_tr.double().numpy(), y_tr.numpy(), x_te.double().numpy(), y_te.numpy()),
    ]
    for form in forms:
        ds = as_dataset(form)
        assert torch.equal(ds.x_train, x_tr) and torch.equal(ds.y_train, y_tr) and torch.equal(ds.x_test, x_te)
        assert ds.y_test.dtype == torch.int64 and ds.num_classes == 2
    ref = byzlearn.simulate(cfg, Net, data)
    for form in forms[:2]:
        res = byzlearn.simulate(cfg, Net, form)
        assert res["final_test_accuracy"] == ref["final_test_accuracy"] and res["config_hash"] == ref["config_hash"]
        assert torch.equal(flat(res["module"]), flat(ref["module"]))


# -- (d) grid: one row per cell, the matrix folder, skip on a second call ---------------------------------
@pytest.mark.filterwarnings("ignore:Tight layout not applied")  # matplotlib, on a heatmap of one row
def test_grid_one_row_per_cell(data, tmp_path):
    cfg = with_(ATTACKED, train={"rounds": 15, "eval_every": 15})
    attacks = ["alie", {"name": "sign_flip", "scale": 10.0}]
    rows = byzlearn.grid(cfg, Net, data, aggregators=["mean", "trimmed_mean"], attacks=attacks, byzantine=[0, 3], out=tmp_path / "g")
    cells = {(r["method"], r["setting"]["attack"], r["setting"]["byzantine"]) for r in rows}
    assert len(rows) == len(cells) == 6  # f = 0 runs without attack: 2 + 2 x 2 cells
    assert ("trimmed_mean", "none", 0) in cells and ("mean", "sign_flip(scale=10.0)", 3) in cells
    assert all(r["setting"]["model"] == "Net" and r["setting"]["data"] == "custom" for r in rows)
    assert len((tmp_path / "g" / "results.csv").read_text().splitlines()) == 7 and (tmp_path / "g" / "heatmap.png").exists()
    for r in rows:
        assert json.loads((tmp_path / "g" / r["run"] / "summary.json").read_text())["final_test_accuracy"] == r["final_test_accuracy"]
    # a cell is the run simulate makes of the same config
    one = next(r for r in rows if r["method"] == "trimmed_mean" and r["setting"]["attack"].startswith("sign_flip"))
    assert byzlearn.simulate(cfg, Net, data)["final_test_accuracy"] == one["final_test_accuracy"]
    # again on the same folder: every cell is finished, nothing runs again
    assert (
        byzlearn.grid(cfg, Net, data, aggregators=["mean", "trimmed_mean"], attacks=attacks, byzantine=[0, 3], out=tmp_path / "g") == rows
    )
    # the config's own [matrix] section; no out: no run folders in the rows
    plain = byzlearn.grid(with_(cfg, matrix={"aggregators": ["median"], "seeds": [0, 1]}), TwoLayer(), data)
    assert len(plain) == 2 and "run" not in plain[0]


# -- resume ----------------------------------------------------------------------------------------------------
def test_resume_with_the_same_objects_continues_the_trajectory(data, tmp_path):
    cfg = with_(ATTACKED, train={"rounds": 20, "eval_every": 5, "checkpoint_every": 10})
    straight = byzlearn.simulate(cfg, Net, data, out=tmp_path / "a")
    labelled = C.from_dict(with_(cfg, data={"name": "custom"}, model={"name": "Net"}))  # as simulate labels them
    ds = as_dataset(data)
    assert Run.create(labelled, tmp_path / "b", lambda c: make_simulator(c, ds, Net)).execute(False, stop_after=10) is None  # "killed"
    resumed = byzlearn.simulate(cfg, Net, data, out=tmp_path / "b", resume=True)
    assert resumed["final_test_accuracy"] == straight["final_test_accuracy"]
    assert torch.equal(flat(resumed["module"]), flat(straight["module"]))
    with pytest.raises(ConfigError, match="already holds a run"):
        byzlearn.simulate(cfg, Net, data, out=tmp_path / "b")
    with pytest.raises(ConfigError, match="holds another experiment"):
        byzlearn.simulate(with_(cfg, aggregator={"name": "median"}), Net, data, out=tmp_path / "b", resume=True)


# -- (e) bad input: ConfigError, nothing written ------------------------------------------------------------
class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def forward(self, x):
        return self.layer(x)


def _bad_cases(data):
    x_tr, y_tr, x_te, y_te = data
    y_out = y_tr.clone()
    y_out[7] = 2
    nan = x_tr.clone()
    nan[0, 0] = float("nan")
    return {
        "label": (Net, (x_tr, y_out, x_te, y_te), {"num_classes": 2}, r"label 2 is out of range for num_classes = 2"),
        "length": (Net, (x_tr, y_tr[:-1], x_te, y_te), {}, r"x_train has 400 samples but its labels have 399"),
        "int x": (Net, (x_tr.long(), y_tr, x_te.long(), y_te), {}, r"x_train has dtype torch.int64; the inputs must be floating point"),
        "float y": (Net, (x_tr, y_tr.float(), x_te, y_te), {}, r"y_train has dtype torch.float32; the labels must be integer"),
        "nan": (Net, (nan, y_tr, x_te, y_te), {}, r"x_train holds NaN"),
        "features": (Net, (x_tr, y_tr, x_te[:, :3], y_te), {}, r"x_train samples have shape \(4,\) but x_test samples \(3,\)"),
        "one dataset": (Net, TensorDataset(x_tr, y_tr), {}, r"give \(train_dataset, test_dataset\)"),
        "no test set": (Net, (x_tr, y_tr), {}, r"no test set"),
        "width": (Wide(), data, {}, r"Tensor\[batch, num_classes\] = \(2, 2\).*got \(2, 3\)"),
        "input width": (nn.Linear(5, 2), data, {}, r"the model fails on a batch of training inputs of shape \(2, 4\)"),
        "dropout": (nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)), data, {}, r"no per-worker gradient under torch.func"),
        "not a model": ("mlp20", data, {}, r"model must be an nn.Module or a factory"),
        "factory": (lambda: nn.Linear(4, 2), data, {}, r"the model factory .*<lambda>\(input_shape=\(4,\), num_classes=2\) failed"),
    }


BAD = ["label", "length", "int x", "float y", "nan", "features", "one dataset", "no test set", "width", "input width", "dropout"]


@pytest.mark.parametrize("case", [*BAD, "not a model", "factory"])
def test_bad_input_is_a_config_error_before_anything_is_written(data, tmp_path, case):
    model, bad, kwargs, message = _bad_cases(data)[case]
    with pytest.raises(ConfigError, match=message):
        byzlearn.simulate(ATTACKED, model, bad, out=tmp_path / "run", **kwargs)
    with pytest.raises(ConfigError, match=message):
        byzlearn.grid(ATTACKED, model, bad, aggregators=["mean", "median"], out=tmp_path / "grid", **kwargs)
    assert not (tmp_path / "run").exists() and not (tmp_path / "grid").exists()


def test_bad_config_is_a_config_error(data, tmp_path):
    for config, message in [
        ({"workers": {"nn": 3}}, r"unknown key workers.nn"),
        (with_(ATTACKED, workers={"byzantine": 5}), r"trimmed_mean.*cannot run with n=10 inputs and f=5"),
        ({"matrix": {"seeds": [0, 1]}}, r"use byzlearn.grid"),
    ]:
        with pytest.raises(ConfigError, match=message):
            byzlearn.simulate(config, Net, data, out=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"cannot run with n=10 inputs and f=6"):
        byzlearn.grid(ATTACKED, Net, data, byzantine=[1, 6], out=tmp_path / "grid")
    with pytest.raises(ConfigError, match=r"matrix.aggregators = \[\] must be a non-empty list"):
        byzlearn.grid(ATTACKED, Net, data, aggregators=[], out=tmp_path / "grid")
    assert not (tmp_path / "run").exists() and not (tmp_path / "grid").exists()


# -- (f) the rules and attacks in a user's own loop ---------------------------------------------------------
def test_functional_rules_and_forge_in_own_loop(data):
    x_tr, y_tr, x_te, y_te = data
    n, f = 10, 3
    g = torch.Generator().manual_seed(0)
    H = torch.randn(n - f, 6, generator=g)
    own = torch.randn(f, 6, generator=g)
    assert torch.equal(byzlearn.forge({"name": "sign_flip", "scale": 2.0}, H, f, own=own), -2.0 * own)
    assert torch.allclose(byzlearn.forge("alie", H, f), alie_vector(H, byzlearn.build_attack("alie").strength(n, f)).expand(f, 6))
    with pytest.raises(ConfigError, match="pass own"):
        byzlearn.forge("sign_flip", H, f)
    G = torch.cat([H, byzlearn.forge("ipm", H, f)])
    assert torch.equal(byzlearn.build_aggregator({"name": "trimmed_mean"}, f)(G), R.trimmed_mean(G, f))
    with pytest.raises(ConfigError, match="cannot run with n=10 inputs and f=5"):
        byzlearn.build_aggregator({"name": "krum", "pre": ["nnm"]}, 5)(G)

    x1_tr, x1_te = F.pad(x_tr, (0, 1), value=1.0), F.pad(x_te, (0, 1), value=1.0)  # a bias feature

    ipm = byzlearn.build_attack({"name": "ipm", "epsilon": 5.0})  # 3 x -5 mu outweighs 7 x mu

    def train(rule):  # logistic regression, the workers' gradients in one batched expression
        w = torch.zeros(5, 2)
        for _ in range(60):
            idx = torch.randint(0, len(y_tr), (n - f, 16), generator=g)
            xb, yb = x1_tr[idx], y_tr[idx]  # [n - f, B, 5]
            p = torch.softmax(xb @ w, dim=-1) - F.one_hot(yb, 2)
            honest = (xb.transpose(1, 2) @ p).flatten(1) / xb.shape[1]  # Tensor[n - f, 10]
            G = torch.cat([honest, byzlearn.forge(ipm, honest, f)])
            w -= 0.5 * rule(G).view(5, 2)
        return ((x1_te @ w).argmax(1) == y_te).float().mean().item()

    assert train(lambda G: R.trimmed_mean(G, f)) > 0.9
    assert train(byzlearn.build_aggregator({"name": "krum", "pre": ["nnm"]}, f)) > 0.9
    assert train(R.mean) < 0.6  # IPM reverses the mean


# -- the README section, executed verbatim --------------------------------------------------------------------
def _section() -> str:
    """The README's section (the examples a user copies, so they cannot drift from what is tested)."""
    readme = (ROOT / "README.md").read_text()
    assert HEADING in readme, f"README.md has no {HEADING!r} section"
    rest = readme.split(HEADING, 1)[1]
    return HEADING + re.split(r"\n## ", rest, maxsplit=1)[0]


def _examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) == 2, f"the '{HEADING}' section needs two python examples, found {len(blocks)}"
    return blocks


def test_readme_example_simulate_and_grid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_examples()[0], "use_from_python_example_1", "exec"), ns)
    assert ns["result"]["final_test_accuracy"] > 0.9 and isinstance(ns["result"]["module"], nn.Module)
    rows = {(r["method"], r["setting"]["attack"]): r["final_test_accuracy"] for r in ns["rows"]}
    assert len(rows) == 4 and min(v for (m, _), v in rows.items() if m == "nnm+krum") > 0.9
    assert "nnm+krum sign_flip(scale=10.0)" in capsys.readouterr().out


def test_readme_example_own_training_loop(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_examples()[1], "use_from_python_example_2", "exec"), {})
    accuracies = dict(re.findall(r"^(\S+): accuracy ([0-9.]+)$", capsys.readouterr().out, re.M))
    assert set(accuracies) == {"trimmed_mean", "nnm+krum"} and all(float(a) > 0.9 for a in accuracies.values())
