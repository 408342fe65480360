"""MoNNA, Meamed, FABA and CGE: the spec's worked examples, naive reference implementations,
ByzFL's recorded outputs, invariances, robustness, hostile values, requirements and dtypes.

The ByzFL numbers in ``tests/data/byzfl_rules.json`` were recorded from ByzFL 0.0.11 by
``/work/byzfl-venv/bin/python benchmarks/record_byzfl_rules.py`` (see its docstring); the inputs are
rebuilt here from their recipe (``make_batch``) and checked against the recorded checksum.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import byzlearn.aggregators.coordinatewise as C
import byzlearn.aggregators.elimination as E
import byzlearn.aggregators.monna as M
from byzlearn.aggregators import AGGREGATORS, build_aggregator
from byzlearn.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RULES = {"monna": M.monna, "meamed": C.meamed, "faba": E.faba, "cge": E.cge}


def t64(x):
    return torch.tensor(x, dtype=torch.float64)


def rand(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------------------------------------
# naive references: the definitions, written with Python loops over rows and coordinates
# ------------------------------------------------------------------------------------------------
def ref_monna(X, f, idx=0):
    rows = [r for r in X.double()]
    dist = [float(torch.linalg.vector_norm(r - rows[idx])) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (i != idx, dist[i], i))
    return torch.stack([rows[i] for i in order[: len(rows) - f]]).mean(0)


def ref_meamed(X, f):
    X = X.double()
    n, d = X.shape
    out = []
    for k in range(d):
        col = sorted(float(v) for v in X[:, k])
        med = col[n // 2] if n % 2 else 0.5 * (col[n // 2 - 1] + col[n // 2])
        near = sorted(col, key=lambda v: (abs(v - med), v))[: n - f]
        out.append(sum(near) / len(near))
    return t64(out)


def ref_faba(X, f):
    rows = [r for r in X.double()]
    for _ in range(f):
        mu = torch.stack(rows).mean(0)
        dist = [float(torch.linalg.vector_norm(r - mu)) for r in rows]
        rows.pop(max(range(len(rows)), key=lambda i: (dist[i], -i)))
    return torch.stack(rows).mean(0)


def ref_cge(X, f):
    rows = [r for r in X.double()]
    order = sorted(range(len(rows)), key=lambda i: (float(torch.linalg.vector_norm(rows[i])), i))
    return torch.stack([rows[i] for i in order[: len(rows) - f]]).mean(0)


# ------------------------------------------------------------------------------------------------
# the spec's worked examples (checked by hand)
# ------------------------------------------------------------------------------------------------
def test_monna_spec_example():
    X = t64([[0, 0], [1, 0], [0, 2], [10, 10], [2, 2]])
    torch.testing.assert_close(M.monna(X, 2, 0), t64([1 / 3, 2 / 3]), atol=1e-15, rtol=0)
    assert M.monna_neighbours(X, 2, 0).tolist() == [0, 1, 2]


def test_meamed_spec_example():
    x = t64([[0], [1], [3], [10], [4]])
    torch.testing.assert_close(C.meamed(x, 1), t64([2.0]), atol=1e-15, rtol=0)  # {3, 4, 1, 0}
    torch.testing.assert_close(C.meamed(x, 2), t64([8 / 3]), atol=1e-15, rtol=0)  # {3, 4, 1}


def test_meamed_even_n_uses_the_mean_of_the_middle_pair():
    # 0, 1, 5, 6, 100, 101: median 5.5; the 4 nearest are 5, 6, 1 (4.5) and 0 (5.5) -> 3.0
    torch.testing.assert_close(C.meamed(t64([[100], [0], [6], [1], [101], [5]]), 2), t64([3.0]), atol=1e-15, rtol=0)


def test_meamed_can_leave_the_honest_range_with_near_hostile_values():
    # honest 0.1, 2, 2.1 and two hostile zeros: median 0.1, nearest three {0.1, 0, 0} -> 1/30 < 0.1
    torch.testing.assert_close(C.meamed(t64([[0.1], [2], [2.1], [0], [0]]), 2), t64([1 / 30]), atol=1e-15, rtol=0)


# ------------------------------------------------------------------------------------------------
# the definitions against the naive references
# ------------------------------------------------------------------------------------------------
CASES = [(n, d, f) for n in (1, 2, 3, 5, 8, 11) for d in (1, 4, 33) for f in range(0, (n + 1) // 2) if 2 * f < n]


@pytest.mark.parametrize("n,d,f", CASES)
def test_rules_match_their_definitions(n, d, f):
    for seed in range(3):
        X = rand(n, d, 100 * n + 10 * d + seed) + (seed == 2) * 4.0 * (torch.arange(n) < f)[:, None]  # a cluster of f outliers
        for idx in sorted({0, n - 1, n // 2}):
            torch.testing.assert_close(M.monna(X, f, idx), ref_monna(X, f, idx), atol=1e-12, rtol=0)
        torch.testing.assert_close(C.meamed(X, f), ref_meamed(X, f), atol=1e-12, rtol=0)
        torch.testing.assert_close(E.faba(X, f), ref_faba(X, f), atol=1e-12, rtol=0)
        torch.testing.assert_close(E.cge(X, f), ref_cge(X, f), atol=1e-12, rtol=0)
        torch.testing.assert_close(E.cge(X, f, reduction="sum"), ref_cge(X, f) * (n - f), atol=1e-11, rtol=0)
    X = rand(n, d, 7)
    assert torch.equal(C.meamed(X, 0), X.mean(0)) and torch.equal(E.faba(X, 0), X.mean(0))


def test_cge_allows_f_up_to_n_minus_one():
    X = rand(6, 3, 1)
    torch.testing.assert_close(E.cge(X, 5), ref_cge(X, 5), atol=1e-15, rtol=0)
    assert int(E.cge_kept(X, 5)[0]) == int(torch.linalg.vector_norm(X, dim=1).argmin())


def test_ties_go_to_the_lowest_index():
    X = t64([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0], [0, 0]])  # rows 0-3 equally far from row 4 and the origin
    assert M.monna_neighbours(X, 2, 4).tolist() == [4, 0, 1]
    assert E.cge_kept(X, 2).tolist() == [4, 0, 1]
    assert E.faba_survivors(X, 1).tolist() == [False, True, True, True, True]


# ------------------------------------------------------------------------------------------------
# agreement with ByzFL 0.0.11 (recorded)
# ------------------------------------------------------------------------------------------------
def _recorder():
    spec = importlib.util.spec_from_file_location("record_byzfl_rules", ROOT / "benchmarks" / "record_byzfl_rules.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RECORDED = json.loads((ROOT / "tests" / "data" / "byzfl_rules.json").read_text())


@pytest.mark.parametrize("rule", ["monna", "meamed"])
def test_agrees_with_byzfl(rule):
    """ByzFL 0.0.11's MoNNA / Meamed outputs (recorded by benchmarks/record_byzfl_rules.py) on 33-36 batches each."""
    rec = _recorder()
    cases = RECORDED[rule]
    assert len(cases) >= 30 and RECORDED["recorded_with"]["byzfl"] == "0.0.11"
    worst = 0.0
    for c in cases:
        rows = rec.make_batch(c["seed"], c["n"], c["d"], c["shift"])
        assert rec.checksum(rows) == c["checksum"], "the input recipe no longer rebuilds the recorded batch"
        X = t64(rows)
        out = M.monna(X, c["f"], c["idx"]) if rule == "monna" else C.meamed(X, c["f"])
        worst = max(worst, float((out - t64(c["output"])).abs().max()))
    assert worst <= 1e-13, worst


# ------------------------------------------------------------------------------------------------
# invariances
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,f", [(5, 2), (9, 3), (12, 5)])
def test_permutation_invariance(n, f):
    X = rand(n, 6, n) + 3.0 * (torch.arange(n) < f)[:, None]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    assert torch.equal(C.meamed(X[perm], f), C.meamed(X, f))  # computed from the sorted columns: bit for bit
    torch.testing.assert_close(E.faba(X[perm], f), E.faba(X, f), atol=1e-14, rtol=0)
    torch.testing.assert_close(E.cge(X[perm], f), E.cge(X, f), atol=1e-14, rtol=0)
    for idx in range(n):  # MoNNA: the same trusted row wherever it sits
        pos = int((perm == idx).nonzero())
        torch.testing.assert_close(M.monna(X[perm], f, pos), M.monna(X, f, idx), atol=1e-14, rtol=0)


def test_translation_and_scale_equivariance():
    X, c = rand(9, 5, 3), rand(1, 5, 4)[0] * 10
    f = 3
    for fn in (C.meamed, E.faba, lambda G, f: M.monna(G, f, 2)):
        torch.testing.assert_close(fn(X + c, f), fn(X, f) + c, atol=1e-12, rtol=0)
        torch.testing.assert_close(fn(-2.5 * X, f), -2.5 * fn(X, f), atol=1e-12, rtol=0)
    # CGE is norm-based: equivariant under rotations and positive scalings, not under translations
    Q, _ = torch.linalg.qr(rand(5, 5, 5))
    torch.testing.assert_close(E.cge(X @ Q, f), E.cge(X, f) @ Q, atol=1e-12, rtol=0)
    torch.testing.assert_close(E.cge(3.0 * X, f), 3.0 * E.cge(X, f), atol=1e-12, rtol=0)
    Y = t64([[1.0], [2.0], [3.0]])
    assert float(E.cge(Y, 1)) == 1.5 and float(E.cge(Y - 3.0, 1)) == -0.5  # keeps {1, 2}, then {2, 3} - 3


