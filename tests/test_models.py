"""The standard-protocol models (ByzFL 0.0.11's fc_mnist, cnn_mnist): sizes, shapes, equivalence, refusals."""

import pytest
import torch
import torch.nn.functional as F

from byzlearn import config as C
from byzlearn.cli import main
from byzlearn.engine import Simulator
from byzlearn.models import MODELS, FlatModel
from byzlearn.registry import ConfigError
from conftest import assert_batched_gradients_match_autograd

MNIST = (1, 28, 28)


def build(name, shape=MNIST, classes=10):
    torch.manual_seed(0)
    return MODELS.build(name, {}, "model", input_shape=shape, num_classes=classes)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts():
    assert n_params(build("fc_mnist")) == 784 * 100 + 100 + 100 * 10 + 10 == 79_510
    conv = 20 * 1 * 25 + 20 + 50 * 20 * 25 + 50
    assert n_params(build("cnn_mnist")) == conv + 800 * 500 + 500 + 500 * 10 + 10 == 431_080
    assert n_params(build("fc_mnist", (1, 8, 8), 3)) == 64 * 100 + 100 + 100 * 3 + 3
    assert n_params(build("cnn_mnist", (3, 32, 32), 100)) == 20 * 3 * 25 + 20 + 50 * 20 * 25 + 50 + 50 * 5 * 5 * 500 + 500 + 500 * 100 + 100


@pytest.mark.parametrize("name, shape", [("fc_mnist", MNIST), ("cnn_mnist", MNIST), ("cnn_mnist", (3, 16, 20)), ("fc_mnist", (1, 8, 8))])
def test_output_shapes(name, shape):
    out = build(name, shape, 7)(torch.randn(5, *shape))
    assert out.shape == (5, 7)


def _byzfl_forward(name, m, x):
    """ByzFL's forward passes written with functional ops on our module's weights (ends in log_softmax)."""
    p = [t for t in m.parameters()]
    if name == "fc_mnist":
        h = F.relu(F.linear(x.view(-1, 28 * 28), p[0], p[1]))
        return F.log_softmax(F.linear(h, p[2], p[3]), dim=1)
    h = F.max_pool2d(F.relu(F.conv2d(x, p[0], p[1], 1)), 2, 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, p[2], p[3], 1)), 2, 2)
    h = F.relu(F.linear(h.view(-1, 800), p[4], p[5]))
    return F.log_softmax(F.linear(h, p[6], p[7]), dim=1)


@pytest.mark.parametrize("name", ["fc_mnist", "cnn_mnist"])
def test_same_function_as_byzfl_up_to_log_softmax(name):
    m = build(name)
    x = torch.randn(6, *MNIST)
    y = torch.randint(0, 10, (6,))
    logits = m(x)
    ref = _byzfl_forward(name, m, x)
    torch.testing.assert_close(F.log_softmax(logits, dim=1), ref)
    # the same loss: cross-entropy on logits = NLL on ByzFL's log-probabilities (log_softmax is idempotent)
    torch.testing.assert_close(F.cross_entropy(logits, y), F.nll_loss(ref, y))
    torch.testing.assert_close(F.cross_entropy(ref, y), F.nll_loss(ref, y))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 15, 28), (784,)])
def test_cnn_mnist_refuses_small_or_flat_inputs(shape):
    with pytest.raises(ConfigError, match="cnn_mnist.*H, W >= 16"):
        build("cnn_mnist", shape)


def test_fc_mnist_refuses_empty_inputs():
    with pytest.raises(ConfigError, match="fc_mnist"):
        build("fc_mnist", (1, 0, 8))


def test_simulator_trains_fc_mnist_on_digits(digits):
    sim = Simulator(C.load(None, ["model.name=fc_mnist", "workers.n=5", "workers.batch_size=8"]), dataset=digits)
    assert sim.d == 64 * 100 + 100 + 100 * 10 + 10
    assert_batched_gradients_match_autograd(sim, digits, 5)


def test_simulator_refuses_cnn_mnist_on_digits(digits):
    with pytest.raises(ConfigError, match="cnn_mnist"):
        Simulator(C.load(None, ["model.name=cnn_mnist"]), dataset=digits)


def test_cnn_mnist_batched_gradients_on_mnist(mnist):
    sim = Simulator(C.load(None, ["data.name=mnist", "model.name=cnn_mnist", "workers.n=3", "workers.batch_size=4"]), dataset=mnist)
    assert sim.d == FlatModel(build("cnn_mnist")).d == 431_080
    assert_batched_gradients_match_autograd(sim, mnist, 3)


def test_list_shows_them(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fc_mnist" in out and "cnn_mnist" in out and "gamma_similarity" in out and "extreme" in out
