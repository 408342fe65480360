"""The rewritten hot-path kernels of issue 19 give the outputs of the code they replace.

Each fast kernel is compared with the plain PyTorch expression it stands in for: bit for bit where the
committed trajectories depend on its bits (ALIE's std), to float tolerance otherwise; NaN/Inf rows keep
their semantics.
"""

from __future__ import annotations

import pytest
import torch

from byzlearn.attacks.omniscient import alie_vector, coordinate_std


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a.view(torch.int32) == b.view(torch.int32)).all())


@pytest.mark.parametrize("n", [2, 3, 5, 13, 45, 100])
def test_coordinate_std_is_torch_std_bit_for_bit(n):
    g = torch.Generator().manual_seed(n)
    for e in (-8, -2, 0, 3, 8):
        d = 30_000 if n < 100 else 9_000  # spans several column blocks at every n
        X = torch.randn(n, d, generator=g) * 10.0**e + torch.randn(1, d, generator=g) * 10.0 ** (e + 2)
        assert _same_bits(coordinate_std(X), torch.std(X, dim=0))


def test_coordinate_std_views_and_edge_rows():
    X = torch.randn(20, 7001, generator=torch.Generator().manual_seed(1))
    V = X[3:16, 1:]  # a non-contiguous view
    assert _same_bits(coordinate_std(V), torch.std(V, dim=0))
    assert torch.equal(coordinate_std(X[:1]), torch.zeros(7001))
    C = torch.full((6, 1000), 3.25)  # constant columns: exactly 0
    assert torch.equal(coordinate_std(C), torch.zeros(1000))


def test_coordinate_std_non_finite_rows_as_torch():
    X = torch.randn(13, 5000, generator=torch.Generator().manual_seed(2))
    X[2, :10] = float("nan")
    X[4, 10:20] = float("inf")
    X[5, 20:30] = -float("inf")
    X[6, 30:40] = 3.0e38  # finite, but the squares overflow float32 (not float64)
    X[7, 30:40] = -3.0e38
    got, ref = coordinate_std(X), torch.std(X, dim=0)
    assert torch.equal(torch.isnan(got), torch.isnan(ref)) and bool(torch.isnan(got[:20]).all())
    keep = ~torch.isnan(ref)
    assert _same_bits(got[keep], ref[keep])


def test_coordinate_std_other_dtypes_fall_back_to_torch():
    X = torch.randn(9, 1000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(coordinate_std(X), torch.std(X, dim=0))
    H = X.to(torch.bfloat16)
    assert torch.equal(coordinate_std(H), torch.std(H, dim=0))


def test_alie_vector_unchanged():
    X = torch.randn(10, 20_000, generator=torch.Generator().manual_seed(4))
    assert _same_bits(alie_vector(X, 1.5), X.mean(dim=0) - 1.5 * torch.std(X, dim=0))


# -- the sorting network of sort_workers (small n) -------------------------------------------------


def _hostile_batch(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    u = torch.rand(n, d, generator=g)
    X[u < 0.05] = float("nan")
    X[(u >= 0.05) & (u < 0.08)] = float("inf")
    X[(u >= 0.08) & (u < 0.11)] = -float("inf")
    X[(u >= 0.11) & (u < 0.25)] = 1.0  # ties
    X[(u >= 0.25) & (u < 0.28)] = -0.0
    X[(u >= 0.28) & (u < 0.31)] = 3.4e38
    return X


@pytest.mark.parametrize("n", list(range(2, 19)))
def test_sort_workers_network_equals_numpy_sort(n):
    import numpy as np

    from byzlearn.aggregators._finite import sort_workers

    X = _hostile_batch(n, 40_000, n)  # > 2 blocks of 16,384 columns: the threaded path
    got = sort_workers(X).numpy()
    ref = np.sort(X.numpy(), axis=0)  # numpy sorts NaN last
    assert np.array_equal(got, ref, equal_nan=True)
    small = X[:, :333]  # one partial block, no threads
    assert np.array_equal(sort_workers(small).numpy(), np.sort(small.numpy(), axis=0), equal_nan=True)


def test_sortnet_network_sorts_every_zero_one_input():
    """The 0-1 principle (Knuth, TAOCP 5.3.4): a comparator network sorts every input iff it sorts all 2^n 0-1 inputs."""
    import numpy as np

    from byzlearn.aggregators._sortnet import NETWORK_MAX_ROWS, network_sort_block

    for n in range(2, 17):
        bits = ((np.arange(2**n)[None, :] >> np.arange(n)[:, None]) & 1).astype(np.float32)
        network_sort_block(bits, 0, bits.shape[1])
        assert (np.diff(bits, axis=0) >= 0).all(), n
    assert NETWORK_MAX_ROWS >= 16


@pytest.mark.parametrize("rule", ["trimmed_mean", "median", "meamed", "bulyan"])
def test_sort_rules_give_the_numpy_sort_bits(rule, monkeypatch):
    """The rules that read the sorted batch give the bits they gave with numpy's sort (the committed trajectories)."""
    import numpy as np

    import byzlearn.aggregators._finite as fin
    from byzlearn.aggregators import functional as Fn

    n, f = (15, 3) if rule == "bulyan" else (13, 3)
    X = torch.randn(n, 20_000, generator=torch.Generator().manual_seed(7))
    X[0, :50] = float("nan")
    X[1, 50:100] = float("inf")
    fn = getattr(Fn, rule)
    args = (X,) if rule == "median" else (X, f)
    got = fn(*args)
    monkeypatch.setattr(fin, "NETWORK_MAX_ROWS", 0)  # force the numpy sort path
    ref = fn(*args)
    assert np.array_equal(got.numpy(), ref.numpy(), equal_nan=True)
