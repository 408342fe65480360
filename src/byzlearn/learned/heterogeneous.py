"""Workers with different local models that all update ONE global MLP-20 sigmoid (Ji et al. 2019, §5.5).

The paper's Fig. 7 draws 3 workers from each of 4 systems (MLP 784-20-10 sigmoid, MLP 40
sigmoid, MLP 20-20 sigmoid, MLP 20 ReLU) and aggregates their gradients into an update of an MLP
784-20-10 sigmoid; it does not say how a gradient of another architecture maps onto the global
model's coordinates. OUR reading, implemented here: every local model CONTAINS the global
parameter vector ``theta = (W1, b1, W2, b2)`` (d = 15,910 on MNIST) and each worker sends the
gradient of its own model's loss with respect to those shared coordinates:

- ``mlp20``: the global model itself;
- ``mlp20relu``: the same parameters with a ReLU hidden layer;
- ``mlp40``: hidden units 1..20 use the global ``W1``, ``b1`` and the columns ``W2``; hidden units
  21..40 (their rows of the first weight, their biases and their columns ``U2`` of the output
  weight) are the worker's own parameters; the output bias is the global ``b2``;
- ``mlp20x2``: first layer = global ``W1, b1``, then the worker's own 20->20 sigmoid layer
  ``(V, c)``, then the global output layer ``W2, b2``.

The workers' own parameters are initialised like a fresh layer of that model type (PyTorch's
default initialisation, a fresh zoo module per worker) and updated by every worker, every round,
by plain SGD with the server's lr on its own gradient; they never leave the worker. Each model
type's workers are evaluated in one batched pass (``vmap(grad_and_value)`` over them, as the
simulator does for its workers); the aggregator maps the ``Tensor[n, d]`` batch of shared-coordinate
gradients to the update, and the server takes an SGD step ``theta -= lr * update``.

Data: every system's 10 workers hold equal iid shards of the training set (one partition per
system); 3 of each system's workers are drawn at random, once, and only they take part. The rows
of the gradient batch are ordered by system (``kinds`` order), then by worker index.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from ..aggregators import AggregationContext, Aggregator, build_aggregator
from ..data import Dataset, pad_shards, partition
from ..engine.round import sgd_step
from ..engine.sampling import ShardSampler
from ..engine.simulator import evaluate_model
from ..models import MODELS, FlatModel
from ..registry import ConfigError

KINDS = ("mlp20", "mlp40", "mlp20x2", "mlp20relu")
Parts = tuple[Tensor, ...]


def local_shapes(kind: str, inputs: int, hidden: int = 20, classes: int = 10) -> list[tuple[int, ...]]:
    """Shapes of a worker's own parameters (none for ``mlp20``/``mlp20relu``)."""
    if kind in ("mlp20", "mlp20relu"):
        return []
    if kind == "mlp40":  # hidden units 21..40: first-layer rows and biases, output-weight columns
        return [(hidden, inputs), (hidden,), (classes, hidden)]
    if kind == "mlp20x2":  # the extra 20 -> 20 sigmoid layer
        return [(hidden, hidden), (hidden,)]
    raise ConfigError(f"local model {kind!r} is unknown; choose among {', '.join(KINDS)}")


