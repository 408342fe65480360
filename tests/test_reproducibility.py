"""Reproducibility (issue 20): portable kernels, the spread over seeds, ``reproduce --check``, the step guard."""

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byzlearn.aggregators import build_aggregator
from byzlearn.experiments import check, l2a, numerics
from byzlearn.learned.preprocess import cap_step
from byzlearn.registry import ConfigError
from conftest import untrained_aggregator

X86_AVX2 = platform.machine() == "x86_64" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def _probe(env: dict[str, str], before: str = "") -> dict:
    """``numerics.pin()`` in a fresh interpreter (``before``: code run ahead of it)."""
    code = f"{before}\nimport json\nfrom byzlearn.experiments import numerics\nprint(json.dumps(numerics.pin()))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not X86_AVX2, reason="the portable kernels are x86_64 AVX2 kernels")
def test_pinned_probe_is_the_recorded_one_whatever_instruction_set_the_libraries_would_pick():
    # MKL_ENABLE_INSTRUCTIONS and ATEN_CPU_CAPABILITY stand in for a CPU with another instruction set:
    # under the pin the probe hashes alike; left to the libraries it hashes otherwise
    plain = _probe({})
    assert plain["portable"] and plain["fingerprint"] == numerics.PORTABLE_FINGERPRINT
    assert plain["settings"] == numerics.PORTABLE
    assert _probe({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})["fingerprint"] == numerics.PORTABLE_FINGERPRINT
    assert _probe({"ATEN_CPU_CAPABILITY": "default"})["fingerprint"] == numerics.PORTABLE_FINGERPRINT
    native = _probe({"BYZLEARN_NATIVE_NUMERICS": "1", "ATEN_CPU_CAPABILITY": "default"})
    assert not native["portable"] and native["fingerprint"] != numerics.PORTABLE_FINGERPRINT
    assert "BYZLEARN_NATIVE_NUMERICS" in native["why_not"]


@pytest.mark.skipif(not X86_AVX2, reason="the portable kernels are x86_64 AVX2 kernels")
def test_a_pin_after_the_first_matrix_product_says_it_came_too_late():
    late = _probe({}, before="import torch\ntorch.ones(64, 64) @ torch.ones(64, 64)")
    assert not late["portable"] and "before the pin" in late["why_not"]


def _row(method, seed, final, best=None, spread=False, **setting):
    r = {"method": method, "setting": {"seed": seed, **setting}, "final_test_accuracy": final}
    r["best_test_accuracy"] = final if best is None else best
    return {**r, **({"check": "spread"} if spread else {})}


def test_check_passes_identical_rows_and_names_each_kind_of_mismatch():
    old = [_row("mean", s, 0.9 + s / 100) for s in range(3)] + [_row("rnn", s, 0.80 + s / 100, spread=True) for s in range(3)]
    lines, bad = check.compare(old, [dict(r) for r in old])
    assert bad == 0 and "exact rows: 3 of 3 identical" in lines and any("3 of 3 seeds bit-identical" in x for x in lines)
    # an exact row one sample off is a mismatch; the learned rows move inside their range: fine
    new = [dict(r) for r in old]
    new[1] = {**new[1], "final_test_accuracy": 0.9101}
    for i, v in zip((3, 4, 5), (0.82, 0.80, 0.81)):
        new[i] = {**new[i], "final_test_accuracy": v}
    lines, bad = check.compare(old, new)
    assert bad == 1 and any(x.startswith("MISMATCH mean (seed=1)") and "0.91 -> 0.9101" in x for x in lines)
    assert any(x.startswith("ok") and "rnn" in x and "0 of 3 seeds bit-identical" in x for x in lines)


