"""The seeds' models. Input sizes follow the data set (``input_shape = (C, H, W)``).

``mlp20`` (one hidden layer of 20 sigmoid units) is the worker model of the learned-aggregator
paper's MNIST experiments (Ji et al. 2019, §5); ``mlp40``, ``mlp20x2`` and ``mlp20relu`` are its
generalisation variants; ``cnn_cifar`` its CIFAR-10 model (two convolutions with max pooling, then
a fully connected layer); ``logreg`` a linear softmax classifier. ``fc_mnist`` and ``cnn_mnist``
are ByzFL 0.0.11's MNIST models (``byzfl.fed_framework.models``), the standard-protocol models.
"""

from __future__ import annotations

import math

from torch import nn

from ..registry import ConfigError, Registry

MODELS: Registry[nn.Module] = Registry("model")


def _mlp(input_shape: tuple[int, ...], num_classes: int, hidden: list[int], act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, h), act()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@MODELS.register("mlp20")
def mlp20(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MLP, one hidden layer of 20 sigmoid units (784-20-10 on MNIST): the paper's main worker model."""
    return _mlp(input_shape, num_classes, [20], nn.Sigmoid)


@MODELS.register("mlp40")
def mlp40(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MLP, one hidden layer of 40 sigmoid units."""
    return _mlp(input_shape, num_classes, [40], nn.Sigmoid)


@MODELS.register("mlp20x2")
def mlp20x2(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MLP, two hidden layers of 20 sigmoid units."""
    return _mlp(input_shape, num_classes, [20, 20], nn.Sigmoid)


@MODELS.register("mlp20relu")
def mlp20relu(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MLP, one hidden layer of 20 ReLU units."""
    return _mlp(input_shape, num_classes, [20], nn.ReLU)


@MODELS.register("logreg")
def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (one linear layer on the flattened input)."""
    return _mlp(input_shape, num_classes, [], nn.Identity)


@MODELS.register("cnn_cifar")
def cnn_cifar(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 5x5 convolutions (16 and 32 channels, ReLU, 2x2 max pooling each), then one linear layer."""
    if len(input_shape) != 3 or input_shape[1] < 4 or input_shape[2] < 4:
        raise ValueError(f"cnn_cifar needs image inputs (C, H, W) with H, W >= 4, got {input_shape}")
    c, h, w = input_shape
    return nn.Sequential(
        nn.Conv2d(c, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), num_classes),
    )


@MODELS.register("fc_mnist")
def fc_mnist(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ByzFL's fc_mnist: one hidden layer of 100 ReLU units (784-100-10 on MNIST, d = 79,510).

    ByzFL ends with log_softmax; this returns the logits, which is the same model under byzlearn's
    cross-entropy loss (log_softmax is idempotent: log_softmax(log_softmax(z)) = log_softmax(z)).
    Any input shape is flattened (ByzFL's takes 28x28 only).
    """
    if math.prod(input_shape) < 1:
        raise ConfigError(f"model.name = 'fc_mnist' needs a non-empty input, got shape {tuple(input_shape)}")
    return _mlp(input_shape, num_classes, [100], nn.ReLU)


@MODELS.register("cnn_mnist")
def cnn_mnist(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ByzFL's cnn_mnist: two 5x5 convolutions, 500 ReLU units, output layer (d = 431,080 on MNIST).

    The convolutions (20 then 50 channels, stride 1, no padding) are each followed by ReLU and 2x2
    max pooling. Returns logits (ByzFL ends with log_softmax, a no-op under cross-entropy). Any channel count and
    image size of at least 16x16 (ByzFL's: 1x28x28 only, 800 = 50x4x4 features).
    """
    if len(input_shape) != 3 or input_shape[1] < 16 or input_shape[2] < 16:
        raise ConfigError(
            f"model.name = 'cnn_mnist' needs image inputs (C, H, W) with H, W >= 16, got {tuple(input_shape)}; "
            "use fc_mnist or cnn_cifar for small inputs"
        )
    c, h, w = input_shape
    side = lambda x: ((x - 4) // 2 - 4) // 2  # noqa: E731 - two (5x5 valid convolution, 2x2 pooling) stages
    return nn.Sequential(
        nn.Conv2d(c, 20, 5, 1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5, 1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(50 * side(h) * side(w), 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )
