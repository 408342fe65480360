"""Bracha's reliable broadcast and the witness step (byzlearn.decentralized)."""

import itertools

import pytest
import torch

from byzlearn.decentralized import bracha, echo_threshold, first_reports, witness_sets
from byzlearn.decentralized.broadcast import honest_broadcast_cost
from byzlearn.registry import ConfigError


def _mask(n, byz):
    m = torch.zeros(n, dtype=torch.bool)
    m[list(byz)] = True
    return m


def test_thresholds():
    assert echo_threshold(4, 1) == 3 and echo_threshold(7, 2) == 5 and echo_threshold(10, 3) == 7
    for n, f in [(4, 1), (7, 2), (10, 3), (31, 10)]:
        assert echo_threshold(n, f) > (n + f) / 2 >= echo_threshold(n, f) - 1


def test_validity_honest_sender_and_cost():
    n, f = 7, 2
    byz = _mask(n, [5, 6])
    init = torch.zeros(n, n, dtype=torch.long)  # every node broadcasts once, honestly
    init[5:] = 0
    for relay in ("split", "silent"):
        r = bracha(n, f, byz, init, torch.arange(n), payload_bytes=100, relay=relay)
        assert bool((r.delivered[:, :5] == 0).all())  # every honest node delivers every honest sender's value
    r = bracha(n, f, torch.zeros(n, dtype=torch.bool), init, torch.arange(n), payload_bytes=100)
    assert (r.total_messages, r.total_bytes) == honest_broadcast_cost(n, n, 100)


@pytest.mark.parametrize("n,f", [(4, 1), (7, 2), (10, 3)])
def test_consistency_under_equivocation_every_split(n, f):
    """A Byzantine sender sends value 0, 1 or nothing to each honest node: for EVERY such assignment
    (and either relay behaviour) the honest nodes deliver the same value, or none of them delivers."""
    byz = _mask(n, range(n - f, n))
    h = n - f
    seen_deliver = seen_none = 0
    for assign in itertools.product((-1, 0, 1), repeat=h):
        init = torch.full((1, n), -1, dtype=torch.long)
        init[0, :h] = torch.tensor(assign)
        for relay in ("split", "silent"):
            d = bracha(n, f, byz, init, torch.tensor([n - 1]), relay=relay).delivered[0, :h]
            assert len(set(d.tolist())) == 1, (assign, relay, d)
            if int(d[0]) >= 0:
                seen_deliver += 1
                assert int(d[0]) in assign  # validity of what is delivered: a value the sender did send
            else:
                seen_none += 1
    assert seen_deliver and seen_none  # both outcomes occur


def test_threshold_boundaries_n4():
    n, f = 4, 1
    byz = _mask(n, [3])
    # INIT to 2 honest nodes: 2 honest ECHOs + 1 Byzantine = 3 = echo threshold -> READY, amplification, delivery by all 3
    d = bracha(n, f, byz, torch.tensor([[0, 0, -1, -1]]), torch.tensor([3]), relay="split").delivered[0, :3]
    assert d.tolist() == [0, 0, 0]
    # same without Byzantine relays: 2 ECHOs < 3 -> nobody delivers
    d = bracha(n, f, byz, torch.tensor([[0, 0, -1, -1]]), torch.tensor([3]), relay="silent").delivered[0, :3]
    assert d.tolist() == [-1, -1, -1]
    # INIT to 1 honest node only: 1 + 1 < 3 -> nobody delivers
    d = bracha(n, f, byz, torch.tensor([[0, -1, -1, -1]]), torch.tensor([3]), relay="split").delivered[0, :3]
    assert d.tolist() == [-1, -1, -1]


def test_bracha_refuses_n_le_3f():
    with pytest.raises(ConfigError, match="n >= 3f \\+ 1"):
        bracha(3, 1, _mask(3, [2]), torch.zeros(3, 3, dtype=torch.long), torch.arange(3))


@pytest.mark.parametrize("seed", range(20))
def test_witness_overlap_at_least_n_minus_f(seed):
    g = torch.Generator().manual_seed(seed)
    f = int(torch.randint(1, 4, (1,), generator=g))
    n = 3 * f + 1 + int(torch.randint(0, 3, (1,), generator=g))
    h = n - f
    order = torch.rand(h, n, generator=g).double()
    # some Byzantine values never delivered
    order[:, h:] = torch.where(torch.rand(f, generator=g) < 0.4, float("inf"), order[:, h:].double())
    D = first_reports(order, n, f)
    reports = torch.zeros(n, n, dtype=torch.bool)
    reports[:h] = D
    for b in range(f):  # Byzantine reports: copies of honest ones, or none
        if torch.rand(1, generator=g) < 0.7:
            reports[h + b] = D[int(torch.randint(0, h, (1,), generator=g))]
    W = witness_sets(order, reports, n, f)
    V = W.V.int()
    assert int((V @ V.T).min()) >= n - f
    assert bool((W.V | ~D).all())  # V_j contains j's own report
