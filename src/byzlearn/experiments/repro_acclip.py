"""``byzlearn reproduce acclip``: SGD vs clipping vs Adam vs ACClip under heavy-tailed gradient noise.

Zhang et al., "Why are Adaptive Methods Good for Attention Models?" (NeurIPS 2020) argue that
heavy-tailed stochastic-gradient noise makes SGD fail and that (adaptive coordinate-wise) clipping
fixes it. Their evidence is BERT; here the heavy tail is *injected* and controlled: MNIST, the
``mlp20`` model, 10 workers, and every worker adds i.i.d. symmetric alpha-stable noise of one scale
to each coordinate of its gradient (``heavy_tail.NoisySimulator``). Only the tail index changes
between settings: alpha = 2 is Gaussian (finite variance), alpha < 2 has infinite variance.

Part 1 (no attack, mean aggregation): each optimiser at each noise setting, the learning rate
picked from a small grid on seed 0 (all grid runs are in results.json), then the picked rate run
again on seed 1; the table shows the mean of the two seeds.
Part 2 (10 workers of which 3 Byzantine, noise alpha = 1.2): rules x attacks x optimisers, each
optimiser at the learning rate part 1 picked for that noise setting.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from .. import config as config_mod
from ..data import load_dataset
from .heavy_tail import NoisySimulator
from .reproduce import REPRODUCTIONS, machine, write_json

NOISE_SCALE = 0.01
# (label, alpha, scale): "none" is the plain stochastic gradient
NOISE = [("none", 2.0, 0.0), ("gauss", 2.0, NOISE_SCALE), ("a1.5", 1.5, NOISE_SCALE), ("a1.2", 1.2, NOISE_SCALE), ("a1.1", 1.1, NOISE_SCALE)]
METHODS: dict[str, tuple[dict[str, Any], list[float]]] = {  # fixed keys, learning-rate grid
    "sgd": ({"name": "sgd"}, [0.01, 0.03, 0.1, 0.3, 1.0]),
    "clipped_sgd": ({"name": "clipped_sgd", "max_norm": 1.0}, [0.01, 0.03, 0.1, 0.3, 1.0]),
    "coord_clipped_sgd": ({"name": "coord_clipped_sgd", "threshold": 0.01}, [0.01, 0.03, 0.1, 0.3, 1.0]),
    "adam": ({"name": "adam"}, [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]),
    "acclip": ({"name": "acclip"}, [0.01, 0.03, 0.1, 0.3, 1.0]),
}
ATTACK_NOISE = "a1.2"
RULES = ["mean", "median", "centered_clipping"]
ATTACKS = ["none", "sign_flip", "alie"]
ATTACK_METHODS = ["sgd", "coord_clipped_sgd", "adam", "acclip"]

_DATASET = None  # set in the parent before the worker processes fork


def _init_worker() -> None:
    torch.set_num_threads(1)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    """One run: returns a results.json row (with its accuracy curve)."""
    s = spec["setting"]
    over = [
        f"data.name={s['data']}", f"model.name={s['model']}", f"workers.n={s['n']}", f"workers.byzantine={s['byzantine']}",
        f"attack.name={s['attack']}", f"aggregator.name={s['aggregator']}", f"train.seed={s['seed']}",
        f"train.rounds={s['rounds']}", "train.threads=1",
    ]
    over += [f"optimizer.{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in {**spec["optimizer"], "lr": s["lr"]}.items()]
    cfg = config_mod.load(None, over)
    t0 = time.perf_counter()
    sim = NoisySimulator(cfg, dataset=_DATASET, noise_alpha=s["noise_alpha"], noise_scale=s["noise_scale"])
    curve, losses = [], []
    for r in range(1, s["rounds"] + 1):
        losses.append(sim.step())
        if r % spec["eval_every"] == 0 or r == s["rounds"]:
            curve.append((r, sim.evaluate()[1]))
    wall = time.perf_counter() - t0
    tail = [x for x in losses[-20:]]
    return {
        "method": spec["method"], "setting": s, "part": spec["part"],
        "final_test_accuracy": curve[-1][1], "best_test_accuracy": max(a for _, a in curve),
        "final_train_loss": _finite(sum(tail) / len(tail)), "wall_time_s": round(wall, 2),
        "curve": [[r, a] for r, a in curve],
    }


def _setting(data: str, model: str, rounds: int, noise: tuple[str, float, float], lr: float, seed: int,
             byz: int = 0, attack: str = "none", rule: str = "mean") -> dict[str, Any]:
    label, alpha, scale = noise
    return {
        "data": data, "model": model, "n": 10, "byzantine": byz, "attack": attack, "aggregator": rule,
        "noise": label, "noise_alpha": alpha, "noise_scale": scale, "lr": lr, "seed": seed, "rounds": rounds,
    }


def _map(specs: list[dict[str, Any]], jobs: int) -> list[dict[str, Any]]:
    with ProcessPoolExecutor(jobs, mp_context=get_context("fork"), initializer=_init_worker) as ex:
        return list(ex.map(_run, specs))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


@REPRODUCTIONS.register("acclip")
def reproduce(out: Path, quick: bool, data_dir: str | None) -> None:
    """ACClip vs SGD, clipped SGD, Adam under injected heavy-tailed gradient noise; ACClip with robust rules under attack (MNIST)."""
    global _DATASET
    t_start = time.perf_counter()
    data, model = ("digits", "mlp20") if quick else ("mnist", "mlp20")
    rounds, eval_every = (40, 20) if quick else (300, 50)
    noise_set = [NOISE[0], NOISE[3]] if quick else NOISE
    rules, attacks = (RULES[:2], ATTACKS[:2]) if quick else (RULES, ATTACKS)
    _DATASET = load_dataset(data, data_dir, download=True)
    jobs = 1 if quick else 2

    # -- part 1: learning-rate grid on seed 0, the picked rate again on seed 1 ---------------------------
    grid = [
        {"method": m, "part": "noise", "optimizer": fixed, "eval_every": eval_every,
         "setting": _setting(data, model, rounds, nz, lr, seed=0)}
        for nz in noise_set for m, (fixed, lrs) in METHODS.items() for lr in (lrs[1:2] if quick else lrs)
    ]
    rows = _map(grid, jobs)
    # the rate is picked on the honest workers' final training loss (never on test data)
    picked: dict[tuple[str, str], dict[str, Any]] = {}
    loss = lambda r: r["final_train_loss"] if r["final_train_loss"] is not None else math.inf  # noqa: E731
    for r in rows:
        key = (r["method"], r["setting"]["noise"])
        if key not in picked or loss(r) < loss(picked[key]):
            picked[key] = r
    for r in rows:
        r["picked_lr"] = r is picked[(r["method"], r["setting"]["noise"])]
    reruns = [
        {"method": m, "part": "noise", "optimizer": METHODS[m][0], "eval_every": eval_every,
         "setting": {**r["setting"], "seed": 1}}
        for (m, _), r in picked.items()
    ]
    for r in _map(reruns, jobs):
        r["picked_lr"] = True
        rows.append(r)

    # -- part 2: rules x attacks x optimisers, 3 Byzantine of 10, heavy-tailed noise ------------------------
    nz = next(x for x in noise_set if x[0] == ATTACK_NOISE)
    specs = [
        {"method": m, "part": "attack", "optimizer": METHODS[m][0], "eval_every": eval_every,
         "setting": _setting(data, model, rounds, nz, picked[(m, ATTACK_NOISE)]["setting"]["lr"], 0, 3, atk, rule)}
        for rule in rules for atk in attacks for m in ATTACK_METHODS
    ]
    rows += _map(specs, jobs)
    wall = time.perf_counter() - t_start

    write_json([{k: v for k, v in r.items()} for r in rows], out)
    _figures(rows, out, noise_set, rules, attacks)
    _report(rows, out, noise_set, rules, attacks, wall, quick, data_dir)


# -- tables and figures ------------------------------------------------------------------------------------
def _part1(rows: list[dict[str, Any]], method: str, noise: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["part"] == "noise" and r.get("picked_lr") and r["method"] == method and r["setting"]["noise"] == noise]


def _cell(rows: list[dict[str, Any]], method: str, noise: str) -> tuple[float, float, float]:
    sel = _part1(rows, method, noise)
    accs = [r["final_test_accuracy"] for r in sel]
    return _mean(accs), min(accs), sel[0]["setting"]["lr"]


def _figures(rows: list[dict[str, Any]], out: Path, noise_set: list, rules: list[str], attacks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [n[0] for n in noise_set]
    fig, ax = plt.subplots(figsize=(7, 4))
    for m in METHODS:
        ax.plot(labels, [100 * _cell(rows, m, n)[0] for n in labels], marker="o", label=m)
    s0 = rows[0]["setting"]
    ax.set(xlabel="injected noise (per coordinate, scale 0.01; aN = alpha-stable, tail index N)", ylabel="final test accuracy (%)",
           title=f"{s0['data']} {s0['model']}, 10 workers, mean, {s0['rounds']} rounds (mean of 2 seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_tail.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(labels), figsize=(3.2 * len(labels), 3.4), sharey=True)
    for ax, n in zip(axes, labels):
        for m in METHODS:
            r = next(x for x in _part1(rows, m, n) if x["setting"]["seed"] == 0)
            ax.plot([c[0] for c in r["curve"]], [100 * c[1] for c in r["curve"]], marker=".", label=m)
        ax.set(title=f"noise: {n}", xlabel="round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    part2 = [r for r in rows if r["part"] == "attack"]
    groups = [(rule, atk) for rule in rules for atk in attacks]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(groups)), 4))
    w = 0.8 / len(ATTACK_METHODS)
    for j, m in enumerate(ATTACK_METHODS):
        ys = [100 * next(r["final_test_accuracy"] for r in part2 if r["method"] == m and r["setting"]["aggregator"] == g[0]
                         and r["setting"]["attack"] == g[1]) for g in groups]
        ax.bar([i + (j - (len(ATTACK_METHODS) - 1) / 2) * w for i in range(len(groups))], ys, w, label=m)
    ax.set_xticks(range(len(groups)), [f"{a}\n{b}" for a, b in groups], fontsize=7)
    ax.set(ylabel="final test accuracy (%)", title=f"3 Byzantine of 10, noise {ATTACK_NOISE}, seed 0")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "attacks.png", dpi=110)
    plt.close(fig)


def _report(rows: list[dict[str, Any]], out: Path, noise_set: list, rules: list[str], attacks: list[str],
            wall: float, quick: bool, data_dir: str | None) -> None:
    labels = [n[0] for n in noise_set]
    cmd = "byzlearn reproduce acclip" + (f" --data-dir {data_dir}" if data_dir else "") + (" --quick" if quick else "")
    t1 = ["| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for m in METHODS:
        cells = []
        for n in labels:
            mean, lo, lr = _cell(rows, m, n)
            cells.append(f"{100 * mean:.1f} (min {100 * lo:.1f}, lr {lr:g})")
        t1.append(f"| {m} | " + " | ".join(cells) + " |")
    part2 = [r for r in rows if r["part"] == "attack"]
    t2 = ["| rule | attack | " + " | ".join(ATTACK_METHODS) + " |", "|---|---|" + "---|" * len(ATTACK_METHODS)]
    for rule in rules:
        for atk in attacks:
            accs = [next(r["final_test_accuracy"] for r in part2 if r["method"] == m and r["setting"]["aggregator"] == rule
                         and r["setting"]["attack"] == atk) for m in ATTACK_METHODS]
            t2.append(f"| {rule} | {atk} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + " |")
    run_time = sum(r["wall_time_s"] for r in rows)
    text = TEMPLATE.format(
        table1="\n".join(t1), table2="\n".join(t2), command=cmd, machine=machine(), wall=wall / 60, runs=len(rows),
        comparison=_comparison(rows, labels), run_time=run_time / 60, rounds=rows[0]["setting"]["rounds"], quick="\n**QUICK RUN (smoke check, not the committed study).**\n" if quick else "",
    )
    (out / "results.md").write_text(text)


def _comparison(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """The measured drops (computed), then the reading of them (text; see DISCUSSION)."""
    heavy = labels[-1]
    lines = [f"Drop in final accuracy from `none` to `{heavy}` (points, mean of 2 seeds): " + ", ".join(
        f"{m} {100 * (_cell(rows, m, 'none')[0] - _cell(rows, m, heavy)[0]):.1f}" for m in METHODS) + "."]
    if "gauss" in labels:
        lines.append("From `none` to `gauss` (finite variance, same scale): " + ", ".join(
            f"{m} {100 * (_cell(rows, m, 'none')[0] - _cell(rows, m, 'gauss')[0]):.1f}" for m in METHODS) + ".")
    return "\n".join(lines) + "\n\n" + DISCUSSION


DISCUSSION = """Reading of the committed run (MNIST, 300 rounds; the text does not change with a rerun, the numbers might):

