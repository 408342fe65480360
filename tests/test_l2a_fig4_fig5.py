"""l2a-fig4 and l2a-fig5: learned aggregators against averaging and transferred to other models and data
(Ji et al. 2019, Figs. 4 and 5), quick versions with untrained networks."""

import pytest

from byzlearn.experiments import repro_l2a_fig4 as fig4
from byzlearn.experiments import repro_l2a_fig5 as fig5
from conftest import quick_reproduction


def _final(rows, method, **setting):
    (row,) = [r for r in rows if r["method"] == method and all(r["setting"][k] == v for k, v in setting.items())]
    return row["final_test_accuracy"]


def test_quick_fig4_rows_table_and_the_untrained_set_network_is_the_mean(tmp_path):
    out = tmp_path / "fig4"
    rows = quick_reproduction("l2a-fig4", out, fig4.METHODS[1:])
    assert sorted(r["method"] for r in rows) == sorted(fig4.METHODS)
    for r in rows:
        assert r["setting"]["byzantine"] == 0 and r["setting"]["attack"] == "none"
        assert 0.0 <= r["final_test_accuracy"] <= r["best_test_accuracy"] <= 1.0
    # an untrained set encoder is the plain mean (uniform attention, gain 1), so the runs coincide
    assert _final(rows, "mean") > 0.5  # 30 rounds on digits learn: the comparison is not between two chance levels
    assert _final(rows, "set_rnn_lstm") == pytest.approx(_final(rows, "mean"), abs=0.01)
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in fig4.METHODS) and "vs mean" in md and "no meta-training" in md
    assert (out / "fig4.png").stat().st_size > 0


def test_quick_fig5_transfers_unchanged_networks_to_other_models_and_data(tmp_path):
    out = tmp_path / "fig5"
    rows = quick_reproduction("l2a-fig5", out, fig5.METHODS[1:])
    cells = {(r["setting"]["panel"], r["setting"]["model"], r["setting"]["data"]) for r in rows}
    assert cells == {("models", "mlp40", "mnist"), ("data", "mlp20", "mnist2"), ("data", "mlp20", "fashion_mnist")}
    assert len(rows) == len(cells) * len(fig5.METHODS)
    assert all(r["setting"]["aggregator_trained_on"] == "mnist, mlp20" for r in rows)
    for _panel, model, data in cells:
        assert _final(rows, "set_rnn_lstm", model=model, data=data) == pytest.approx(_final(rows, "mean", model=model, data=data), abs=0.01)
    md = (out / "results.md").read_text()
    assert "rnn_lstm - mean" in md and "Why the ReLU MLP fails" not in md  # the measured note belongs to the full run
    for panel in ("models", "data"):
        assert (out / f"fig5_{panel}.png").stat().st_size > 0
