"""Partitions of a training set over workers, the public hold-out, padded shard tables."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.data import PARTITION_SCHEMES, load_dataset, pad_shards, partition, split_public
from byzlearn.registry import ConfigError


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return load_dataset("digits").y_train  # real labels: 1437 samples, 10 classes


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_disjoint(shards, n: int) -> torch.Tensor:
    allidx = torch.cat(shards)
    assert all(s.dtype == torch.int64 and s.dim() == 1 for s in shards)
    assert allidx.unique().numel() == allidx.numel(), "shards overlap"
    assert allidx.numel() == 0 or (allidx.min() >= 0 and allidx.max() < n)
    return allidx


def label_entropy(y: torch.Tensor) -> float:
    p = torch.bincount(y).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum())


def test_schemes_named():
    assert PARTITION_SCHEMES == ("iid", "dirichlet", "labels")


@pytest.mark.parametrize("n_workers", [1, 7, 10, 100])
def test_iid_disjoint_covering_balanced(labels, n_workers):
    shards = partition(labels, n_workers, "iid", gen())
    assert len(shards) == n_workers
    allidx = assert_disjoint(shards, len(labels))
    assert torch.equal(allidx.sort().values, torch.arange(len(labels)))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_iid_one_sample_per_worker():
    shards = partition(torch.arange(5) % 2, 5, "iid", gen())
    assert sorted(int(s) for s in torch.cat(shards)) == list(range(5))


def test_iid_shards_look_like_the_whole(labels):
    shards = partition(labels, 5, "iid", gen())
    whole = label_entropy(labels)
    assert all(label_entropy(labels[s]) > 0.95 * whole for s in shards)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 5.0])
def test_dirichlet_disjoint_covering_min_size(labels, alpha):
    shards = partition(labels, 10, "dirichlet", gen(1), alpha=alpha, min_size=10)
    allidx = assert_disjoint(shards, len(labels))
    assert allidx.numel() == len(labels)
    assert min(len(s) for s in shards) >= 10


def test_dirichlet_skew_grows_as_alpha_shrinks(labels):
    def mean_entropy(alpha):
        shards = partition(labels, 10, "dirichlet", gen(2), alpha=alpha)
        return sum(label_entropy(labels[s]) for s in shards) / len(shards)

    low, mid, high = mean_entropy(0.1), mean_entropy(1.0), mean_entropy(100.0)
    assert low < mid < high
    assert high > 0.95 * math.log(10)  # near-uniform label mix
    assert low < 0.6 * math.log(10)  # a few dominant labels per worker


@pytest.mark.parametrize("k", [1, 2, 3, 10])
@pytest.mark.parametrize("n_workers", [4, 10, 25])
def test_labels_exactly_k_classes_evenly_used(labels, k, n_workers):
    shards = partition(labels, n_workers, "labels", gen(3), labels_per_worker=k)
    assert_disjoint(shards, len(labels))
    held = [set(labels[s].tolist()) for s in shards]
    assert all(len(h) == k for h in held)
    usage = torch.tensor([sum(c in h for h in held) for c in range(10)])
    assert usage.sum() == n_workers * k and usage.max() - usage.min() <= 1
    # a class's samples are split near-evenly among its holders, and all of a used class is used
    for c in range(10):
        parts = [int((labels[s] == c).sum()) for s, h in zip(shards, held) if c in h]
        if parts:
            assert max(parts) - min(parts) <= 1 and sum(parts) == int((labels == c).sum())


def test_labels_with_non_contiguous_class_ids():
    y = torch.tensor([3, 7, 9] * 20)
    shards = partition(y, 6, "labels", gen(), labels_per_worker=2)
    assert all(len(set(y[s].tolist())) == 2 for s in shards)


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_deterministic_for_a_seed_and_only_the_generator(labels, scheme):
    torch.manual_seed(123)
    a = partition(labels, 8, scheme, gen(5))
    torch.manual_seed(456)  # the global RNG must not matter
    b = partition(labels, 8, scheme, gen(5))
    c = partition(labels, 8, scheme, gen(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(n_workers=3, scheme="shards"), "data.partition"),
        (dict(n_workers=3, scheme="dirichlet", alpha=0.0), "data.alpha"),
        (dict(n_workers=3, scheme="dirichlet", alpha=-1.0), "data.alpha"),
        (dict(n_workers=3, scheme="labels", labels_per_worker=0), "data.labels_per_worker"),
        (dict(n_workers=3, scheme="labels", labels_per_worker=11), "data.labels_per_worker"),
        (dict(n_workers=1438, scheme="iid"), "workers.n"),
        (dict(n_workers=0, scheme="iid"), "workers.n"),
    ],
)
def test_bad_settings_name_the_key(labels, kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        partition(labels, generator=gen(), **kwargs)


def test_unknown_scheme_lists_the_schemes(labels):
    with pytest.raises(ConfigError, match="iid, dirichlet, labels"):
        partition(labels, 3, "sharded", gen())


def test_dirichlet_impossible_min_size_suggests_fix(labels):
    with pytest.raises(ConfigError, match="larger data.alpha or fewer workers"):
        partition(labels, 100, "dirichlet", gen(), alpha=0.001, min_size=10)


def test_labels_too_many_holders_for_a_class():
    y = torch.tensor([0] * 3 + [1] * 50)
    with pytest.raises(ConfigError, match="class 0"):
        partition(y, 10, "labels", gen(), labels_per_worker=2)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 300),
    n_workers=st.integers(1, 30),
    n_classes=st.integers(1, 6),
    scheme=st.sampled_from(PARTITION_SCHEMES),
    seed=st.integers(0, 2**31),
)
def test_partition_invariants(n, n_workers, n_classes, scheme, seed):
    """Any partition that succeeds is disjoint, in range, gives every worker a sample; iid covers all."""
    y = torch.randint(0, n_classes, (n,), generator=gen(seed))
    try:
        shards = partition(y, n_workers, scheme, gen(seed), alpha=1.0, labels_per_worker=1)
    except ConfigError:
        assert n_workers > n or scheme != "iid"
        return
    assert len(shards) == n_workers
    allidx = assert_disjoint(shards, n)
    assert min(len(s) for s in shards) >= 1
    if scheme in ("iid", "dirichlet"):
        assert allidx.numel() == n


def test_split_public(labels):
    n = len(labels)
    train, public = split_public(n, 100, gen(7))
    assert public.numel() == 100 and train.numel() == n - 100
    assert torch.equal(torch.cat([train, public]).sort().values, torch.arange(n))
    train2, public2 = split_public(n, 100, gen(7))
    assert torch.equal(public, public2) and torch.equal(train, train2)
    assert split_public(n, 0, gen())[1].numel() == 0
    with pytest.raises(ConfigError, match="data.public_size"):
        split_public(n, n, gen())


def test_pad_shards():
    shards = [torch.tensor([5, 2, 9]), torch.tensor([7]), torch.tensor([], dtype=torch.long), torch.tensor([1, 3])]
    table, sizes = pad_shards(shards)
    assert table.dtype == sizes.dtype == torch.int64
    assert table.shape == (4, 3) and sizes.tolist() == [3, 1, 0, 2]
    for row, s in zip(table, shards):
        assert torch.equal(row[: len(s)], s) and not row[len(s):].any()


def test_pad_shards_of_a_partition(labels):
    shards = partition(labels, 6, "dirichlet", gen(), alpha=0.3)
    table, sizes = pad_shards(shards)
    assert table.shape == (6, max(len(s) for s in shards))
    mask = torch.arange(table.shape[1]) < sizes[:, None]
    assert torch.equal(table[mask].sort().values, torch.cat(shards).sort().values)
