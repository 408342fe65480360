"""byzlearn.flower without processes: records, the robust step, the strategy's round loop, the coalition.

The strategy runs Flower's own ``Strategy.start`` over an in-process grid (``flower_support``);
the real SuperLink/SuperNode transport is tested in ``test_flower_e2e.py``.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common import FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.typing import Code

from byzlearn.aggregators import build_aggregator
from byzlearn.aggregators import functional as F
from byzlearn.attacks.omniscient import alie_z
from byzlearn.flower import Adversary, ClassicRobustStrategy, Layout, RobustStrategy, aggregate_records, byzantine_mod, poisoned_labels
from byzlearn.flower.records import read_record
from byzlearn.registry import ConfigError
from flower_support import LocalGrid, record, reply

logging.getLogger("flwr").setLevel(logging.ERROR)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower"

SHAPES = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "fc.weight": (10, 36), "steps": (), "mask": (5,)}
DTYPES = {"conv.weight": np.float32, "conv.bias": np.float32, "fc.weight": np.float32, "steps": np.int64, "mask": np.bool_}


def _arrays(rng: np.random.Generator, shift: float = 0.0) -> dict[str, np.ndarray]:
    out = {}
    for k, s in SHAPES.items():
        if DTYPES[k] is np.bool_:
            out[k] = rng.random(s) > 0.5
        elif DTYPES[k] is np.int64:
            out[k] = np.array(int(rng.integers(0, 100)), dtype=np.int64)
        else:
            out[k] = (rng.standard_normal(s) + shift).astype(DTYPES[k])
    return out


def _flat(arrays: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.cat([torch.from_numpy(np.asarray(arrays[k], dtype=np.float32).reshape(-1)) for k in SHAPES])


def test_round_trip_keeps_names_shapes_dtypes_and_values():
    rng = np.random.default_rng(0)
    arrs = _arrays(rng)
    rec = record(**arrs)
    layout = Layout.of_record(rec)
    flat = read_record(rec, layout)
    assert flat.dtype == torch.float32 and flat.numel() == layout.dim == 36 + 4 + 360 + 1 + 5
    from byzlearn.flower import to_record

    back = to_record(flat, layout)
    assert list(back.keys()) == list(SHAPES)
    for k in SHAPES:
        assert back[k].numpy().dtype == DTYPES[k] and back[k].numpy().shape == SHAPES[k]
        np.testing.assert_array_equal(back[k].numpy(), arrs[k])
    # a float64 array makes the whole row float64, so no float64 value is rounded
    rec64 = record(a=np.array([1 + 2**-40], dtype=np.float64), b=np.ones(2, np.float32))
    assert read_record(rec64, Layout.of_record(rec64)).dtype == torch.float64


@pytest.mark.parametrize(
    "spec, fn",
    [
        ("mean", lambda G: F.mean(G)),
        ("median", lambda G: F.median(G)),
        ("trimmed_mean", lambda G: F.trimmed_mean(G, 2)),
        ("krum", lambda G: F.krum(G, 2)),
        ("geometric_median", None),
        ({"name": "krum", "pre": ["nnm"]}, None),
    ],
)
def test_aggregate_records_is_the_rule_on_the_stacked_rows(spec, fn):
    rng = np.random.default_rng(1)
    recs = [_arrays(rng) for _ in range(7)]
    recs[0] = {k: (v * 1e3).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in recs[0].items()}  # an outlier
    G = torch.stack([_flat(a) for a in recs])
    expected = fn(G) if fn is not None else build_aggregator({"name": spec} if isinstance(spec, str) else dict(spec), 2)(G)
    out = aggregate_records([record(**a) for a in recs], spec, 2)
    got = _flat({k: out[k].numpy() for k in SHAPES})
    float_part = slice(0, 36 + 4 + 360)
    torch.testing.assert_close(got[float_part], expected[float_part], rtol=0, atol=0)
    # integer and boolean arrays come back rounded in their own dtype
    assert out["steps"].numpy() == np.rint(expected[400].item())
    np.testing.assert_array_equal(out["mask"].numpy(), (expected[401:] > 0.5).numpy())


def test_aggregate_records_declared_f_and_the_rules_requirement():
    recs = [record(w=np.full(3, float(i), np.float32)) for i in range(5)]
    with pytest.raises(ValueError, match="requires"):
        aggregate_records(recs, "trimmed_mean", 3)  # n = 5 <= 2f
    with pytest.raises(ConfigError, match="unknown aggregator"):
        aggregate_records(recs, "no_such_rule", 1)
    with pytest.raises(ConfigError, match="non-negative integer"):
        aggregate_records(recs, "median", -1)
    out = aggregate_records(recs, {"name": "trimmed_mean"}, 2)
    np.testing.assert_array_equal(out["w"].numpy(), np.full(3, 2.0, np.float32))


def _corrupt(kind: str, good: ArrayRecord) -> ArrayRecord | object:
    w = good["w"].numpy()
    if kind == "missing_key":
        return record(b=good["b"].numpy())
    if kind == "extra_key":
        return record(w=w, b=good["b"].numpy(), c=np.zeros(1, np.float32))
    if kind == "order":
        return record(b=good["b"].numpy(), w=w)
    if kind == "shape":
        return record(w=np.zeros(7, np.float32), b=good["b"].numpy())
    if kind == "dtype":
        return record(w=w.astype(np.float64), b=good["b"].numpy())
    if kind == "liar":  # metadata says float32 (3, 2); the blob holds something else
        rec = record(w=w, b=good["b"].numpy())
        buf = io.BytesIO()
        np.save(buf, np.zeros(6, np.float32))
        rec["w"] = Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=buf.getvalue())
        return rec
    if kind == "garbage":
        rec = record(w=w, b=good["b"].numpy())
        rec["w"] = Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=b"\x00" * 200)
        return rec
    if kind == "huge":
        rec = record(w=w, b=good["b"].numpy())
        rec["w"] = Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=b"\x93NUMPY" + b"\x00" * (1 << 20))
        return rec
    if kind == "stype":
        rec = record(w=w, b=good["b"].numpy())
        rec["w"] = Array(dtype="float32", shape=(3, 2), stype="torch.Tensor", data=good["w"].data)
        return rec
    if kind == "object":
        return "not a record"
    raise AssertionError(kind)


KINDS = ["missing_key", "extra_key", "order", "shape", "dtype", "liar", "garbage", "huge", "stype", "object"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_record_is_dropped_never_raised(kind):
    good = [record(w=np.full((3, 2), float(i), np.float32), b=np.array([i], np.int64)) for i in range(5)]
    layout = Layout.of_record(good[0])
    assert isinstance(read_record(_corrupt(kind, good[0]), layout), str)
    out = aggregate_records([*good, _corrupt(kind, good[0])], "median", 1, reference=good[0])
    np.testing.assert_array_equal(out["w"].numpy(), np.full((3, 2), 2.0, np.float32))


def test_a_byzantine_minority_cannot_choose_the_layout():
    honest = [record(w=np.full(4, 1.0, np.float32)) for _ in range(4)]
    hostile = [record(w=np.full(9, 1e9, np.float32)) for _ in range(3)]
    out = aggregate_records([*hostile, *honest], "median", 1)  # hostile ones first
    np.testing.assert_array_equal(out["w"].numpy(), np.ones(4, np.float32))


# -- the strategy over Flower's own round loop --------------------------------------------------------------


def _start(strategy, n, client, rounds=1, init=None, run_config=None):
    init = init if init is not None else record(w=np.zeros((3, 2), np.float32), b=np.zeros(1, np.int64))
    grid = LocalGrid(n, client, run_config)
    result = strategy.start(grid=grid, initial_arrays=init, num_rounds=rounds)
    return result, grid


def test_strategy_output_is_the_rule_on_the_updates_and_counts_every_bad_reply():
    rng = np.random.default_rng(3)
    honest = {101 + i: rng.standard_normal((3, 2)).astype(np.float32) for i in range(7)}

    def client(msg, ctx):
        node = msg.metadata.dst_node_id
        if node in honest:
            return reply(msg, {"w": honest[node], "b": np.array([2], np.int64)}, train_loss=1.0)
        if node == 108:  # NaN row: passed to the rule, which tolerates it
            return reply(msg, {"w": np.full((3, 2), np.nan, np.float32), "b": np.array([2], np.int64)})
        if node == 109:  # wrong shape
            return reply(msg, {"w": np.zeros(5, np.float32), "b": np.array([2], np.int64)})
        if node == 110:  # an error reply
            return Message(Error(code=0, reason="boom"), reply_to=msg)
        if node == 111:  # wrong record type under "arrays"
            return Message(RecordDict({"arrays": MetricRecord({"x": 1.0}), "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)
        return None  # 112: never replies

    strategy = RobustStrategy("trimmed_mean", f=2, fraction_evaluate=0.0, min_available_nodes=12)
    result, _ = _start(strategy, 12, client)
    G = torch.from_numpy(np.stack([honest[k].reshape(-1) for k in sorted(honest)] + [np.full(6, np.nan, np.float32)]))
    expected = F.trimmed_mean(G, 2).reshape(3, 2).numpy()
    np.testing.assert_array_equal(result.arrays["w"].numpy(), expected)
    assert result.arrays["b"].numpy().tolist() == [2]
    c = strategy.counters
    assert (c["replies"], c["missing"], c["malformed"], c["nonfinite"], c["skipped_rounds"]) == (
        10,
        2,
        2,
        1,
        0,
    )  # the error reply counts as missing, as a lost message
    metrics = result.train_metrics_clientapp[1]
    assert metrics["byzlearn-malformed"] == 2 and metrics["train_loss"] == 1.0


def test_updates_and_weights_agree_for_a_translation_equivariant_rule_and_differ_for_clipping():
    rng = np.random.default_rng(4)
    start = record(w=np.full(6, 5.0, np.float32))
    rows = {101 + i: (5.0 + rng.standard_normal(6)).astype(np.float32) for i in range(7)}
    client = lambda msg, ctx: reply(msg, {"w": rows[msg.metadata.dst_node_id]})  # noqa: E731
    outs = {}
    for mode in ("updates", "weights"):
        for rule in ("trimmed_mean", {"name": "mean", "pre": [{"name": "clipping", "c": 0.5}]}):
            s = RobustStrategy(rule, f=2, aggregate=mode, fraction_evaluate=0.0, min_available_nodes=7)
            outs[mode, str(rule)] = _start(s, 7, client, init=start)[0].arrays["w"].numpy()
    np.testing.assert_allclose(outs["updates", "trimmed_mean"], outs["weights", "trimmed_mean"], rtol=0, atol=1e-6)
    clip = str({"name": "mean", "pre": [{"name": "clipping", "c": 0.5}]})
    # clipping updates keeps the step below 0.5; clipping weights (norm ~12) shrinks the model itself
    assert np.linalg.norm(outs["updates", clip] - 5.0) <= 0.5 + 1e-6
    assert np.linalg.norm(outs["weights", clip]) <= 0.5 + 1e-6


def test_too_few_replies_skip_the_round_and_keep_the_model():
    def client(msg, ctx):
        return reply(msg, {"w": np.ones(2, np.float32)}) if msg.metadata.dst_node_id <= 104 else None

    s = RobustStrategy("trimmed_mean", f=2, fraction_evaluate=0.0, min_available_nodes=7)
    result, _ = _start(s, 7, client, init=record(w=np.zeros(2, np.float32)))
    np.testing.assert_array_equal(result.arrays["w"].numpy(), np.zeros(2, np.float32))  # 4 replies, f = 2: n <= 2f
    assert s.counters["skipped_rounds"] == 1 and s.counters["missing"] == 3


def test_a_bad_config_fails_when_the_strategy_is_built():
    with pytest.raises(ConfigError, match="unknown aggregator"):
        RobustStrategy("krumm", f=1)
    with pytest.raises(ConfigError, match="aggregate must be"):
        RobustStrategy("krum", f=1, aggregate="gradients")
    with pytest.raises(ConfigError, match="public batch"):
        RobustStrategy("zeno", f=1)
    with pytest.raises(ConfigError, match="unknown attack"):
        Adversary("alie2")


# -- the coalition -----------------------------------------------------------------------------------------


def _coalition_client(honest: dict[int, np.ndarray], byzantine: set[int]):
    mod = byzantine_mod(byzantine)

    def app(msg, ctx):
        return reply(msg, {"w": honest[msg.metadata.dst_node_id]}, train_loss=float(ctx.node_config["partition-id"]))

    return lambda msg, ctx: mod(msg, ctx, app)


def test_alie_through_the_adversary_is_the_simulators_alie_on_the_honest_updates():
    rng = np.random.default_rng(5)
    n, f = 10, 3
    honest = {101 + i: rng.standard_normal(8).astype(np.float32) for i in range(n)}
    s = RobustStrategy("trimmed_mean", f=f, adversary=Adversary("alie"), fraction_evaluate=0.0, min_available_nodes=n)
    result, _ = _start(s, n, _coalition_client(honest, {0, 1, 2}), init=record(w=np.zeros(8, np.float32)))
    H = torch.from_numpy(np.stack([honest[101 + i] for i in range(3, n)]))
    forged = H.mean(0) - alie_z(n, f) * H.std(0, unbiased=True)
    expected = F.trimmed_mean(torch.cat([forged.expand(3, -1), H]), f)
    np.testing.assert_allclose(result.arrays["w"].numpy(), expected.numpy(), rtol=0, atol=1e-6)
    assert s.counters["byzantine"] == 3
    # the coalition's training metrics are not the honest ones' (partition ids 3..9 average to 6)
    assert result.train_metrics_clientapp[1]["train_loss"] == 6.0


def test_the_mark_grants_nothing_without_an_adversary_and_a_blind_attack_sees_no_honest_row():
    honest = {101 + i: np.full(4, float(i), np.float32) for i in range(7)}
    s = RobustStrategy("mean", f=2, fraction_evaluate=0.0, min_available_nodes=7)
    result, _ = _start(s, 7, _coalition_client(honest, {0, 1}), init=record(w=np.zeros(4, np.float32)))
    np.testing.assert_array_equal(result.arrays["w"].numpy(), np.full(4, 3.0, np.float32))
    assert s.counters["byzantine"] == 0
    seen = {}
    adv = Adversary({"name": "gaussian", "std": 1.0})
    real = adv.attack.forge
    adv.attack.forge = lambda ctx: (seen.setdefault("honest", ctx.honest.shape), real(ctx))[1]
    s = RobustStrategy("median", f=2, adversary=adv, fraction_evaluate=0.0, min_available_nodes=7)
    _start(s, 7, _coalition_client(honest, {0, 1}), init=record(w=np.zeros(4, np.float32)))
    assert seen["honest"] == (0, 4)  # not omniscient: no honest update reaches it


def test_the_mod_marks_only_train_replies_of_enrolled_nodes_and_poisons_their_labels():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.task_id = TaskIdentity.node_id = 1
    mod = byzantine_mod([1])
    y = torch.tensor([0, 3, 9])
    seen = {}

    def app(msg, ctx):
        seen[ctx.node_config["partition-id"]] = poisoned_labels(msg, y, 10)
        return reply(msg, {"w": np.zeros(1, np.float32)})

    for pid in (0, 1):
        ctx = Context(run_id=1, node_id=5, node_config={"partition-id": pid}, state=RecordDict(), run_config={})
        cfg = ConfigRecord({"byzlearn-attack": '{"name": "label_flip"}'})
        msg = Message(
            RecordDict({"arrays": record(w=np.zeros(1, np.float32)), "config": cfg}), message_type=MessageType.TRAIN, dst_node_id=5
        )
        out = mod(msg, ctx, app)
        assert ("byzlearn-byzantine" in out.content["metrics"]) == (pid == 1)
        ev = Message(RecordDict({"config": ConfigRecord({})}), message_type=MessageType.EVALUATE, dst_node_id=5)
        assert "byzlearn-byzantine" not in mod(ev, ctx, lambda m, c: reply(m, {"w": np.zeros(1, np.float32)})).content["metrics"]
    assert seen[0].tolist() == [0, 3, 9] and seen[1].tolist() == [9, 6, 0]


def test_label_flip_config_reaches_the_clients_only_for_data_attacks():
    s = RobustStrategy("median", f=1, adversary=Adversary("label_flip"), fraction_evaluate=0.0, min_available_nodes=3)
    _, grid = _start(s, 3, lambda m, c: reply(m, {"w": np.zeros(2, np.float32)}), init=record(w=np.zeros(2, np.float32)))
    assert grid.sent[0].content["config"]["byzlearn-attack"] == '{"name": "label_flip"}'
    s = RobustStrategy("median", f=1, adversary=Adversary("alie"), fraction_evaluate=0.0, min_available_nodes=3)
    _, grid = _start(s, 3, lambda m, c: reply(m, {"w": np.zeros(2, np.float32)}), init=record(w=np.zeros(2, np.float32)))
    assert "byzlearn-attack" not in grid.sent[0].content["config"]


def test_evaluation_metrics_are_the_median_over_replies():
    s = RobustStrategy("median", f=1)
    replies = []

    def client(msg, ctx):
        i = ctx.node_config["partition-id"]
        acc = 1e9 if i == 0 else float(i)
        out = Message(RecordDict({"metrics": MetricRecord({"accuracy": acc, "num-examples": 10})}), reply_to=msg)
        replies.append(out)
        return out

    grid = LocalGrid(5, client)
    msgs = s.configure_evaluate(1, record(w=np.zeros(1, np.float32)), ConfigRecord(), grid)
    got = s.aggregate_evaluate(1, grid.send_and_receive(msgs))
    assert got["accuracy"] == 3.0  # values 1e9, 1, 2, 3, 4


# -- the classic API ---------------------------------------------------------------------------------------


class _Proxy:
    def __init__(self, cid):
        self.cid = cid


def test_classic_strategy_matches_the_message_strategy():
    rng = np.random.default_rng(6)
    rows = [rng.standard_normal(5).astype(np.float32) for _ in range(7)]
    classic = ClassicRobustStrategy("trimmed_mean", f=2)
    classic.robust.begin(Layout.of_ndarrays([np.zeros(5, np.float32)]), torch.zeros(5))
    results = [(_Proxy(str(i)), FitRes(Status(Code.OK, ""), ndarrays_to_parameters([r]), 10, {})) for i, r in enumerate(rows)]
    bad = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(3, np.float32)]), 10, {})
    params, metrics = classic.aggregate_fit(1, [*results, (_Proxy("9"), bad)], [])
    expected = F.trimmed_mean(torch.from_numpy(np.stack(rows)), 2).numpy()
    np.testing.assert_array_equal(parameters_to_ndarrays(params)[0], expected)
    assert metrics["byzlearn-malformed"] == 1 and classic.counters["malformed"] == 1


# -- learning, in process: the example app's own client code ------------------------------------------------


@pytest.mark.parametrize(
    "rule, attack, learns",
    [
        ("trimmed_mean", "alie", True),
        ("trimmed_mean", {"name": "ipm", "epsilon": 10.0}, True),
        ("mean", {"name": "ipm", "epsilon": 10.0}, False),
    ],
)
def test_the_example_app_learns_under_attack_only_with_a_robust_rule(rule, attack, learns, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in [m for m in sys.modules if m.startswith("byzflower")]:
        monkeypatch.delitem(sys.modules, name)
    from byzflower import client_app
    from byzflower.task import accuracy, make_model, test_data

    cfg = {"num-byzantine": 3, "local-steps": 20, "batch-size": 32, "lr": 0.1, "seed": 0}
    mod = byzantine_mod(client_app._byzantine)
    s = RobustStrategy(rule, f=3, adversary=Adversary(attack), fraction_evaluate=0.0, min_available_nodes=10)
    result, _ = _start(s, 10, lambda m, c: mod(m, c, client_app.fit), rounds=4, init=ArrayRecord(make_model().state_dict()), run_config=cfg)
    model = make_model()
    model.load_state_dict(result.arrays.to_torch_state_dict())
    acc = accuracy(model, *test_data())[1]
    assert (acc > 0.8) if learns else (acc < 0.3), acc


def test_a_learned_aggregator_by_path_is_the_same_rule_through_the_strategy(tmp_path):
    from conftest import untrained_aggregator

    untrained_aggregator(tmp_path, "set_rnn_lstm")
    spec = {"name": "learned", "path": str(tmp_path / "set_rnn_lstm")}
    rng = np.random.default_rng(8)
    rows = {101 + i: rng.standard_normal(12).astype(np.float32) for i in range(6)}
    s = RobustStrategy(spec, f=1, fraction_evaluate=0.0, min_available_nodes=6)
    result, _ = _start(s, 6, lambda m, c: reply(m, {"w": rows[m.metadata.dst_node_id]}), rounds=2, init=record(w=np.zeros(12, np.float32)))
    # the same network, fed the same two rounds of updates, from its own fresh state
    rule = build_aggregator(dict(spec), 1)
    theta = torch.zeros(12)
    for _ in range(2):
        G = torch.from_numpy(np.stack([rows[k] for k in sorted(rows)])) - theta
        theta = theta + rule(G)
    np.testing.assert_allclose(result.arrays["w"].numpy(), theta.numpy(), rtol=0, atol=1e-6)
    assert np.abs(result.arrays["w"].numpy()).sum() > 0
