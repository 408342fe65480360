"""Splitting a training set over workers (iid or label-skewed), a public hold-out, padded shard tables.

All randomness comes from the ``torch.Generator`` passed in, so a seed fixes the result.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import Tensor

from ..registry import ConfigError

PARTITION_SCHEMES = ("iid", "dirichlet", "labels", "gamma_similarity", "extreme")
MAX_DRAWS = 100


def partition(
    labels: Tensor,
    n_workers: int,
    scheme: str,
    generator: torch.Generator,
    alpha: float = 0.5,
    labels_per_worker: int = 2,
    min_size: int = 1,
    gamma: float = 0.5,
) -> list[Tensor]:
    """Disjoint ``int64`` index tensors into ``labels``, one per worker (each sorted ascending).

    ``iid``: a random permutation cut into near-equal parts (all samples used). ``dirichlet``: for
    each class, worker proportions ~ Dirichlet(alpha) (Hsu et al. 2019), redrawn until every worker
    has ``min_size`` samples. ``labels``: every worker holds exactly ``labels_per_worker`` classes,
    classes used as evenly as possible, each class's samples split evenly among its holders.
    ``extreme`` and ``gamma_similarity`` are ByzFL 0.0.11's ``DataDistributor`` splits
    ``extreme_niid`` and ``gamma_similarity_niid`` (see ``gamma_similarity_split``); the index order
    comes from ``torch.randperm`` on ``generator`` and ByzFL's Python ``random.shuffle`` from a
    ``random.Random`` seeded from it. Unlike ByzFL, which may hand a client an empty shard, a split
    leaving a worker under ``min_size`` samples is refused.
    """
    if scheme not in PARTITION_SCHEMES:
        raise ConfigError(f"data.partition = {scheme!r} is unknown; choose one of: {', '.join(PARTITION_SCHEMES)}")
    labels = torch.as_tensor(labels).long().reshape(-1)
    n = labels.numel()
    if n_workers < 1:
        raise ConfigError(f"workers.n = {n_workers} must be at least 1")
    if n_workers > n:
        raise ConfigError(f"workers.n = {n_workers} exceeds the {n} training samples to partition; use fewer workers")
    if scheme == "iid":
        perm = torch.randperm(n, generator=generator)
        return [s.sort().values for s in torch.tensor_split(perm, n_workers)]
    if scheme in ("extreme", "gamma_similarity"):
        if scheme == "extreme":  # no randomness: the sort fixes the order
            parts = extreme_split(labels, torch.arange(n), n_workers)
        else:
            g = _check_gamma(gamma)
            order = torch.randperm(n, generator=generator)
            rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
            parts = gamma_similarity_split(labels, order, n_workers, g, rng)
        shards = [s.sort().values for s in parts]
        smallest = min(s.numel() for s in shards)
        if smallest < min_size:
            raise ConfigError(
                f"{scheme} partition leaves a worker with {smallest} sample(s) (< {min_size}) "
                f"({n} samples over workers.n = {n_workers}); use fewer workers.n"
            )
        return shards
    if min_size * n_workers > n:
        raise ConfigError(
            f"workers.n = {n_workers} workers with at least {min_size} sample(s) each need "
            f"{n_workers * min_size} samples, but there are only {n}; use fewer workers"
        )
    if scheme == "dirichlet":
        owner = _dirichlet_owners(labels, n_workers, generator, alpha, min_size)
    else:
        owner = _label_owners(labels, n_workers, generator, labels_per_worker)
    return _group(owner, n_workers, min_size, scheme)


def _check_gamma(gamma: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
        raise ConfigError(f"data.gamma = {gamma!r} must be a number in [0, 1] (the iid fraction: 1 is iid, 0 is the extreme split)")
    return float(gamma)


def extreme_split(labels: Tensor, idx: Tensor, n_workers: int) -> list[Tensor]:
    """ByzFL's ``extreme_niid``: the (label, index) pairs of ``idx`` sorted ascending, cut into
    ``n_workers`` contiguous blocks whose sizes differ by at most 1, larger first (``array_split``)."""
    idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1).sort().values
    by_label = idx[torch.argsort(torch.as_tensor(labels)[idx], stable=True)]  # stable: ties keep ascending index order
    return list(torch.tensor_split(by_label, n_workers))


def gamma_similarity_split(labels: Tensor, order: Tensor, n_workers: int, gamma: float, rng: random.Random) -> list[Tensor]:
    """ByzFL's ``gamma_similarity_niid`` on the indices ``order`` (in that order), unsorted.

    With s = int(len(order) * gamma): ``order[:s]`` is shuffled by ``rng.shuffle`` (ByzFL: Python's
    ``random.shuffle``) and cut into ``n_workers`` near-equal parts, larger first; ``order[s:]`` gets
    the ``extreme_split``; worker i's shard is its iid part followed by its extreme part. gamma = 1
    is iid, gamma = 0 the extreme split.
    """
    labels = torch.as_tensor(labels).long().reshape(-1)
    order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
    s = int(order.numel() * _check_gamma(gamma))
    head = order[:s].tolist()
    rng.shuffle(head)
    iid = torch.tensor_split(torch.tensor(head, dtype=torch.long), n_workers)
    niid = extreme_split(labels, order[s:], n_workers)
    return [torch.cat([a, b]) for a, b in zip(iid, niid)]


def _class_members(labels: Tensor, generator: torch.Generator) -> list[Tensor]:
    """For each class present, its sample indices in random order."""
    order = torch.argsort(labels, stable=True)
    counts = torch.unique(labels, return_counts=True)[1]
    groups = torch.split(order, counts.tolist())
    return [g[torch.randperm(g.numel(), generator=generator)] for g in groups]


def _dirichlet_owners(labels: Tensor, n_workers: int, generator: torch.Generator, alpha: float, min_size: int) -> Tensor:
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"data.alpha = {alpha!r} must be a finite number > 0 (smaller means more label skew)")
    members = _class_members(labels, generator)
    owner = torch.empty(labels.numel(), dtype=torch.long)
    for _ in range(MAX_DRAWS):
        # numpy's Dirichlet sampler (stable for tiny alpha), seeded from the caller's generator
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        props = rng.dirichlet(np.full(n_workers, float(alpha)), size=len(members))
        for p, idx in zip(props, members):
            bounds = np.floor(np.cumsum(p) * idx.numel()).astype(np.int64)
            bounds[-1] = idx.numel()
            owner[idx] = torch.searchsorted(torch.from_numpy(bounds), torch.arange(idx.numel()), right=True)
        if torch.bincount(owner, minlength=n_workers).min() >= min_size:
            return owner
    raise ConfigError(
        f"dirichlet partition: after {MAX_DRAWS} draws some worker still had fewer than {min_size} sample(s) "
        f"(data.alpha = {alpha}, workers.n = {n_workers}, {labels.numel()} samples); "
        "use a larger data.alpha or fewer workers"
    )


def _label_owners(labels: Tensor, n_workers: int, generator: torch.Generator, k: int) -> Tensor:
    members = _class_members(labels, generator)
    n_classes = len(members)
    if not (isinstance(k, int) and 1 <= k <= n_classes):
        raise ConfigError(f"data.labels_per_worker = {k!r} must be an integer in [1, {n_classes}] (the number of classes)")
    # each worker takes the k least-used classes so far (random tie-break): usage counts differ by <= 1
    usage = torch.zeros(n_classes)
    holders: list[list[int]] = [[] for _ in range(n_classes)]
    for w in range(n_workers):
        chosen = (usage + torch.rand(n_classes, generator=generator)).topk(k, largest=False).indices
        usage[chosen] += 1
        for c in chosen.tolist():
            holders[c].append(w)
    owner = torch.full((labels.numel(),), -1, dtype=torch.long)
    for idx, ws in zip(members, holders):
        if not ws:  # fewer slots than classes: this class is unused
            continue
        if len(ws) > idx.numel():
            raise ConfigError(
                f"labels partition: class {int(labels[idx[0]])} has {idx.numel()} samples but {len(ws)} workers "
                "hold it; use fewer workers.n or a smaller data.labels_per_worker"
            )
        for w, part in zip(ws, torch.tensor_split(idx, len(ws))):
            owner[part] = w
    return owner


def _group(owner: Tensor, n_workers: int, min_size: int, scheme: str) -> list[Tensor]:
    """Indices grouped by owner (``-1``: unused), checking every worker has ``min_size`` samples."""
    used = (owner >= 0).nonzero().squeeze(1)
    counts = torch.bincount(owner[used], minlength=n_workers)
    if counts.min() < min_size:
        raise ConfigError(f"{scheme} partition leaves a worker with {int(counts.min())} sample(s) (< {min_size}); use fewer workers.n")
    order = used[torch.argsort(owner[used], stable=True)]
    return list(torch.split(order, counts.tolist()))


def split_public(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(train indices, public indices): a random held-out split of ``size`` of the ``n`` training samples."""
    if not 0 <= size < n:
        raise ConfigError(f"data.public_size = {size} must be in [0, {n}) (the number of training samples)")
    perm = torch.randperm(n, generator=generator)
    return perm[size:].sort().values, perm[:size].sort().values


def pad_shards(shards: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Shards as ``LongTensor[n_workers, max_size]`` padded with 0, and their sizes ``LongTensor[n_workers]``."""
    sizes = torch.tensor([s.numel() for s in shards], dtype=torch.long)
    table = torch.zeros(len(shards), int(sizes.max()) if len(shards) else 0, dtype=torch.long)
    for i, s in enumerate(shards):
        table[i, : s.numel()] = s
    return table, sizes