def local_init(kind: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> Tensor:
    """A worker's own parameters, flat, taken from a fresh zoo module of its type (seeded)."""
    if not local_shapes(kind, math.prod(input_shape), 20, num_classes):
        return torch.zeros(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = MODELS.build(kind, {}, "model", input_shape=input_shape, num_classes=num_classes)
    lin = [layer for layer in m if isinstance(layer, torch.nn.Linear)]
    if kind == "mlp40":
        parts = [lin[0].weight[20:], lin[0].bias[20:], lin[1].weight[:, 20:]]
    else:  # mlp20x2: the middle layer
        parts = [lin[1].weight, lin[1].bias]
    return torch.cat([p.detach().reshape(-1) for p in parts])


def logits(kind: str, glob: Parts, loc: Parts, x: Tensor) -> Tensor:
    """Logits of a worker of type ``kind`` with global parts ``(W1, b1, W2, b2)`` and its own parts ``loc``."""
    W1, b1, W2, b2 = glob
    x = x.flatten(1)
    if kind == "mlp20relu":
        return F.linear(torch.relu(F.linear(x, W1, b1)), W2, b2)
    h = torch.sigmoid(F.linear(x, W1, b1))
    if kind == "mlp20":
        return F.linear(h, W2, b2)
    if kind == "mlp40":
        V1, c1, U2 = loc
        return F.linear(h, W2, b2) + F.linear(torch.sigmoid(F.linear(x, V1, c1)), U2)
    if kind == "mlp20x2":
        V, c = loc
        return F.linear(torch.sigmoid(F.linear(h, V, c)), W2, b2)
    raise ConfigError(f"local model {kind!r} is unknown; choose among {', '.join(KINDS)}")


def _split(v: Tensor, shapes: list[tuple[int, ...]]) -> Parts:
    return tuple(c.view(s) for c, s in zip(torch.split(v, [math.prod(s) for s in shapes]), shapes))


class HeterogeneousSimulator:
    """The global MLP-20 sigmoid trained from the shared-coordinate gradients of heterogeneous workers.

    ``aggregator``: an ``Aggregator`` or a config table ``{"name": ..., ...}``. ``kinds``: the
    systems' local model types; ``system_workers`` workers each, ``picked`` of them take part.
    """

    def __init__(
        self,
        dataset: Dataset,
        aggregator: Aggregator | dict[str, Any],
        kinds: tuple[str, ...] = KINDS,
        system_workers: int = 10,
        picked: int = 3,
        batch_size: int = 128,
        lr: float = 0.5,
        seed: int = 0,
        eval_batch_size: int = 10000,
    ):
        if not 1 <= picked <= system_workers:
            raise ConfigError(f"picked = {picked} workers per system must be in [1, {system_workers}]")
        self.dataset, self.kinds, self.lr, self.batch_size = dataset, tuple(kinds), lr, batch_size
        self.eval_batch_size = eval_batch_size
        self.gens = {k: torch.Generator().manual_seed(seed * 1000 + i) for i, k in enumerate(("partition", "pick", "sample", "aggregator"))}
        # the global model: the zoo's mlp20 with the simulator's initialisation for this seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = MODELS.build("mlp20", {}, "model", input_shape=dataset.input_shape, num_classes=dataset.num_classes)
        self.model = FlatModel(module)
        if [tuple(s) for s in self.model.shapes][::2] != [(20, math.prod(dataset.input_shape)), (dataset.num_classes, 20)]:
            raise RuntimeError(f"unexpected mlp20 layout {self.model.shapes}")
        self.theta = self.model.init()
        self.d = self.model.d
        # data: one iid partition per system, `picked` of its workers drawn once
        shards, self.chosen = [], {}
        for kind in self.kinds:
            parts = partition(dataset.y_train, system_workers, "iid", self.gens["partition"])
            pick = torch.randperm(system_workers, generator=self.gens["pick"])[:picked].sort().values
            self.chosen[kind] = pick.tolist()
            shards += [parts[int(i)] for i in pick]
        self.n = len(shards)
        index, sizes = pad_shards(shards)
        self.sampler = ShardSampler(index, sizes, batch_size)
        # the workers' own parameters, Tensor[picked, d_local] per kind, and one batched gradient per kind
        inputs = math.prod(dataset.input_shape)
        self.local_shapes = {k: local_shapes(k, inputs, 20, dataset.num_classes) for k in self.kinds}
        self.local: dict[str, Tensor] = {}
        self.rows: dict[str, slice] = {}
        self._grads: dict[str, Callable] = {}
        for i, kind in enumerate(self.kinds):
            self.rows[kind] = slice(i * picked, (i + 1) * picked)
            self.local[kind] = torch.stack(
                [local_init(kind, dataset.input_shape, dataset.num_classes, seed * 1000 + 100 + i * picked + j) for j in range(picked)]
            )
            self._grads[kind] = vmap(grad_and_value(self._loss_fn(kind), argnums=(0, 1)), in_dims=(None, 0, 0, 0))
        self.aggregator = aggregator if isinstance(aggregator, Aggregator) else build_aggregator(aggregator, f_default=0)
        self.aggregator.check(self.n)
        self.round = 0

    def _loss_fn(self, kind: str) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
        shapes = self.local_shapes[kind]

        def loss(theta: Tensor, loc: Tensor, x: Tensor, y: Tensor) -> Tensor:
            glob = tuple(self.model.unflatten(theta).values())
            return F.cross_entropy(logits(kind, glob, _split(loc, shapes), x), y)

        return loss

    def gradients(self, idx: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """For minibatch indices ``idx: [n, B]``: the shared-coordinate gradients ``Tensor[n, d]``, the
        workers' own-parameter gradients per kind and the workers' losses ``Tensor[n]``."""
        x = self.dataset.x_train.index_select(0, idx.reshape(-1)).view(*idx.shape, *self.dataset.input_shape)
        y = self.dataset.y_train.index_select(0, idx.reshape(-1)).view(idx.shape)
        G, losses, local = self.theta.new_empty(self.n, self.d), self.theta.new_empty(self.n), {}
        for kind in self.kinds:
            r = self.rows[kind]
            (G[r], local[kind]), losses[r] = self._grads[kind](self.theta, self.local[kind], x[r], y[r])
        return G, local, losses

    def aggregation_context(self) -> AggregationContext:
        return AggregationContext(round=self.round, params=self.theta, lr=self.lr, generator=self.gens["aggregator"])

    def step(self) -> float:
        """One round; returns the workers' mean training loss (each on its own model and minibatch)."""
        G, local, losses = self.gradients(self.sampler.sample(self.gens["sample"]))  # draw and compute phases
        ctx = self.aggregation_context()
        ctx.owns_batch = True
        update = self.aggregator(G, ctx)
        with torch.no_grad():
            self.theta = sgd_step(self.theta, update, self.lr)  # the server update (engine.round)
            for kind, g in local.items():
                self.local[kind].sub_(self.lr * g)
        self.round += 1
        return float(losses.mean())

    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the global model."""
        return evaluate_model(self.model, self.theta, self.dataset.x_test, self.dataset.y_test, self.eval_batch_size)