def test_check_judges_a_learned_row_on_its_seeds_range_widened_by_the_margin():
    old = [_row("rnn", s, v, spread=True) for s, v in enumerate((0.60, 0.85, 0.90))]  # range 60-90%
    at = lambda vals: [_row("rnn", s, v, spread=True) for s, v in enumerate(vals)]  # noqa: E731
    assert check.compare(old, at((0.905, 0.905, 0.905)), margin=1.0)[1] == 0  # mean 90.5: inside 59-91
    assert check.compare(old, at((0.92, 0.92, 0.92)), margin=1.0)[1] == 1  # mean 92: outside
    assert check.compare(old, at((0.92, 0.92, 0.92)), margin=2.5)[1] == 0
    assert check.compare(old, at((0.58, 0.58, 0.59)), margin=1.0)[1] == 1  # mean 58.3: below 59
    # a row on one side only
    lines, bad = check.compare(old, at((0.8, 0.8, 0.8))[:2])
    assert bad == 1 and any("only in the committed results" in x for x in lines)


def test_spread_over_seeds_and_the_verdict_on_it():
    rows = [
        {"method": m, "final_test_accuracy": f, "best_test_accuracy": b, "final_train_loss": 0.1}
        for m, f, b in [("a", 0.90, 0.91), ("a", 0.80, 0.92), ("a", 0.85, 0.85), ("b", 0.70, 0.70), ("b", 0.79, 0.79)]
    ]
    st = l2a.mean_over_seeds(rows, lambda r: r["method"])
    a, b = st["a"], st["b"]
    assert (a["final"], a["lo"], a["hi"], a["seeds"]) == (pytest.approx(0.85), 0.80, 0.90, 3)
    assert a["std"] == pytest.approx(0.05)  # sample standard deviation of 0.90, 0.80, 0.85
    assert a["collapsed"] == 1  # 0.92 -> 0.80 lost more than 5 points; 0.91 -> 0.90 did not
    assert l2a.spread(a) == "85.00% [80.00-90.00]"
    assert l2a.versus(a, b) == "above" and l2a.versus(b, a) == "below"
    assert l2a.versus(a, {**b, "hi": 0.81}) == "overlaps"
    assert l2a.collapses(st, str) == (
        "Learned, then lost (best accuracy more than 5 points above the final one), seeds per method: a 1 of 3."
    )


def test_step_cap_shortens_the_aggregate_to_the_median_worker_norm():
    G = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [float("nan"), 0.0]])  # screened norms 5, 1, 10, 0: median 1
    u = torch.tensor([30.0, 40.0])
    assert torch.allclose(cap_step(u, G, 2.0), torch.tensor([1.2, 1.6]), rtol=1e-6)  # length 2 = 2 x the lower median norm 1
    assert torch.equal(cap_step(torch.tensor([0.6, 0.8]), G, 2.0), torch.tensor([0.6, 0.8]))  # shorter: unchanged
    assert cap_step(u, G, math.inf) is u


def test_step_cap_reaches_the_learned_rule_and_is_checked(tmp_path):
    untrained_aggregator(tmp_path, "set_rnn_lstm")
    path = str(tmp_path / "set_rnn_lstm")
    capped = build_aggregator({"name": "learned", "path": path, "step_cap": 0.5}, f_default=0)
    free = build_aggregator({"name": "learned", "path": path}, f_default=0)
    G = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) + 3.0  # aligned rows: the mean is long
    out_free, out_capped = free(G), capped(G)
    med = float(torch.sort(G.norm(dim=1)).values[2])
    assert float(out_free.norm()) > 0.5 * med
    assert float(out_capped.norm()) == pytest.approx(0.5 * med, rel=1e-5)
    assert torch.allclose(out_capped / out_capped.norm(), out_free / out_free.norm(), atol=1e-6)
    with pytest.raises(ConfigError, match="step_cap"):
        build_aggregator({"name": "learned", "path": path, "step_cap": -1.0}, f_default=0)


def _cli(*args, cwd):
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-m", "byzlearn", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_check_refuses_quick_and_a_missing_committed_result(tmp_path):
    r = _cli("reproduce", "draco-table1", "--check", "--quick", cwd=tmp_path)
    assert r.returncode != 0 and "byzlearn: error:" in r.stderr and "drop --quick" in r.stderr
    r = _cli("reproduce", "draco-table1", "--check", cwd=tmp_path)
    assert r.returncode != 0 and "no committed results" in r.stderr and "repository root" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing written