- **SGD degrades under heavy tails, not under Gaussian noise of the same scale**: 92.5% with no noise and
  with Gaussian noise, 86% at alpha = 1.5, 45% at 1.2, 32% at 1.1 (each at its own best learning rate,
  picked on training loss). This is the paper's claim (heavy-tailed noise, not noise as such, is what
  hurts SGD), reproduced on injected noise.
- **ACClip degrades much less than SGD but it does degrade**: 92.4 / 92.0 / 88.1 / 67.2 / 50.7%. It is
  above SGD at every heavy tail and about level with global clipping (67 vs 68% at 1.2, 51 vs 43% at
  1.1), but here it is *behind* Adam (86.6 / 83.6% at
  1.2 / 1.1) and far behind coordinate-wise clipping at a fixed threshold of 0.01 (90-92% everywhere). The
  paper's claim that ACClip does better than Adam is not reproduced on this task. A reason visible in the
  update: a spike g in one coordinate raises tau by (1-b2)|g| (alpha = 1), so the spike itself is clipped
  only to about 1/10 of what momentum SGD would apply, and the raised tau then lets the next spikes
  through for ~1/(1-b2) rounds; a fixed threshold does not adapt upward. The injected noise is i.i.d.
  across coordinates with a known scale, which is the most favourable case for a fixed coordinate-wise
  threshold (0.01 = the noise scale, chosen once, not tuned per setting).
