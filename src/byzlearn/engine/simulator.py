"""The single-process simulator: synchronous parameter-server rounds, all workers batched.

One round is the phased round of ``engine.round`` (DESIGN.md, "Data flow of one synchronous round"):

1. ``draw``: the round's roles and every worker's minibatch of its own shard (``ShardSampler``: one
   ``topk`` for all; K of them for FedAvg's local steps; FedAvg also samples its clients);
2. ``messages``: the honest workers' messages (``engine.work``: gradients in ONE batched pass,
   ``vmap(grad_and_value(loss))`` over the workers' minibatches, giving ``Tensor[k, d]``; or their
   momenta; or K local steps), then the attack forges the Byzantine rows (seeing the honest messages:
   the omniscient threat model);
3. ``update``: the aggregator maps the ``Tensor[n, d]`` batch to one ``Tensor[d]`` and the server
   optimiser applies it to the flat parameter vector (FedAvg ``weights``: the aggregate replaces it).

Every random stream (partition, sampling, Byzantine set, attack, public batch, client sampling) has
its own seeded ``torch.Generator``; all of them, the parameters, the optimiser, the aggregator, the
attack and the workers' momenta are in ``state_dict``, so a resumed run continues the very same
trajectory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from ..aggregators import AggregationContext, build_aggregator
from ..attacks import AttackContext, build_attack
from ..config import Config
from ..data import Dataset, load_dataset, pad_shards, partition, split_public
from ..models import MODELS, FlatModel
from ..models.user import ModelSpec, check_model, user_module
from ..optim import OPTIMIZERS
from ..registry import ConfigError
from .public import once_per_round, server_update
from .round import RoundDraw, apply_update, forge, place, replace_weights
from .sampling import ShardSampler
from .validate import resolve_device, validate
from .work import Momentum, client_count, local_sgd, make_momentum

STREAMS = ("partition", "sample", "byzantine", "attack", "public", "aggregator", "clients")


def _generators(seed: int) -> dict[str, torch.Generator]:
    return {name: torch.Generator().manual_seed(seed * 1000 + i) for i, name in enumerate(STREAMS)}


@torch.no_grad()
def evaluate_model(model: FlatModel, theta: Tensor, x_test: Tensor, y_test: Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` at ``theta`` on a test set, in batches of ``batch_size``."""
    loss_sum, correct = 0.0, 0
    for start in range(0, y_test.shape[0], batch_size):
        x, y = x_test[start : start + batch_size], y_test[start : start + batch_size]
        logits = model(theta, x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    m = y_test.shape[0]
    return loss_sum / m, correct / m


class Simulator:
    """A run's whole state and its ``step`` (one round) on one device.

    ``dataset`` / ``model`` (an ``nn.Module`` or a factory ``(input_shape, num_classes) -> nn.Module``,
    ``models.user``) replace the registered ``data.name`` / ``model.name``, whose names then only label the run.
    """

    def __init__(self, cfg: Config, dataset: Dataset | None = None, model: ModelSpec | None = None):
        validate(cfg, own_data=dataset is not None, own_model=model is not None)
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.gens = _generators(cfg.train.seed)
        w = cfg.workers
        self.n, self.f, self.batch_size = w.n, w.byzantine, w.batch_size

        # -- data: shards of the training set, held-out public and validation splits ------------------
        ds = dataset if dataset is not None else load_dataset(cfg.data.name, cfg.data.data_dir, cfg.data.download)
        self.dataset = ds
        self.byzantine = self._draw_byzantine()
        train_idx, public_idx, validation_idx = self._splits(ds.y_train.shape[0])
        shard_index, shard_sizes = pad_shards(self._shards(ds.y_train, train_idx))
        self.shard_sizes = shard_sizes
        self.sampler = ShardSampler(shard_index, shard_sizes, self.batch_size)
        self.x_train, self.y_train = ds.x_train.to(self.device), ds.y_train.to(self.device)
        self.x_test, self.y_test = ds.x_test.to(self.device), ds.y_test.to(self.device)
        self.public_idx = public_idx
        self.validation_idx = validation_idx

        # -- model as a function of one flat vector ---------------------------------------------------
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)
            if model is None:
                module = MODELS.build(cfg.model.name, {}, "model", input_shape=ds.input_shape, num_classes=ds.num_classes)
            else:
                module = user_module(model, ds.input_shape, ds.num_classes)
        self.model = FlatModel(module).to(self.device)
        self.theta = self.model.init().to(self.device)
        if model is not None:
            check_model(self.model, self.theta, self.x_train, self.y_train, ds.num_classes)
        self.d = self.model.d
        self._grads = vmap(grad_and_value(self._loss), in_dims=(None, 0, 0))
        if cfg.train.compile:  # optional: compiles the batched gradient once (seconds), then ~2x faster rounds
            self._grads = torch.compile(self._grads, dynamic=False)
        self._losses = vmap(self._loss, in_dims=(0, None, None))
        self.fedavg = cfg.train.algorithm == "fedavg"
        if self.fedavg:  # every client's own parameters: one vmap over a [k, d] parameter batch per local step
            self._local_grads = vmap(grad_and_value(self._loss_parts), in_dims=(0, 0, 0))
        self.momentum = make_momentum(cfg, self.d)

        # -- Byzantine behaviour, rule, server optimiser ----------------------------------------------
        self.attack = build_attack(cfg.attack)
        self.aggregator = build_aggregator(cfg.aggregator, f_default=self.f)
        # the server's own momentum of its public-batch gradients (public_update: FLTrust), as a worker keeps one
        wants = self.aggregator.needs_public_update and w.momentum > 0
        self.public_momentum = Momentum(1, self.d, w.momentum, w.momentum_form) if wants else None
        self.aggregator.check(client_count(cfg) if self.fedavg else self.n)
        opt = {k: v for k, v in cfg.optimizer.items() if k != "name"}
        self.optimizer = OPTIMIZERS.build(cfg.optimizer["name"], opt, "optimizer", skip=("params",), params=[self.theta])
        self._honest: Tensor | None = None
        self.round = 0

    def _splits(self, n_train: int) -> tuple[Tensor, Tensor, Tensor]:
        """Training, public (``data.public_size``) and validation (``data.validation_size``) sample indices."""
        d = self.cfg.data
        train_idx = torch.arange(n_train)
        public_idx = validation_idx = torch.empty(0, dtype=torch.long)
        if d.public_size > 0:
            train_idx, public_idx = split_public(n_train, d.public_size, self.gens["partition"])
        if d.validation_size > 0:
            if d.validation_size >= train_idx.numel():
                raise ConfigError(f"data.validation_size = {d.validation_size} must be below the {train_idx.numel()} training samples left")
            keep, held = split_public(train_idx.numel(), d.validation_size, self.gens["partition"])
            train_idx, validation_idx = train_idx[keep], train_idx[held]
        return train_idx, public_idx, validation_idx

    def _shards(self, labels: Tensor, train_idx: Tensor) -> list[Tensor]:
        """Every worker's shard of ``train_idx``. ``data.shards = "honest"`` (ByzFL): only the honest workers'
        shards partition the training set, and the i-th Byzantine worker reuses the i-th honest shard (the
        reference code of Karimireddy et al.), so data-level attacks train on real data."""
        d = self.cfg.data
        holders = self.n if d.shards == "all" else self.n - self.f
        parts = partition(
            labels[train_idx],
            holders,
            d.partition,
            self.gens["partition"],
            alpha=d.alpha,
            labels_per_worker=d.labels_per_worker,
            gamma=d.gamma,
        )
        shards = [train_idx[p] for p in parts]
        if d.shards == "all":
            return shards
        out: list[Tensor] = [torch.empty(0, dtype=torch.long)] * self.n
        byz = self.byzantine.tolist()
        honest = [w for w in range(self.n) if w not in byz]
        for j, w in enumerate(honest):
            out[w] = shards[j]
        for i, b in enumerate(byz):
            out[b] = shards[i % len(shards)]
        return out

    # -- pieces of a round ------------------------------------------------------------------------------
    def _loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.model(theta, x), y)

    def _loss_parts(self, params: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
        """``_loss`` of the parameters as one tensor per layer (FedAvg's local steps keep them so)."""
        return F.cross_entropy(self.model.call_parts(params, x), y)

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

    def public_update(self) -> Tensor:
        """The server's own message ``Tensor[d]`` on fresh public minibatch(es) at ``theta`` (FLTrust's ``g0``),
        computed as an honest worker computes its message (``engine.public.server_update``)."""
        return server_update(self, Simulator.worker_gradients)

    def worker_gradients(self, idx: Tensor, poison: Tensor | None = None, workers: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Gradients ``Tensor[k, d]`` and losses ``Tensor[k]`` of k workers in one batched pass.

        ``idx``: the workers' minibatches as sample indices ``[k, B]``; ``poison``: a mask ``[k]``
        of workers whose labels the attack rewrites (data-level attacks); ``workers``: their ids
        (``None``: all ``n`` in order), for engines that add per-worker effects (``heavy_tail``).
        """
        flat = idx.reshape(-1).to(self.device)
        x = self.x_train.index_select(0, flat).view(*idx.shape, *self.x_train.shape[1:])
        y = self.y_train.index_select(0, flat).view(idx.shape)
        if poison is not None:
            y = torch.where(poison.to(self.device).unsqueeze(1), self.attack.poison_labels(y, self.dataset.num_classes), y)
        return self._grads(self.theta, x, y)

    def aggregation_context(self) -> AggregationContext:
        return AggregationContext(
            round=self.round,
            params=self.theta,
            lr=self.lr,
            public_loss=self.public_loss,
            public_update=once_per_round(self.public_update),
            generator=self.gens["aggregator"],
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

    # -- the phases of a round (engine.round) ----------------------------------------------------------
    def draw(self) -> RoundDraw:
        """Phase 1: roles, FedAvg's sampled clients, and every worker's minibatch(es) whatever its role, so
        runs that differ only by attack or rule see the same honest data. Every engine replays this."""
        honest_ids, byz_ids = self._roles()
        if not self.fedavg:
            return RoundDraw(self.round, honest_ids, byz_ids, self.sampler.sample(self.gens["sample"]))
        k = client_count(self.cfg)
        picked = torch.randperm(self.n, generator=self.gens["clients"])[:k].sort().values.to(self.device)
        is_byz = torch.zeros(self.n, dtype=torch.bool, device=self.device)
        is_byz[byz_ids] = True
        batches = torch.stack([self.sampler.sample(self.gens["sample"]) for _ in range(self.cfg.fedavg.local_steps)])
        return RoundDraw(self.round, picked[~is_byz[picked]], picked[is_byz[picked]], batches, picked)

    def honest_messages(self, draw: RoundDraw, workers: Tensor, poison: bool = False) -> tuple[Tensor, Tensor]:
        """Phase 2 for ``workers`` (ids, sorted): their messages ``Tensor[k, d]`` and losses. ``poison``:
        they train on the attack's labels (data-level attacks send raw gradients / plain local updates,
        without momentum, as in ByzFL and Karimireddy et al.)."""
        mask = torch.ones(workers.numel(), dtype=torch.bool) if poison else None
        if self.fedavg:
            return self.local_updates(draw.batches[:, workers.cpu()], mask)
        G, losses = self.worker_gradients(draw.batches[workers.cpu()], mask, workers=workers)
        if self.momentum is not None and not poison:
            G = self.momentum.step(G, workers)
        return G, losses

    def local_updates(self, idx: Tensor, poison: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """FedAvg: K local SGD steps of k clients from ``theta`` (``idx: [K, k, B]``), batched; their
        messages (``w_start - w_end``, or ``w_end`` for ``fedavg.aggregate = "weights"``) and losses."""
        fa = self.cfg.fedavg
        flat = idx.reshape(-1).to(self.device)
        x = self.x_train.index_select(0, flat).view(*idx.shape, *self.x_train.shape[1:])
        y = self.y_train.index_select(0, flat).view(idx.shape)
        if poison is not None:
            y = torch.where(poison.to(self.device).view(1, -1, 1), self.attack.poison_labels(y, self.dataset.num_classes), y)
        parts = tuple(self.model.unflatten(self.theta.detach()).values())
        W, losses = local_sgd(self._local_grads, parts, x, y, fa.local_lr, fa.local_weight_decay)
        return (W if fa.aggregate == "weights" else torch.sub(self.theta.detach(), W, out=W)), losses

    def messages(self, draw: RoundDraw, agg_ctx: AggregationContext) -> tuple[Tensor, Tensor]:
        """Phases 2-3: this round's ``G: Tensor[m, d]`` (one row per participating worker, in worker order;
        fewer when Byzantine messages are dropped) and the honest workers' losses."""
        honest_ids, byz_ids = draw.honest, draw.byzantine
        if byz_ids.numel() == 0:  # nobody attacks this round: every participant computes honestly
            workers = draw.participants if draw.participants is not None else torch.arange(self.n, device=self.device)
            if draw.participants is None and self.momentum is None:
                return self.worker_gradients(draw.batches)
            return self.honest_messages(draw, workers)
        attack = self.attack
        rows = draw.participants.numel() if draw.participants is not None else self.n
        if attack.needs_own_gradients and not self.fedavg and (self.momentum is None or attack.poisons_data):
            # every worker computes in one pass; the Byzantine rows are then replaced
            poison = None
            if attack.poisons_data:
                poison = torch.zeros(self.n, dtype=torch.bool, device=self.device)
                poison[byz_ids] = True
            G, losses = self.worker_gradients(draw.batches, poison)
            honest, own, honest_losses = G.index_select(0, honest_ids), G.index_select(0, byz_ids), losses[honest_ids]
            if self.momentum is not None:
                honest = self.momentum.step(honest, honest_ids)
                G.index_copy_(0, honest_ids, honest)
        else:
            honest, honest_losses = self.honest_messages(draw, honest_ids)
            own = self.honest_messages(draw, byz_ids, poison=attack.poisons_data)[0] if attack.needs_own_gradients else None
            G = honest.new_empty(rows, self.d).index_copy_(0, draw.rows_of(honest_ids), honest)
        if honest_ids.numel() == 0 and attack.omniscient:  # FedAvg sampled no honest client: nothing to observe
            forged = own if own is not None else G.new_empty(0, self.d)
        else:
            ctx = AttackContext(  # n: the run's workers; f: this round's Byzantine participants (rows to forge)
                n=self.n,
                f=byz_ids.numel(),
                round=self.round,
                honest=honest,
                own=own,
                params=self.theta,
                aggregator=self.aggregator,
                generator=self.gens["attack"],
                aggregation=agg_ctx,
                byzantine=draw.rows_of(byz_ids),
            )
            forged = forge(attack, ctx, self.d)
        return place(G, draw.rows_of(byz_ids), forged), honest_losses

    def gradient_batch(self, agg_ctx: AggregationContext | None = None) -> tuple[Tensor, Tensor]:
        """Draw a round and return its messages ``G: Tensor[n', d]`` and the honest losses (phases 1-3).

        Row i of ``G`` is worker i's message (n' < n when Byzantine messages are dropped).
        """
        ctx = agg_ctx if agg_ctx is not None else self.aggregation_context()
        return self.messages(self.draw(), ctx)

    def update(self, G: Tensor, ctx: AggregationContext) -> None:
        """Phases 5-7: pre-aggregators and the rule on ``G`` (this round's scratch), then the server update."""
        ctx.owns_batch = True  # G is this round's scratch: pre-aggregators may overwrite it
        self.apply_update(self.aggregator(G, ctx))

    def apply_update(self, aggregate: Tensor) -> None:
        """The server update: the optimiser takes the aggregate as gradient (FedAvg ``weights``: it replaces theta)."""
        if self.fedavg and self.cfg.fedavg.aggregate == "weights":
            replace_weights(self.theta, aggregate)
        else:
            apply_update(self.theta, self.optimizer, aggregate)

    def step(self) -> float:
        """One synchronous round; returns the honest workers' mean training loss."""
        ctx = self.aggregation_context()
        G, honest_losses = self.messages(self.draw(), ctx)
        self.update(G, ctx)
        self.round += 1
        return float(honest_losses.mean()) if honest_losses.numel() else float("nan")

    def extra_metrics(self) -> dict[str, Any]:
        """Engine-specific figures added to every metrics row and the summary (none here)."""
        return {}

    def evaluate(self) -> tuple[float, float]:
        """Test loss and accuracy of the current model on the whole test set."""
        return evaluate_model(self.model, self.theta, self.x_test, self.y_test, self.cfg.train.eval_batch_size)

    @property
    def has_validation(self) -> bool:
        return self.validation_idx.numel() > 0

    def evaluate_validation(self) -> tuple[float, float]:
        """Loss and accuracy on the validation split (``data.validation_size`` training samples held out)."""
        idx = self.validation_idx.to(self.device)
        return evaluate_model(self.model, self.theta, self.x_train[idx], self.y_train[idx], self.cfg.train.eval_batch_size)

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
            **({"momentum": self.momentum.state_dict()} if self.momentum is not None else {}),
            **({"public_momentum": self.public_momentum.state_dict()} if self.public_momentum is not None else {}),
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
            if k in state["generators"]:  # checkpoints from before a stream existed lack it (it was unused)
                g.set_state(state["generators"][k])
        if self.momentum is not None:
            self.momentum.load_state_dict(state.get("momentum", {}), self.device)
        if self.public_momentum is not None:
            self.public_momentum.load_state_dict(state.get("public_momentum", {}), self.device)
