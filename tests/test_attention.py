"""The attention model and the synthetic sequence task of the ACClip attention study."""

import pytest
import torch

from byzlearn import config as C
from byzlearn.data import load_dataset
from byzlearn.data.synthetic import LENGTH, VOCAB
from byzlearn.engine import Simulator
from byzlearn.experiments.repro_acclip_attention import hill
from byzlearn.models import MODELS
from byzlearn.models.attention import VOCAB as MODEL_VOCAB
from conftest import assert_batched_gradients_match_autograd


@pytest.fixture(scope="module")
def seq():
    return load_dataset("sequence")


def make(overrides, dataset):
    return Simulator(C.load(None, ["data.name=sequence", "model.name=attention", *overrides]), dataset=dataset)


def test_batched_gradients_equal_per_worker_autograd(seq):
    sim = make(["workers.n=5", "workers.batch_size=8"], seq)
    assert 10_000 < sim.d < 30_000
    assert_batched_gradients_match_autograd(sim, seq, 5)


def test_model_rejects_images():
    with pytest.raises(ValueError):
        MODELS.build("attention", {}, "model", input_shape=(1, 8, 8), num_classes=10)


def test_sequence_task_is_deterministic_balanced_and_as_designed(seq):
    again = load_dataset("sequence")
    assert torch.equal(seq.x_train, again.x_train) and torch.equal(seq.y_test, again.y_test)
    assert seq.x_train.shape == (20_000, LENGTH) and seq.x_test.shape == (5_000, LENGTH) and seq.num_classes == 2
    assert VOCAB == MODEL_VOCAB
    for x, y in ((seq.x_train, seq.y_train), (seq.x_test, seq.y_test)):
        assert x.dtype == torch.float32 and torch.equal(x, x.round()) and x.min() >= 0 and x.max() < VOCAB
        assert int(y.sum()) == y.numel() // 2  # exactly balanced
        ids = x.long()
        assert torch.equal(y, (ids[:, 1:] == ids[:, :1]).any(1).long())  # the label is what it says
    ids, y = seq.x_train.long(), seq.y_train
    counts = torch.bincount(ids.reshape(-1), minlength=VOCAB).float()
    assert counts[0] > 3 * counts[3] > 0 and counts[3] > counts[15] > counts[31] > 0  # Zipf-like imbalance
    for tok in (0, 1, 5):  # the label does not follow from the first token alone
        rate = y[ids[:, 0] == tok].float().mean()
        assert 0.45 < rate < 0.55


def test_adam_learns_the_sequence_task(seq):
    sim = make(["workers.n=10", "optimizer.name=adam", "optimizer.lr=0.002", "train.seed=0"], seq)
    _, acc0 = sim.evaluate()
    for _ in range(250):
        sim.step()
    _, acc = sim.evaluate()
    # chance is 50% (balanced; a binomial sd of 0.7 points on 5,000 test items); this run reaches ~73%
    assert abs(acc0 - 0.5) < 0.03 and acc > 0.62


def test_hill_estimator_separates_tails():
    g = torch.Generator().manual_seed(0)
    pareto = torch.rand(20_000, generator=g).pow(-1 / 1.5)  # tail index 1.5
    gauss = torch.randn(20_000, generator=g).abs()
    assert 1.2 < hill(pareto) < 1.8 and hill(gauss) > 3