def test_monna_depends_on_idx():
    # cluster A (rows 0-2, near 0), cluster B (rows 3-4, near 10); n - f = 3 neighbours
    X = t64([[0.0, 0.1], [0.2, 0.0], [0.1, 0.2], [10.0, 10.0], [10.2, 9.9]])
    torch.testing.assert_close(M.monna(X, 2, 0), X[:3].mean(0))
    for idx in (3, 4):  # the two B rows and the A row nearest to them (row 2)
        torch.testing.assert_close(M.monna(X, 2, idx), X[[2, 3, 4]].mean(0))
        assert M.monna_neighbours(X, 2, idx)[0] == idx


# ------------------------------------------------------------------------------------------------
# robustness: f far outliers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,f", [(5, 2), (7, 3), (10, 4), (13, 6)])
def test_far_outliers_are_removed(n, f):
    g = torch.Generator().manual_seed(n)
    H = rand(n - f, 8, n + 1)
    sign = torch.where(torch.rand(f, 8, generator=g) < 0.5, -1.0, 1.0).double()
    B = H.mean(0) + 1e4 * sign * (1 + torch.rand(f, 8, generator=g, dtype=torch.float64))  # far in every coordinate
    X = torch.cat([B, H])[torch.randperm(n, generator=g)]
    honest = (X[:, None, :] == H[None]).all(-1).any(1)
    first_honest = int(honest.nonzero()[0])
    torch.testing.assert_close(C.meamed(X, f), H.mean(0), atol=1e-12, rtol=0)  # coordinate-far values never enter the window
    torch.testing.assert_close(E.faba(X, f), H.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(M.monna(X, f, first_honest), H.mean(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(E.cge(X, f), H.mean(0), atol=1e-12, rtol=0)  # far here also means larger norms
    assert E.faba_survivors(X, f).tolist() == honest.tolist()


def test_cge_keeps_small_norm_outliers_and_stays_within_the_honest_norms():
    H = rand(6, 4, 8) + 5.0
    X = torch.cat([torch.zeros(2, 4, dtype=torch.float64), H])  # two hostile zero rows: the smallest norms
    out = E.cge(X, 2)
    torch.testing.assert_close(
        out, torch.cat([torch.zeros(2, 4, dtype=torch.float64), H[torch.linalg.vector_norm(H, dim=1).argsort()[:4]]]).mean(0)
    )
    assert float(torch.linalg.vector_norm(out)) <= float(torch.linalg.vector_norm(H, dim=1).max())


# ------------------------------------------------------------------------------------------------
# hostile values: NaN / ±inf rows, huge rows, low precision
# ------------------------------------------------------------------------------------------------
HOSTILE = {  # finite entries of a hostile row are copies of an honest row's (values near the honest ones could move Meamed)
    "nan_row": lambda h: torch.full_like(h, math.nan),
    "nan_entry": lambda h: h.clone().index_fill_(0, torch.tensor([h.numel() // 2]), math.nan),
    "inf": lambda h: h.clone().index_fill_(0, torch.tensor([0]), math.inf),
    "-inf": lambda h: h.clone().index_fill_(0, torch.tensor([h.numel() - 1]), -math.inf),
    "max": lambda h: torch.finfo(h.dtype).max * torch.where(torch.arange(h.numel()) % 2 == 0, 1.0, -1.0).to(h.dtype),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kinds", [["nan_row"], ["nan_entry", "inf"], ["-inf", "max", "nan_row"], ["max", "max"]])
def test_non_finite_and_huge_rows_are_survived(dtype, kinds):
    f, d = len(kinds), 6
    n = 2 * f + 2
    H = rand(n - f, d, 3 * f, dtype)
    X = torch.cat([torch.stack([HOSTILE[k](H[i]) for i, k in enumerate(kinds)]), H])  # hostile rows first
    Hd = H.double()
    for name, fn in RULES.items():
        kw = {"idx": n - 1} if name == "monna" else {}  # MoNNA: an honest trusted row
        out = fn(X, f, **kw)
        assert out.dtype == dtype and out.shape == (d,) and bool(torch.isfinite(out).all()), (name, kinds)
        tol = 4 * torch.finfo(dtype).eps * float(Hd.abs().max())
        assert bool(((out.double() >= Hd.min(0).values - tol) & (out.double() <= Hd.max(0).values + tol)).all()), (name, kinds)
    if dtype == torch.float64:  # every hostile row is removed: the honest mean
        for name in ("faba", "cge", "monna"):
            kw = {"idx": n - 1} if name == "monna" else {}
            torch.testing.assert_close(RULES[name](X, f, **kw), H.mean(0), atol=1e-15, rtol=0)


@pytest.mark.parametrize("f,k", [(2, 1), (3, 1), (3, 2)])
def test_non_finite_rows_are_removed_first(f, k):
    """k < f NaN/inf rows: removed first, then the rule runs on the finite rows with f - k."""
    n = 2 * f + 1
    H = rand(n - k, 5, 10 * f + k)
    bad = torch.full((k, 5), math.nan, dtype=torch.float64)
    bad[0] = torch.tensor([1.0, math.inf, 0.0, 0.0, 0.0])
    X = torch.cat([H[:2], bad, H[2:]])  # finite rows in the same order
    torch.testing.assert_close(E.faba(X, f), E.faba(H, f - k), atol=1e-14, rtol=0)
    torch.testing.assert_close(E.cge(X, f), E.cge(H, f - k), atol=1e-14, rtol=0)
    torch.testing.assert_close(M.monna(X, f, 1), M.monna(H, f - k, 1), atol=1e-14, rtol=0)
    assert bool(torch.isfinite(C.meamed(X, f)).all())


def test_non_finite_reference_row_gives_a_finite_monna():
    X = rand(5, 3, 9)
    X[0] = math.nan
    out = M.monna(X, 2, 0)  # no distances from a NaN row: idx and the lowest-index finite rows, NaN left out
    torch.testing.assert_close(out, X[1:3].mean(0), atol=1e-15, rtol=0)


def test_distances_of_huge_and_tiny_rows_are_exact_enough():
    for dtype in (torch.float32, torch.float64):
        info = torch.finfo(dtype)
        for scale in (info.max / 8, math.sqrt(info.tiny) / 16):
            H = (rand(7, 5, 11) / 4 * scale).to(dtype)  # differences overflow / squares underflow the dtype
            U = H.double() / scale  # the references, in units of scale (no overflow, no underflow)
            for f in (1, 3):
                tol = 8 * info.eps * scale
                torch.testing.assert_close(M.monna(H, f, 3).double(), ref_monna(U, f, 3) * scale, atol=tol, rtol=0)
                torch.testing.assert_close(E.cge(H, f).double(), ref_cge(U, f) * scale, atol=tol, rtol=0)
                torch.testing.assert_close(E.faba(H, f).double(), ref_faba(U, f) * scale, atol=tol, rtol=0)
                torch.testing.assert_close(C.meamed(H, f).double(), ref_meamed(U, f) * scale, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_returns_its_dtype_and_matches_float64(dtype):
    X = rand(9, 40, 2, dtype)
    Xd = X.double()  # the same (rounded) inputs in float64
    tol = 4 * torch.finfo(dtype).eps * float(Xd.abs().max())
    for fn in RULES.values():
        out = fn(X, 3)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), fn(Xd, 3), atol=tol, rtol=0)


# ------------------------------------------------------------------------------------------------
# requirements: ValueError from the functions, ConfigError from the objects; registry
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,fn,n,f,cond",
    [
        ("monna", M.monna, 4, 2, "f < n/2 (n=4, f=2)"),
        ("meamed", C.meamed, 6, 3, "n > 2f (f < n/2) (n=6, f=3)"),
        ("faba", E.faba, 4, 2, "f < n/2 (n=4, f=2)"),
        ("cge", E.cge, 3, 3, "f < n (n=3, f=3)"),
    ],
)
def test_requirement(name, fn, n, f, cond):
    agg = build_aggregator({"name": name}, f_default=f)
    assert agg.requirement(n) == cond
    assert agg.requirement(n + 1) is None
    with pytest.raises(ConfigError) as e:
        agg(rand(n, 3, 0))
    assert cond in str(e.value)
    with pytest.raises(ValueError) as e2:
        fn(rand(n, 3, 0), f)
    assert cond in str(e2.value) and not isinstance(e2.value, ConfigError)
    fn(rand(n + 1, 3, 0), f)  # one more row is enough


def test_monna_idx_requirement_and_parameters():
    agg = build_aggregator({"name": "monna", "idx": 5}, f_default=1)
    assert agg.requirement(5) == "idx < n (n=5, idx=5)" and agg.requirement(6) is None
    with pytest.raises(ConfigError, match=r"idx < n \(n=5, idx=5\)"):
        agg(rand(5, 2, 0))
    with pytest.raises(ValueError, match=r"0 <= idx < n \(n=5, idx=5\)"):
        M.monna(rand(5, 2, 0), 1, 5)
    with pytest.raises(ConfigError, match="idx"):
        build_aggregator({"name": "monna", "idx": -1}, f_default=1)
    X = rand(7, 3, 1)
    torch.testing.assert_close(build_aggregator({"name": "monna", "idx": 4}, f_default=2)(X), M.monna(X, 2, 4))


def test_cge_reduction_parameter():
    X = rand(7, 3, 2)
    torch.testing.assert_close(build_aggregator({"name": "cge", "reduction": "sum"}, f_default=2)(X), 5 * E.cge(X, 2))
    with pytest.raises(ConfigError, match="reduction"):
        build_aggregator({"name": "cge", "reduction": "median"}, f_default=1)
    with pytest.raises(ValueError, match="reduction"):
        E.cge(X, 1, reduction="max")


def test_registered_objects_and_exports():
    for name, fn in RULES.items():
        assert name in AGGREGATORS.names()
        X = rand(9, 4, 3)
        torch.testing.assert_close(build_aggregator({"name": name}, f_default=3)(X), fn(X, 3))
    assert {"meamed", "Meamed", "median_window_mean"} & set(C.__all__) == {"meamed", "Meamed"}
    assert set(M.__all__) == {"monna", "monna_neighbours", "MoNNA"}
    assert set(E.__all__) == {"faba", "faba_survivors", "cge", "cge_kept", "FABA", "CGE"}


# ------------------------------------------------------------------------------------------------
# the hostile-batch harness of tests/test_properties.py on these rules, plus MoNNA's and CGE's own
# properties (the harness may put a hostile row at idx, and CGE keeps small-norm rows wherever they are)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RULES))
def test_hostile_batches_property(name):
    TP = pytest.importorskip("test_properties")
    cache = {}

    def get(f, idx=0):
        if (f, idx) not in cache:
            cache[f, idx] = build_aggregator({"name": name, **({"idx": idx} if idx else {})}, f_default=f)
        return cache[f, idx]

    @TP.SETTINGS
    @TP.BATCHES
    def run(**kw):
        b = TP.batch(lambda f: TP.smallest_n(get(f), f), **kw)
        TP.check_rule(name, get(b.f), b)
        G, honest = b.G, b.honest
        if name == "monna" and b.far_or_copies():  # trusted row honest: an average of honest rows
            idx = next(i for i, row in enumerate(G) if any(torch.equal(row, h) for h in honest))
            out = get(b.f, idx)(G.clone(), b.ctx)
            assert torch.isfinite(out).all() and TP.inside_honest_range(out, honest), (b.kinds, idx)
        if name == "cge":  # no longer than the longest honest row
            out = get(b.f)(G.clone(), b.ctx)
            M_ = float(honest.double().abs().max()) or 1.0
            top = float((honest.double() / M_).norm(dim=1).max())
            slack = TP.tolerance(honest) / M_ * math.sqrt(G.shape[1])
            assert float((out.double() / M_).norm()) <= top * (1 + 8 * torch.finfo(G.dtype).eps) + slack, b.kinds

    run()