- Learning rates: the picks of the clipped baselines (1.0) and Adam (0.01) are at the top of their grids;
  SGD's and ACClip's picks under the heaviest tails (0.03-0.3) are inside the grid.
- **With robust aggregation (part 2)**: the rules remove much of the heavy tail themselves (median with SGD:
  87.5% vs mean with SGD: 40.2% without attack), so the optimiser matters less behind the median; ACClip
  composes with every rule (no failure) and behind the median it is within 1-2 points of Adam. Under ALIE
  every combination stays at or below 50%: with heavy-tailed honest noise the honest standard deviation
  ALIE scales by is huge, and no optimiser here fixes that. One seed only in part 2.
- Not reproduced: BERT pre-training/fine-tuning, the attention models, the measurement of the tail index of
  real gradient noise, the paper's convergence bounds."""


TEMPLATE = """# ACClip under heavy-tailed gradient noise (Zhang et al., NeurIPS 2020)
{quick}
Command: `{command}` (data: MNIST files from `--data-dir`).
Machine: {machine}. Wall time: {wall:.1f} min for {runs} runs (sum of the runs' own times {run_time:.1f} min; 2 runs
at a time, one thread each).

## What is run

- **Paper**: "Why are Adaptive Methods Good for Attention Models?" (Zhang, Karimireddy, Veit, Kim, Reddi,
  Kumar, Sra, NeurIPS 2020). Claim: stochastic-gradient noise of attention models is heavy-tailed; under
  heavy tails SGD can fail while clipping converges; ACClip (adaptive coordinate-wise clipping) beats Adam
  on BERT.
- **The paper's method, as implemented** (`byzlearn.optim.ACClip`, `optimizer.name = "acclip"`): per
  coordinate `m = b1 m + (1-b1) g`, `t = b2 t + (1-b2) |g|^alpha`, `tau = t^(1/alpha)`,
  `x -= lr * min(tau / (|m| + eps), 1) * m`, no bias correction, betas (0.9, 0.99), eps 1e-5.
  **alpha = 1**: the paper's text sets alpha = 1 by default (a conservative moment estimate when the true
  tail index is unknown; read through a re-implementation's docstring quoting it, the PDF itself was not
  read here). The public PyTorch re-implementation of the ICLR-2020 version uses alpha = 2.
- **Baselines**: SGD (`sgd`, no momentum), GClip (`clipped_sgd`, global norm clipped to 1.0), CClip
  (`coord_clipped_sgd`, every coordinate clipped to +-0.01, fixed), Adam (`adam`, torch defaults but lr).
- **What deviates from the paper**: the task. The paper measures heavy tails in real BERT gradients; here
  the heavy tail is injected: MNIST, `mlp20` (784-20-10 sigmoid, d = 15,910), 10 workers, batch 32, 300
  rounds, the server averages (`mean`) and applies the optimiser; every worker adds i.i.d. symmetric
  alpha-stable noise of scale 0.01 to each gradient coordinate (the honest gradient coordinates have a
  median magnitude of about 0.003 at initialisation). Settings: `none` (no injected noise), `gauss`
  (alpha = 2: Gaussian, variance 2 x 0.01^2), `a1.5`, `a1.2`, `a1.1` (infinite variance, same scale).
  Only the tail index changes between the last four. Noise this way is independent across coordinates,
  which favours coordinate-wise rules; real heavy-tailed noise is not known to be. No attention model and
  no BERT were trained.
- **Learning rates**: per method and noise setting, the lowest final training loss of the honest
  workers (mean of the last 20 rounds; test data is never used to choose) over a 5-point grid on seed 0
  (SGD and the clipped methods: 0.01, 0.03, 0.1, 0.3, 1.0; Adam: 1e-4, 3e-4, 1e-3, 3e-3, 1e-2), then that
  rate run again on seed 1. Every grid run is in `results.json` (`picked_lr` marks the picked ones). The thresholds of the
  fixed clipping baselines (1.0 and 0.01) were not tuned per setting.

## Part 1: accuracy against the noise's tail (no attack)

Final test accuracy (%) after {rounds} rounds, mean of seeds 0 and 1 (min of the two, picked lr).

{table1}

![accuracy against tail index](accuracy_vs_tail.png)

![test accuracy curves](curves.png)

## Part 2: ACClip with robust aggregation under attack

10 workers of which 3 Byzantine (fixed set), noise `a1.2` on every worker's gradient before the attack
sees the honest rows, seed 0; each optimiser at the lr part 1 picked for `a1.2`. Final test accuracy (%).

{table2}

![rules x attacks x optimisers](attacks.png)

## Comparison with the paper

{comparison}
"""
