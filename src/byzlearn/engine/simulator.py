"""The single-process simulator: synchronous parameter-server rounds, all workers batched.

One round (DESIGN.md, "Data flow of one synchronous round"):

1. every worker draws a minibatch of its own shard (``ShardSampler``: one ``topk`` for all);
2. the gradients of all workers that compute honestly are evaluated in ONE batched pass,
   ``vmap(grad_and_value(loss))`` over the workers' minibatches, giving ``Tensor[k, d]``;
3. the attack forges the Byzantine rows (seeing the honest rows: the omniscient threat model);
4. the aggregator maps the ``Tensor[n, d]`` batch to one ``Tensor[d]``;
5. the server optimiser applies it to the flat parameter vector.

Every random stream (partition, sampling, Byzantine set, attack, public batch) has its own
seeded ``torch.Generator``; all of them, the parameters, the optimiser, the aggregator and the
attack are in ``state_dict``, so a resumed run continues the very same trajectory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from ..aggregators import AggregationContext, build_aggregator
from ..attacks import ATTACKS, AttackContext
from ..config import Config
from ..data import Dataset, load_dataset, pad_shards, partition, split_public
from ..models import MODELS, FlatModel
from ..optim import OPTIMIZERS
from ..registry import ConfigError
from .sampling import ShardSampler
from .validate import resolve_device, validate

STREAMS = ("partition", "sample", "byzantine", "attack", "public", "aggregator")


def _generators(seed: int) -> dict[str, torch.Generator]:
    return {name: torch.Generator().manual_seed(seed * 1000 + i) for i, name in enumerate(STREAMS)}


@torch.no_grad()
def evaluate_model(model: FlatModel, theta: Tensor, x_test: Tensor, y_test: Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` at ``theta`` on a test set, in batches of ``batch_size``."""
    loss_sum, correct = 0.0, 0
    for start in range(0, y_test.shape[0], batch_size):
        x, y = x_test[start:start + batch_size], y_test[start:start + batch_size]
        logits = model(theta, x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    m = y_test.shape[0]
    return loss_sum / m, correct / m


class Simulator:
    """A run's whole state and its ``step`` (one round) on one device."""

    def __init__(self, cfg: Config, dataset: Dataset | None = None):
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.gens = _generators(cfg.train.seed)
        w = cfg.workers
        self.n, self.f, self.batch_size = w.n, w.byzantine, w.batch_size

        # -- data: shards of the training set, a held-out public split ------------------------------
        ds = dataset if dataset is not None else load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download)
        self.dataset = ds
        n_train = ds.y_train.shape[0]
        train_idx = torch.arange(n_train)
        public_idx = torch.empty(0, dtype=torch.long)
        if cfg.data.public_size > 0:
            train_idx, public_idx = split_public(n_train, cfg.data.public_size, self.gens["partition"])
        shards = partition(
            ds.y_train[train_idx], self.n, cfg.data.partition, self.gens["partition"],
            alpha=cfg.data.alpha, labels_per_worker=cfg.data.labels_per_worker,
        )
        shard_index, shard_sizes = pad_shards([train_idx[s] for s in shards])
        self.shard_sizes = shard_sizes
        self.sampler = ShardSampler(shard_index, shard_sizes, self.batch_size)
        self.x_train, self.y_train = ds.x_train.to(self.device), ds.y_train.to(self.device)
        self.x_test, self.y_test = ds.x_test.to(self.device), ds.y_test.to(self.device)
        self.public_idx = public_idx

        # -- model as a function of one flat vector ---------------------------------------------------
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            module = MODELS.build(cfg.model.name, {}, "model", input_shape=ds.input_shape, num_classes=ds.num_classes)
        self.model = FlatModel(module).to(self.device)
        self.theta = self.model.init().to(self.device)
        self.d = self.model.d
        self._grads = vmap(grad_and_value(self._loss), in_dims=(None, 0, 0))
        if cfg.train.compile:  # optional: compiles the batched gradient once (seconds), then ~2x faster rounds
            self._grads = torch.compile(self._grads, dynamic=False)
        self._losses = vmap(self._loss, in_dims=(0, None, None))

        # -- Byzantine behaviour, rule, server optimiser ----------------------------------------------
        self.attack = ATTACKS.build(cfg.attack["name"], {k: v for k, v in cfg.attack.items() if k != "name"}, "attack")
        self.aggregator = build_aggregator(cfg.aggregator, f_default=self.f)
        self.aggregator.check(self.n)
        opt = {k: v for k, v in cfg.optimizer.items() if k != "name"}
        self.optimizer = OPTIMIZERS.build(cfg.optimizer["name"], opt, "optimizer", skip=("params",), params=[self.theta])
        self.byzantine = self._draw_byzantine()
        self._honest: Tensor | None = None
        self.round = 0

    # -- pieces of a round ------------------------------------------------------------------------------
    def _loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.model(theta, x), y)

    def _draw_byzantine(self) -> Tensor:
        """Indices of this round's Byzantine workers (sorted)."""
        return torch.randperm(self.n, generator=self.gens["byzantine"])[: self.f].sort().values

    @property
    def lr(self) -> float | None:
        return self.optimizer.param_groups[0].get("lr")

    def public_loss(self, P: Tensor) -> Tensor:
        """Loss on a fresh public minibatch for each row of a parameter batch ``P: Tensor[k, d]``."""
        if self.public_idx.numel() == 0:
            raise ConfigError("this rule needs the server's public batch: set data.public_size > 0")
        pick = torch.randperm(self.public_idx.numel(), generator=self.gens["public"])[: self.cfg.data.public_batch]
        idx = self.public_idx[pick].to(self.device)
        return self._losses(P, self.x_train[idx], self.y_train[idx])

    def worker_gradients(self, idx: Tensor, poison: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Gradients ``Tensor[k, d]`` and losses ``Tensor[k]`` of k workers in one batched pass.

        ``idx``: the workers' minibatches as sample indices ``[k, B]``; ``poison``: a mask ``[k]``
        of workers whose labels the attack rewrites (data-level attacks).
        """
        flat = idx.reshape(-1).to(self.device)
        x = self.x_train.index_select(0, flat).view(*idx.shape, *self.x_train.shape[1:])
        y = self.y_train.index_select(0, flat).view(idx.shape)
        if poison is not None:
            y = torch.where(poison.to(self.device).unsqueeze(1), self.attack.poison_labels(y, self.dataset.num_classes), y)
        return self._grads(self.theta, x, y)

    def aggregation_context(self) -> AggregationContext:
        return AggregationContext(
            round=self.round, params=self.theta, lr=self.lr, public_loss=self.public_loss, generator=self.gens["aggregator"],
        )

    def _roles(self) -> tuple[Tensor, Tensor]:
        """This round's honest and Byzantine worker indices (sorted, on the device)."""
        if self.cfg.workers.byzantine_set == "redraw" and self.round > 0:
            self.byzantine = self._draw_byzantine()
            self._honest = None
        if self._honest is None:
            honest = torch.ones(self.n, dtype=torch.bool)
            honest[self.byzantine] = False
            self._honest = honest.nonzero().squeeze(1).to(self.device)
        return self._honest, self.byzantine.to(self.device)

    def gradient_batch(self, agg_ctx: AggregationContext | None = None) -> tuple[Tensor, Tensor]:
        """This round's ``G: Tensor[n', d]`` (n' < n when Byzantine messages are dropped) and honest losses.

        Row i of ``G`` is worker i's message. Every worker draws its minibatch whatever its role,
        so runs that differ only by attack or rule see the same honest data.
        """
        honest_ids, byz_ids = self._roles()
        idx = self.sampler.sample(self.gens["sample"])
        if self.f == 0:
            return self.worker_gradients(idx)
        if self.attack.needs_own_gradients:  # every worker computes; the Byzantine rows are then replaced
            poison = None
            if self.attack.poisons_data:
                poison = torch.zeros(self.n, dtype=torch.bool, device=self.device)
                poison[byz_ids] = True
            G, losses = self.worker_gradients(idx, poison)
            honest, own, honest_losses = G.index_select(0, honest_ids), G.index_select(0, byz_ids), losses[honest_ids]
        else:
            honest, honest_losses = self.worker_gradients(idx[honest_ids.cpu()])
            own = None
            G = honest.new_empty(self.n, self.d).index_copy_(0, honest_ids, honest)
        ctx = AttackContext(
            n=self.n, f=self.f, round=self.round, honest=honest, own=own, params=self.theta,
            aggregator=self.aggregator, generator=self.gens["attack"],
            aggregation=agg_ctx if agg_ctx is not None else self.aggregation_context(), byzantine=byz_ids,
        )
        forged = self.attack.forge(ctx)
        k = forged.shape[0]
        if k > self.f or (k and forged.shape[1] != self.d):
            raise RuntimeError(f"attack {self.attack.name!r} returned shape {tuple(forged.shape)}; expected at most ({self.f}, {self.d})")
        G.index_copy_(0, byz_ids[:k], forged.to(device=G.device, dtype=G.dtype))
        if k < self.f:  # the other Byzantine workers sent nothing
            keep = torch.ones(self.n, dtype=torch.bool, device=G.device)
            keep[byz_ids[k:]] = False
            G = G[keep]
        return G, honest_losses

    def step(self) -> float:
        """One synchronous round; returns the honest workers' mean training loss."""
        ctx = self.aggregation_context()
        G, honest_losses = self.gradient_batch(ctx)
        ctx.owns_batch = True  # G is this round's scratch: pre-aggregators may overwrite it
        update = self.aggregator(G, ctx)
        self.theta.grad = update.to(self.theta.dtype)
        self.optimizer.step()
        self.round += 1
        return float(honest_losses.mean())

    def extra_metrics(self) -> dict[str, Any]:
        """Engine-specific figures added to every metrics row and the summary (none here)."""
        return {}

    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the current model on the whole test set."""
        return evaluate_model(self.model, self.theta, self.x_test, self.y_test, self.cfg.train.eval_batch_size)

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "theta": self.theta.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "attack": self.attack.state_dict(),
            "byzantine": self.byzantine.clone(),
            "sampler": self.sampler.state_dict(),
            "generators": {k: g.get_state() for k, g in self.gens.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = state["round"]
        with torch.no_grad():
            self.theta.copy_(state["theta"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.attack.load_state_dict(state["attack"])
        self.byzantine = state["byzantine"]
        self._honest = None
        self.sampler.load_state_dict(state["sampler"])
        for k, g in self.gens.items():
            g.set_state(state["generators"][k])
