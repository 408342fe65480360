"""l2a-fig6: learned aggregators under 0, 3 and 7 of 10 Byzantine workers (Ji et al. 2019, Fig. 6), quick version."""

from byzlearn import config as C
from byzlearn.aggregators import build_aggregator
from byzlearn.experiments import l2a
from byzlearn.experiments import repro_l2a_fig6 as fig6
from conftest import quick_reproduction, untrained_aggregator


def test_norm_bound_options_reach_the_rule(tmp_path):
    """The methods that share weights differ only by aggregator.input_clip, which the built rule applies."""
    for folder in ("arnn_lstm_byz", "set_arnn_lstm"):
        untrained_aggregator(tmp_path, folder)
    dirs = {m: tmp_path / fig6.FOLDERS[m] for m in fig6.LEARNED}
    expected = {"arnn_lstm": False, "arnn_lstm_clip": True, "set_arnn_lstm": True, "set_arnn_lstm_noclip": False}
    for method, clip in expected.items():
        cfg = C.load(None, ["data.name=digits", "data.public_size=100"] + l2a.aggregator_overrides(method, dirs))
        rule = build_aggregator(cfg.aggregator, f_default=0)
        assert bool(rule.card.get("input_clip")) is clip, method


def test_quick_reproduction_rows_tables_and_ablations(tmp_path):
    out = tmp_path / "fig6"
    rows = quick_reproduction("l2a-fig6", out, ("rnn_lstm_byz", "arnn_lstm_byz", "set_arnn_lstm"))
    main = [r for r in rows if r["setting"]["attack"] != "learned_whitebox"]
    # 0 Byzantine (no attack), then 3 and 7 under gaussian, sign flip and IPM: 7 settings x every method
    assert len(main) == 7 * len(fig6.METHODS)
    assert {r["method"] for r in main} == set(fig6.METHODS)
    assert {(r["setting"]["byzantine"], r["setting"]["attack"]) for r in main} >= {(0, "none"), (7, "gaussian"), (3, "ipm(epsilon=0.5)")}
    for r in main:
        assert {"method", "setting", "final_test_accuracy", "best_test_accuracy"} <= set(r)
        assert 0.0 <= r["final_test_accuracy"] <= r["best_test_accuracy"] <= 1.0
        assert r["setting"]["aggregator_options"] == l2a.USE_OPTIONS.get(r["method"], [])
    wb = [r for r in rows if r["setting"]["attack"] == "learned_whitebox"]
    assert sorted((r["method"], r["setting"]["byzantine"]) for r in wb) == sorted((m, c) for m in fig6.WHITEBOX for c in (3, 7))
    md = (out / "results.md").read_text()
    assert "| set_arnn_lstm_noclip |" in md and "run with input_clip=true" in md
    assert "Ablations of the input norm bound" in md and "validation_500_" in md
    for count in (0, 3, 7):
        assert (out / f"fig6_byz{count}.png").stat().st_size > 0
