"""Meta-training of a learned aggregator by truncated BPTT: ``byzlearn meta-train CONFIG --out DIR``.

Following Ji et al. (IJCAI 2019, §4.2) and L2L (Andrychowicz et al., NeurIPS 2016): a trajectory
starts a fresh model (new initialisation, new Byzantine set and attack drawn from the config) and
trains it for ``task.steps`` rounds with the aggregator in the loop. Every ``task.unroll`` = T
rounds the meta-loss ``sum_{t=1..T} L(theta_t)`` (honest training loss on a fresh minibatch after
each update) is back-propagated to the network's weights through the updates and the recurrent
states, and Adam takes one step; then the graph is cut (truncated BPTT) and the trajectory goes
on. The workers' gradients and public-batch losses are constants (the dashed edges of the paper's
Fig. 2: no second derivatives). Validation trajectories with fixed seeds score the network every
``meta.validate_every`` trajectories; the best weights are kept (early stopping with
``meta.patience``) and saved with their card.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..checkpoints import load_meta_checkpoint
from ..config import Config, apply_overrides
from ..data import Dataset, load_dataset
from ..engine.round import sgd_step
from ..registry import ConfigError
from .aggregator import learned_update, probe_losses, reference_norm, save_aggregator
from .meta_config import (  # noqa: F401  (the configs are part of this module's interface)
    SECTIONS,
    ByzantineConfig,
    MetaConfig,
    MetaTrainConfig,
    NetworkConfig,
    TaskConfig,
    _attack_table,
    _run_configs,
    build_network,
    card_of,
    from_sections,
    load_config,
    method_name,
    run_config,
)
from .network import CoordinatewiseRNN


class Trajectory:
    """One optimisee run with the aggregator in the loop (a simulator whose update is differentiable)."""

    def __init__(self, cfg: MetaTrainConfig, net: CoordinatewiseRNN, run_cfg: Config, dataset: Dataset):
        from ..engine.simulator import Simulator

        self.cfg, self.net, self.card = cfg, net, card_of(cfg)
        self.sim = Simulator(run_cfg, dataset)
        sim = self.sim
        train = torch.ones(sim.y_train.shape[0], dtype=torch.bool)
        train[sim.public_idx] = False
        self.pool = train.nonzero().squeeze(1)
        self.gen = torch.Generator().manual_seed(run_cfg.train.seed + 7)
        self.theta: Tensor = sim.theta.detach().clone()
        self.state = net.initial_state(sim.d)

    def step(self) -> Tensor:
        """One round; returns the (differentiable) honest training loss after the update."""
        sim, card = self.sim, self.card
        sim.theta = self.theta.detach()  # the workers' gradients are constants (no second derivatives)
        ctx = sim.aggregation_context()
        G, _ = sim.gradient_batch(ctx)
        losses = ref = None
        if self.net.loss_info:
            ref = reference_norm(card, sim.public_loss, sim.theta)
            losses = probe_losses(sim.public_loss, sim.theta, G, card["probe_lr"], card["probe"], ref_norm=ref)
        u, self.state = learned_update(self.net, G, self.state, card, losses, ref)
        if card["output"] == "step":  # L2L: the network's output is the step itself
            self.theta = self.theta + card["step_scale"] * u
        else:  # the round's server update, differentiable (engine.round.sgd_step)
            self.theta = sgd_step(self.theta, u, card["server_lr"])
        sim.round += 1
        pick = self.pool[torch.randint(self.pool.numel(), (self.cfg.task.meta_batch,), generator=self.gen)]
        return F.cross_entropy(sim.model(self.theta, sim.x_train[pick]), sim.y_train[pick])

    def truncate(self) -> None:
        self.theta = self.theta.detach()
        self.state = [s.detach() for s in self.state]


def _draw(cfg: MetaTrainConfig, index: int) -> tuple[int, dict[str, Any]]:
    g = torch.Generator().manual_seed(cfg.meta.seed * 1_000_003 + index)
    b = cfg.byzantine
    count = b.counts[int(torch.randint(len(b.counts), (1,), generator=g))]
    attack = _attack_table(b.attacks[int(torch.randint(len(b.attacks), (1,), generator=g))])
    return count, (attack if count else {"name": "none"})


def validation_steps(cfg: MetaTrainConfig) -> int:
    """Rounds per validation trajectory: ``meta.validate_steps``, or the training horizon ``task.steps``."""
    return cfg.meta.validate_steps or cfg.task.steps


@torch.no_grad()
def validation_scores(cfg: MetaTrainConfig, net: CoordinatewiseRNN, dataset: Dataset) -> dict[str, float]:
    """Mean honest training loss of fixed validation trajectories, one per (count, attack) pair
    (keys ``"3/gaussian"``, ...), each ``meta.validate_steps`` (default ``task.steps``) rounds long.

    Each step's loss is capped at ``2 ln(classes)`` (twice a uniform guess), so that one diverging
    trajectory counts as badly as a failed one instead of drowning every other setting's score.
    """
    net.eval()
    cap = 2 * math.log(dataset.num_classes)
    steps = validation_steps(cfg)
    scores: dict[str, float] = {}
    for i, run_cfg in enumerate(_run_configs(cfg, seed=900_000 + cfg.meta.seed * 100)):
        run_cfg.train.seed = 900_000 + cfg.meta.seed * 100 + i
        run_cfg.train.rounds = steps
        traj = Trajectory(cfg, net, run_cfg, dataset)
        total = 0.0
        for _ in range(steps):
            loss = float(traj.step())
            total += min(loss, cap) if math.isfinite(loss) else cap
        a = run_cfg.attack
        label = a["name"] + "".join(f",{k}={v}" for k, v in a.items() if k != "name")
        scores[f"{run_cfg.workers.byzantine}/{label}"] = total / steps
    net.train()
    return scores


def validation_score(cfg: MetaTrainConfig, net: CoordinatewiseRNN, dataset: Dataset) -> float:
    """The score early stopping keeps the best weights by: the mean of ``validation_scores``."""
    scores = validation_scores(cfg, net, dataset)
    return sum(scores.values()) / len(scores)


def meta_validate(folder: str | Path, overrides: list[str] | None = None, dataset: Dataset | None = None) -> dict[str, Any]:
    """Score a trained aggregator on its validation trajectories (``byzlearn meta-validate``).

    The config is the card's training config with ``overrides`` applied: longer trajectories
    (``meta.validate_steps=500``) show what a short meta-training horizon hides, and ``aggregator.input_clip``
    compares using a network with and without the norm bound. Training data only, like early stopping.
    """
    from .aggregator import load_aggregator

    net, card = load_aggregator(folder)
    if not card.get("training_config"):
        raise ConfigError(
            f"{str(folder)!r}: its card has no training_config, which meta-validate replays; give a folder written by byzlearn meta-train"
        )
    raw = apply_overrides(card["training_config"], overrides or [], sections=tuple(SECTIONS), open_defaults={})
    cfg = from_sections({**raw, "method": card.get("method", "")})
    if build_network(cfg).hyperparameters() != net.hyperparameters():
        raise ConfigError("meta-validate overrides may change the task, the Byzantine draw and the use options, not the network's shape")
    ds = dataset if dataset is not None else load_dataset(cfg.task.data, cfg.task.data_dir, True)
    t0 = time.perf_counter()
    scores = validation_scores(cfg, net, ds)
    return {
        "method": cfg.method,
        "folder": str(folder),
        "overrides": list(overrides or []),
        "steps": validation_steps(cfg),
        "input_clip": cfg.aggregator.input_clip,
        "score": sum(scores.values()) / len(scores),
        "settings": scores,
        "wall_time": round(time.perf_counter() - t0, 2),
    }


CHECKPOINT = "meta_checkpoint.pt"


def meta_train(
    cfg: MetaTrainConfig,
    out: str | Path,
    progress: bool | None = None,
    dataset: Dataset | None = None,
    resume: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any] | None:
    """Meta-train, save the best network and its card in ``out``; returns the card.

    At every validation the whole meta-training state (weights, Adam, best weights, history) is
    checkpointed to ``out/meta_checkpoint.pt``; ``resume=True`` continues from it. ``stop_after``
    (tests): return ``None`` after that many trajectories, as if killed right after a checkpoint.
    """
    out = Path(out)
    if cfg.meta.threads > 0:
        torch.set_num_threads(cfg.meta.threads)
    torch.manual_seed(cfg.meta.seed)
    ds = dataset if dataset is not None else load_dataset(cfg.task.data, cfg.task.data_dir, True)
    net = build_network(cfg)
    if cfg.meta.init:
        from .aggregator import load_aggregator

        try:
            net.load_state_dict(load_aggregator(cfg.meta.init)[0].state_dict())
        except RuntimeError as e:
            raise ConfigError(f"meta.init = {cfg.meta.init!r} holds a network of another shape than [aggregator]: {e}") from e
    opt = torch.optim.Adam(net.parameters(), lr=cfg.meta.lr)
    if resume and (out / CHECKPOINT).exists():
        ck = load_meta_checkpoint(out / CHECKPOINT)
        if _without_budget(ck["config"]) != _without_budget(cfg.to_dict()):
            raise ConfigError(
                f"{str(out / CHECKPOINT)!r} was written by another meta-training config; use a new --out "
                "(only meta.trajectories may change: a larger value extends a finished training)"
            )
        try:
            net.load_state_dict(ck["net"])
            opt.load_state_dict(ck["opt"])
            torch.set_rng_state(ck["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(
                f"{str(out / CHECKPOINT)!r} does not fit this meta-training config ({type(e).__name__}: {e}); "
                "restore it or start again in a new --out"
            ) from None
        best, history, first, stale = ck["best"], ck["history"], ck["next"], ck["stale"]
        meta_steps, elapsed = ck["meta_steps"], ck["elapsed"]
    else:
        best = {"score": validation_score(cfg, net, ds), "trajectory": 0, "weights": {k: v.clone() for k, v in net.state_dict().items()}}
        history = [{"trajectory": 0, "validation": best["score"]}]
        first, stale, meta_steps, elapsed = 1, 0, 0, 0.0
    out.mkdir(parents=True, exist_ok=True)  # only now: a config, data or checkpoint error leaves nothing behind
    start = time.perf_counter() - elapsed
    bar = tqdm(
        range(first, cfg.meta.trajectories + 1),
        disable=None if progress is None else not progress,
        desc=f"meta-train {cfg.method}",
        unit="traj",
    )
    unrolls = math.ceil(cfg.task.steps / cfg.task.unroll)
    for k in bar:
        count, attack = _draw(cfg, k)
        traj = Trajectory(cfg, net, run_config(cfg, count, attack, seed=cfg.meta.seed * 100_000 + k), ds)
        traj_loss, skipped = 0.0, 0
        for _ in range(unrolls):
            T = min(cfg.task.unroll, cfg.task.steps - traj.sim.round)
            meta_loss = sum(traj.step() for _ in range(T))
            opt.zero_grad()
            ok = bool(torch.isfinite(meta_loss))
            if ok:
                meta_loss.backward()
                ok = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in net.parameters())
            if ok:
                if cfg.meta.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.meta.grad_clip)
                opt.step()
                meta_steps += 1
            else:  # a diverged unroll gives no usable meta-gradient
                skipped += 1
            loss_value = float(meta_loss.detach())
            traj_loss += loss_value / T if math.isfinite(loss_value) else float("nan")
            traj.truncate()
        row: dict[str, Any] = {
            "trajectory": k,
            "byzantine": count,
            "attack": attack["name"],
            "meta_loss": traj_loss / unrolls,
            "skipped_unrolls": skipped,
        }
        history.append(row)
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")  # progress, readable while it trains
        if k % cfg.meta.validate_every == 0 or k == cfg.meta.trajectories:
            row["validation"] = validation_score(cfg, net, ds)
            if row["validation"] < best["score"]:
                best = {"score": row["validation"], "trajectory": k, "weights": {n: v.clone() for n, v in net.state_dict().items()}}
                stale = 0
            else:
                stale += 1
            bar.set_postfix(val=f"{row['validation']:.3f}", best=f"{best['score']:.3f}")
            _checkpoint(out, cfg, net, opt, best, history, k + 1, stale, meta_steps, time.perf_counter() - start)
        if cfg.meta.patience > 0 and stale >= cfg.meta.patience:
            break
        if stop_after is not None and k - first + 1 >= stop_after:
            bar.close()
            return None
    bar.close()
    wall = time.perf_counter() - start
    net.load_state_dict(best["weights"])
    card = {
        **card_of(cfg),
        "validation_score": best["score"],
        "best_trajectory": best["trajectory"],
        "trajectories_run": history[-1]["trajectory"],
        "meta_steps": meta_steps,
        "wall_time": round(wall, 2),
        "meta_steps_per_second": round(meta_steps / wall, 4) if wall > 0 else None,
        "training_config": cfg.to_dict(),
    }
    save_aggregator(net, card, out)
    plot_history(history, out / "meta_loss.png", cfg.method)
    return json.loads((out / "card.json").read_text())


def _without_budget(d: dict[str, Any]) -> dict[str, Any]:
    return {**d, "meta": {k: v for k, v in d["meta"].items() if k != "trajectories"}}


def _checkpoint(
    out: Path,
    cfg: MetaTrainConfig,
    net: CoordinatewiseRNN,
    opt: torch.optim.Optimizer,
    best: dict[str, Any],
    history: list[dict[str, Any]],
    next_k: int,
    stale: int,
    meta_steps: int,
    elapsed: float,
) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    state = {
        "config": cfg.to_dict(),
        "net": net.state_dict(),
        "opt": opt.state_dict(),
        "best": best,
        "history": history,
        "next": next_k,
        "stale": stale,
        "meta_steps": meta_steps,
        "elapsed": elapsed,
        "rng": torch.get_rng_state(),
    }
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    tmp.replace(out / CHECKPOINT)


def plot_history(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    from ..plots import plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    tr = [h for h in history if "meta_loss" in h and math.isfinite(h["meta_loss"])]
    ax.plot([h["trajectory"] for h in tr], [h["meta_loss"] for h in tr], ".", alpha=0.5, label="meta-loss per step (training trajectory)")
    va = [h for h in history if "validation" in h]
    ax.plot([h["trajectory"] for h in va], [h["validation"] for h in va], "-o", color="tab:red", label="validation score")
    ax.set(xlabel="trajectory", ylabel="mean honest training loss", title=f"meta-training {title}", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
