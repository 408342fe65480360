"""Config parsing, overrides and the errors a user sees for bad settings."""

import pytest

from byzlearn import config as C
from byzlearn.engine.validate import validate
from byzlearn.registry import ConfigError


def test_defaults_cover_every_section():
    cfg = C.load()
    d = cfg.to_dict()
    assert set(d) == {"data", "model", "workers", "train", "attack", "aggregator", "optimizer"}
    assert cfg.data.name == "digits" and cfg.aggregator["name"] == "mean" and cfg.attack["name"] == "none"


def test_toml_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[workers]\nn = 7\n[optimizer]\nname = "sgd"\nlr = 0.5\n')
    cfg = C.load(p, ["workers.byzantine=2", "optimizer.momentum=0.9", "data.name=mnist", "train.device=cpu"])
    assert cfg.workers.n == 7 and cfg.workers.byzantine == 2
    assert cfg.optimizer == {"name": "sgd", "lr": 0.5, "momentum": 0.9}
    assert cfg.data.name == "mnist"


def test_resolved_config_round_trips(tmp_path):
    cfg = C.load(None, ["workers.n=12", "data.data_dir=/tmp/x", 'aggregator.pre=["nnm"]'])
    p = tmp_path / "r.toml"
    p.write_text(cfg.to_toml())
    again = C.load(p)
    assert again.to_dict() == cfg.to_dict()
    assert again.hash() == cfg.hash()


def test_hash_ignores_location_but_not_experiment():
    a = C.load(None, ["data.data_dir=/a"])
    b = C.load(None, ["data.data_dir=/b"])
    c = C.load(None, ["workers.n=11"])
    assert a.hash() == b.hash() != c.hash()


def test_switching_component_drops_the_files_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[optimizer]\nname = "sgd"\nlr = 0.5\nmomentum = 0.9\n')
    assert C.load(p, ["optimizer.name=adam"]).optimizer == {"name": "adam"}
    # keys given on the command line are kept, whatever their order
    assert C.load(p, ["optimizer.lr=0.01", "optimizer.name=adam"]).optimizer == {"name": "adam", "lr": 0.01}
    assert C.load(None, ["optimizer.name=adam"]).optimizer == {"name": "adam"}  # no default lr of sgd


@pytest.mark.parametrize(
    "override, words",
    [
        (["workers.nn=3"], ["workers.nn", "allowed keys", "byzantine"]),
        (["workers.n=three"], ["workers.n", "expected int"]),
        (["nosuch.key=1"], ["unknown section", "aggregator"]),
        (["workers=3"], ["section.key=value"]),
        (["data.partition=weird"], ["data.partition", "iid"]),
    ],
)
def test_bad_keys_and_types_are_named(override, words):
    with pytest.raises(ConfigError) as e:
        C.load(None, override)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize(
    "override, words",
    [
        (["workers.byzantine=10"], ["workers.byzantine", "[0, 9]"]),
        (["workers.byzantine=-1"], ["workers.byzantine"]),
        (["train.rounds=0"], ["train.rounds", ">= 1"]),
        (["aggregator.name=nosuchrule"], ["nosuchrule", "mean"]),
        (["attack.name=nosuchattack"], ["nosuchattack", "none"]),
        (["optimizer.lrr=0.1"], ["optimizer.lrr", "lr"]),
        (["optimizer.lr=fast"], ["optimizer.lr", "float"]),
        (["model.name=resnet"], ["model.name", "mlp20"]),
        (["data.name=imagenet"], ["data.name", "mnist"]),
        (["train.device=tpu"], ["train.device"]),
        (["data.alpha=0"], ["data.alpha"]),
        (["aggregator.f=-2"], ["aggregator.f"]),
    ],
)
def test_impossible_settings_fail_before_training(override, words):
    with pytest.raises(ConfigError) as e:
        validate(C.load(None, override))
    for w in words:
        assert w in str(e.value)


def test_parse_value_literals():
    assert C.parse_value("3") == 3
    assert C.parse_value("0.1") == 0.1
    assert C.parse_value("true") is True
    assert C.parse_value("[1, 2]") == [1, 2]
    assert C.parse_value("krum") == "krum"
    assert C.parse_value('"3"') == "3"
