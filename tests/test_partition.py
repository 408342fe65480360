"""Partitions of a training set over workers, the public hold-out, padded shard tables."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.data import PARTITION_SCHEMES, extreme_split, gamma_similarity_split, load_dataset, pad_shards, partition, split_public
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
    assert PARTITION_SCHEMES == ("iid", "dirichlet", "labels", "gamma_similarity", "extreme")


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
    if scheme != "extreme":  # the extreme split has no randomness (a sort)
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
        assert torch.equal(row[: len(s)], s) and not row[len(s) :].any()


def test_pad_shards_of_a_partition(labels):
    shards = partition(labels, 6, "dirichlet", gen(), alpha=0.3)
    table, sizes = pad_shards(shards)
    assert table.shape == (6, max(len(s) for s in shards))
    mask = torch.arange(table.shape[1]) < sizes[:, None]
    assert torch.equal(table[mask].sort().values, torch.cat(shards).sort().values)


# --- ByzFL's extreme and gamma-similarity splits ------------------------------------------------------
TWELVE = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


def test_byzfl_worked_example():
    """The spec's verified example (ByzFL 0.0.11, h = 3, Python RNG seeded 0)."""
    assert [s.tolist() for s in extreme_split(TWELVE, torch.arange(12), 3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    shards = gamma_similarity_split(TWELVE, torch.arange(12), 3, 0.5, random.Random(0))
    # random.seed(0); shuffle(range(6)) = [4, 2, 1, 0, 5, 3], cut in pairs, then [6, 7], [8, 9], [10, 11]
    assert [s.tolist() for s in shards] == [[4, 2, 6, 7], [1, 0, 8, 9], [5, 3, 10, 11]]
    assert [s.tolist() for s in gamma_similarity_split(TWELVE, torch.arange(12), 3, 0.0, random.Random(0))] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]


def _byzfl_reference(labels, order, h, gamma, seed):
    """ByzFL's formulas written out with numpy and Python lists (sorted zip, array_split)."""
    rng = random.Random(seed)
    order = list(order)
    s = int(len(order) * gamma)
    head = order[:s]
    rng.shuffle(head)
    iid = np.array_split(np.array(head, dtype=np.int64), h)
    tail = order[s:]
    srt = np.array(sorted(zip(labels[tail].tolist(), tail)), dtype=np.int64).reshape(-1, 2)[:, 1]
    niid = np.array_split(srt, h)
    return [np.concatenate([a, b]).tolist() for a, b in zip(iid, niid)]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), h=st.integers(1, 12), c=st.integers(1, 5), gamma=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_gamma_split_matches_byzfl_formulas(n, h, c, gamma, seed):
    y = torch.randint(0, c, (n,), generator=gen(seed))
    order = torch.randperm(n, generator=gen(seed + 1))
    got = gamma_similarity_split(y, order, h, gamma, random.Random(seed))
    assert [s.tolist() for s in got] == _byzfl_reference(y, order.tolist(), h, gamma, seed)


def test_extreme_on_mnist_like_labels_one_or_two_labels_each():
    y = torch.arange(10).repeat_interleave(600)[torch.randperm(6000, generator=gen(3))]  # 10 balanced classes
    shards = partition(y, 10, "extreme", gen())
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(6000))
    assert [len(set(y[s].tolist())) for s in shards] == [1] * 10
    y2 = torch.arange(10).repeat_interleave(torch.arange(500, 600, 10))  # unequal classes: blocks straddle two
    counts = [len(set(y2[s].tolist())) for s in partition(y2, 10, "extreme", gen())]
    assert set(counts) <= {1, 2} and 2 in counts


def test_extreme_and_gamma_on_digits(labels):
    ext = partition(labels, 10, "extreme", gen(1))
    sizes = [len(s) for s in ext]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    held = [sorted(set(labels[s].tolist())) for s in ext]
    assert all(h == list(range(h[0], h[-1] + 1)) for h in held)  # contiguous label ranges
    assert sum(len(h) for h in held) <= 10 + 9  # each of the 9 block boundaries splits at most one class
    assert all(torch.equal(a, b) for a, b in zip(ext, partition(labels, 10, "gamma_similarity", gen(1), gamma=0.0)))
    iid = partition(labels, 10, "gamma_similarity", gen(1), gamma=1.0)
    assert torch.equal(torch.cat(iid).sort().values, torch.arange(len(labels)))
    assert max(len(s) for s in iid) - min(len(s) for s in iid) <= 1
    # more iid share, more label mixing per worker
    ent = [sum(label_entropy(labels[s]) for s in partition(labels, 10, "gamma_similarity", gen(1), gamma=g)) for g in (0.0, 0.3, 1.0)]
    assert ent[0] < ent[1] < ent[2]
    for g in (0.0, 0.25, 0.5, 1.0):
        shards = partition(labels, 10, "gamma_similarity", gen(4), gamma=g)
        assert all(torch.equal(s, s.sort().values) for s in shards)
        assert torch.equal(assert_disjoint(shards, len(labels)).sort().values, torch.arange(len(labels)))


def test_gamma_similarity_is_byzfl_on_the_generators_order(labels):
    g = gen(9)
    order = torch.randperm(len(labels), generator=g)
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=g)))
    want = [s.sort().values for s in gamma_similarity_split(labels, order, 6, 0.4, rng)]
    got = partition(labels, 6, "gamma_similarity", gen(9), gamma=0.4)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("gamma", [-0.1, 1.5, float("nan"), "half", True])
def test_bad_gamma_names_the_key(labels, gamma):
    with pytest.raises(ConfigError, match=r"data\.gamma.*\[0, 1\]"):
        partition(labels, 3, "gamma_similarity", gen(), gamma=gamma)


def test_gamma_split_with_an_empty_worker_is_refused():
    # 3 samples, 3 workers, gamma 0.5: iid part of 1 sample, extreme part of 2: the last worker gets none
    with pytest.raises(ConfigError, match="fewer workers.n"):
        partition(torch.tensor([0, 1, 2]), 3, "gamma_similarity", gen(), gamma=0.5)
