"""LEARN (El-Mhamdi et al., NeurIPS 2021): decentralised SGD in which every averaging step is an
averaging agreement.

n peers, f of them Byzantine, no server. Honest peer j holds its own parameters (row j of
``Theta: Tensor[h, d]``) and its own shard (heterogeneous: Dirichlet label skew or k labels per
peer). Per step t:

1. every honest peer computes a stochastic gradient on its own minibatch (all peers in ONE
   ``vmap(grad_and_value(loss), in_dims=(0, 0, 0))`` pass over the parameter matrix); with
   ``momentum > 0`` it keeps a worker momentum of them (``engine.work.Momentum``) and agrees on that;
2. gradient agreement: ``N_t = 1 + ceil(log2 t)`` rounds of averaging agreement on the gradients
   (more rounds as t grows; ``max_grad_rounds`` caps it), the Byzantine peers sending what their
   behaviour dictates;
3. local step ``theta_j <- theta_j - lr * g_j``;
4. model agreement: ``model_rounds`` (default 1) round(s) of averaging agreement on the parameters.

Metrics every ``eval_every`` steps: each honest peer's test accuracy (worst and mean), the honest
parameters' diameter, the gradient agreement's final diameter and averaging constant, messages and
bytes so far, wall time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from ..data import load_dataset, pad_shards, partition
from ..data.base import Dataset
from ..engine.sampling import ShardSampler
from ..engine.work import Momentum
from ..models import MODELS, FlatModel
from ..registry import ConfigError
from .adversary import Adversary
from .agreement import agreement_rounds, averaging_agreement, check_requirement, diameter


@dataclass
class LearnSetup:
    dataset: str = "mnist"
    data_dir: str | None = None
    n: int = 10
    f: int = 3
    method: str = "rb_trimmed_mean"
    attack: str = "alie"
    attack_params: dict[str, Any] = field(default_factory=dict)
    model: str = "mlp20"
    partition: str = "dirichlet"
    alpha: float = 0.3
    labels_per_worker: int = 2
    batch_size: int = 32
    lr: float = 0.5
    steps: int = 200
    eval_every: int = 20
    seed: int = 0
    max_grad_rounds: int | None = None
    model_rounds: int = 1
    schedule: str = "adversarial"
    broadcast: bool = True
    eval_size: int | None = None  # test samples used for the per-peer accuracies (None: all)
    threads: int = 0  # torch intra-op threads (0: leave as is; 1 is much faster for these small tensors on a loaded machine)
    momentum: float = 0.0  # worker momentum of each honest peer's gradients before the gradient agreement (engine.work)
    momentum_form: str = "ema"


def learn(setup: LearnSetup, dataset: Dataset | None = None, progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run LEARN; returns ``{"setup", "history" (one row per evaluation), "final_worst_accuracy", ...}``."""
    s = setup
    n, f = s.n, s.f
    h = n - f
    if h < 1:
        raise ConfigError(f"learn: need at least one honest peer (n={n}, f={f})")
    check_requirement(s.method, n, f, s.broadcast)
    if s.threads > 0:
        torch.set_num_threads(s.threads)
    adversary = Adversary(s.attack, **s.attack_params)
    gens = {k: torch.Generator().manual_seed(s.seed * 1000 + i) for i, k in enumerate(("partition", "sampling", "agreement"))}
    ds = dataset if dataset is not None else load_dataset(s.dataset, s.data_dir)
    shards = partition(ds.y_train, n, s.partition, gens["partition"], alpha=s.alpha, labels_per_worker=s.labels_per_worker)
    index, sizes = pad_shards(shards[:h])  # honest peers' shards (the Byzantine peers' data plays no role)
    sampler = ShardSampler(index, sizes, s.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        module = MODELS.build(s.model, {}, "model", input_shape=ds.input_shape, num_classes=ds.num_classes)
    model = FlatModel(module)
    theta = model.init().unsqueeze(0).repeat(h, 1)  # every honest peer starts from the same initial model

    def loss(th: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(model(th, x), y)

    grads = vmap(grad_and_value(loss), in_dims=(0, 0, 0))
    momentum = Momentum(h, model.d, s.momentum, s.momentum_form) if s.momentum > 0 else None
    peers = torch.arange(h)
    logits = vmap(lambda th, x: model(th, x), in_dims=(0, None))
    x_test, y_test = ds.x_test, ds.y_test
    if s.eval_size is not None:
        x_test, y_test = x_test[: s.eval_size], y_test[: s.eval_size]

    def accuracies(th: Tensor) -> Tensor:
        correct = torch.zeros(h)
        with torch.no_grad():
            for a in range(0, y_test.shape[0], 5000):
                pred = logits(th, x_test[a : a + 5000]).argmax(-1)
                correct += (pred == y_test[a : a + 5000]).sum(dim=1).float()
        return correct / y_test.shape[0]

    history: list[dict[str, Any]] = []
    messages = nbytes = 0
    agree_s = 0.0
    t_start = time.perf_counter()
    for t in range(1, s.steps + 1):
        idx = sampler.sample(gens["sampling"])
        x = ds.x_train[idx.reshape(-1)].view(*idx.shape, *ds.x_train.shape[1:])
        y = ds.y_train[idx.reshape(-1)].view(idx.shape)
        g, losses = grads(theta, x, y)
        if momentum is not None:
            g = momentum.step(g, peers)
        evaluate = t % s.eval_every == 0 or t == s.steps
        ta = time.perf_counter()
        N = agreement_rounds(t, s.max_grad_rounds)
        ga = averaging_agreement(s.method, g, f, N, adversary, s.schedule, s.broadcast, gens["agreement"], track=evaluate)
        theta = theta - s.lr * ga.outputs
        ma = averaging_agreement(s.method, theta, f, s.model_rounds, adversary, s.schedule, s.broadcast, gens["agreement"], track=False)
        theta = ma.outputs
        agree_s += time.perf_counter() - ta
        messages += ga.messages + ma.messages
        nbytes += ga.bytes + ma.bytes
        if not bool(torch.isfinite(theta).all()):
            theta = torch.nan_to_num(theta, nan=0.0, posinf=1e6, neginf=-1e6)
        if evaluate:
            acc = accuracies(theta)
            last = ga.rounds[-1]
            row = {
                "step": t,
                "grad_rounds": N,
                "train_loss": float(losses.mean()),
                "worst_accuracy": float(acc.min()),
                "mean_accuracy": float(acc.mean()),
                "accuracies": [round(float(a), 4) for a in acc],
                "param_diameter": diameter(theta),
                "grad_diameter_in": ga.rounds[0]["diameter"],
                "grad_diameter_out": last["diameter"],
                "grad_C_max": last["C_max"],
                "grad_C_mean": last["C_mean"],
                "messages": messages,
                "bytes": nbytes,
                "wall_s": time.perf_counter() - t_start,
                "agreement_s": agree_s,
            }
            history.append(row)
            if progress:
                progress(row)
    worst = [r["worst_accuracy"] for r in history]
    return {
        "setup": asdict(s),
        "history": history,
        "final_worst_accuracy": worst[-1],
        "best_worst_accuracy": max(worst),
        "final_mean_accuracy": history[-1]["mean_accuracy"],
        "messages": messages,
        "bytes": nbytes,
        "wall_s": time.perf_counter() - t_start,
        "agreement_s": agree_s,
    }
