"""``byzlearn reproduce acclip``: SGD vs clipping vs Adam vs ACClip under heavy-tailed gradient noise.

Zhang et al., "Why are Adaptive Methods Good for Attention Models?" (NeurIPS 2020) argue that
heavy-tailed stochastic-gradient noise makes SGD fail and that (adaptive coordinate-wise) clipping
fixes it. Their evidence is BERT; here the heavy tail is *injected* and controlled: MNIST, the
``mlp20`` model, 10 workers, and every worker adds i.i.d. symmetric alpha-stable noise of one scale
to each coordinate of its gradient (``heavy_tail.NoisySimulator``). Two scales, and within a scale only
the tail index changes: alpha = 2 is Gaussian (finite variance), alpha < 2 has infinite variance.

Part 1 (no attack, mean aggregation): each optimiser at each noise setting, the learning rate (and
ACClip's b2) picked from a small grid on seed 0 (all grid runs are in results.json), then the picked rate run
again on seed 1; the table shows the mean of the two seeds.
Part 2 (10 workers of which 3 Byzantine, noise alpha = 1.3 at scale 0.003): rules x attacks x
optimisers, each optimiser with the hyper-parameters part 1 picked for that noise setting.
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

SCALES = (0.003, 0.01)  # noise about the size of the gradient's coordinates, and three times that
TAILS = (("gauss", 2.0), ("a1.5", 1.5), ("a1.3", 1.3), ("a1.1", 1.1))
# (label, alpha, scale): "none" is the plain stochastic gradient
NOISE = [("none", 2.0, 0.0)] + [(f"{t} s{sc:g}", a, sc) for sc in SCALES for t, a in TAILS]
# per method: the fixed keys of each variant tried, and the learning-rate grid; the pick is over both
METHODS: dict[str, tuple[list[dict[str, Any]], list[float]]] = {
    "sgd": ([{"name": "sgd"}], [0.03, 0.1, 0.3, 1.0, 3.0]),
    "clipped_sgd": ([{"name": "clipped_sgd", "max_norm": 1.0}], [0.03, 0.1, 0.3, 1.0, 3.0]),
    "coord_clipped_sgd": ([{"name": "coord_clipped_sgd", "threshold": 0.01}], [0.03, 0.1, 0.3, 1.0, 3.0]),
    "adam": ([{"name": "adam"}], [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]),
    # the paper's betas (0.9, 0.99), and a slower alpha-moment estimate (b2 = 0.999)
    "acclip": ([{"name": "acclip", "betas": [0.9, 0.99]}, {"name": "acclip", "betas": [0.9, 0.999]}], [0.1, 0.3, 1.0, 3.0, 10.0]),
}
ATTACK_NOISE = "a1.3 s0.003"
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
        f"data.name={s['data']}",
        f"model.name={s['model']}",
        f"workers.n={s['n']}",
        f"workers.byzantine={s['byzantine']}",
        f"attack.name={s['attack']}",
        f"aggregator.name={s['aggregator']}",
        f"train.seed={s['seed']}",
        f"train.rounds={s['rounds']}",
        "train.threads=1",
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
        "method": spec["method"],
        "setting": s,
        "part": spec["part"],
        "optimizer": spec["optimizer"],
        "final_test_accuracy": curve[-1][1],
        "best_test_accuracy": max(a for _, a in curve),
        "final_train_loss": _finite(sum(tail) / len(tail)),
        "wall_time_s": round(wall, 2),
        "curve": [[r, a] for r, a in curve],
    }


def _setting(
    data: str,
    model: str,
    rounds: int,
    noise: tuple[str, float, float],
    lr: float,
    seed: int,
    byz: int = 0,
    attack: str = "none",
    rule: str = "mean",
) -> dict[str, Any]:
    label, alpha, scale = noise
    return {
        "data": data,
        "model": model,
        "n": 10,
        "byzantine": byz,
        "attack": attack,
        "aggregator": rule,
        "noise": label,
        "noise_alpha": alpha,
        "noise_scale": scale,
        "lr": lr,
        "seed": seed,
        "rounds": rounds,
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
    noise_set = [NOISE[0], next(x for x in NOISE if x[0] == ATTACK_NOISE)] if quick else NOISE
    rules, attacks = (RULES[:2], ATTACKS[:2]) if quick else (RULES, ATTACKS)
    _DATASET = load_dataset(data, data_dir, download=True)
    jobs = 1 if quick else 2

    # -- part 1: learning-rate grid on seed 0, the picked rate again on seed 1 ---------------------------
    grid = [
        {
            "method": m,
            "part": "noise",
            "optimizer": fixed,
            "eval_every": eval_every,
            "setting": _setting(data, model, rounds, nz, lr, seed=0),
        }
        for nz in noise_set
        for m, (variants, lrs) in METHODS.items()
        for fixed in (variants[:1] if quick else variants)
        for lr in (lrs[2:3] if quick else lrs)
    ]
    rows = _map(grid, jobs)
    # the rate (and variant) is picked on the honest workers' final training loss (never on test data)
    picked: dict[tuple[str, str], dict[str, Any]] = {}
    loss = lambda r: r["final_train_loss"] if r["final_train_loss"] is not None else math.inf  # noqa: E731
    for r in rows:
        key = (r["method"], r["setting"]["noise"])
        if key not in picked or loss(r) < loss(picked[key]):
            picked[key] = r
    for r in rows:
        r["picked_lr"] = r is picked[(r["method"], r["setting"]["noise"])]
    reruns = [
        {"method": m, "part": "noise", "optimizer": r["optimizer"], "eval_every": eval_every, "setting": {**r["setting"], "seed": 1}}
        for (m, _), r in picked.items()
    ]
    for r in _map(reruns, jobs):
        r["picked_lr"] = True
        rows.append(r)

    # -- part 2: rules x attacks x optimisers, 3 Byzantine of 10, heavy-tailed noise ------------------------
    nz = next(x for x in noise_set if x[0] == ATTACK_NOISE)
    specs = [
        {
            "method": m,
            "part": "attack",
            "optimizer": picked[(m, ATTACK_NOISE)]["optimizer"],
            "eval_every": eval_every,
            "setting": _setting(data, model, rounds, nz, picked[(m, ATTACK_NOISE)]["setting"]["lr"], 0, 3, atk, rule),
        }
        for rule in rules
        for atk in attacks
        for m in ATTACK_METHODS
    ]
    rows += _map(specs, jobs)
    wall = time.perf_counter() - t_start

    write_json([{k: v for k, v in r.items()} for r in rows], out)
    _figures(rows, out, noise_set, rules, attacks)
    _report(rows, out, noise_set, rules, attacks, wall, quick, data_dir)


# -- tables and figures ------------------------------------------------------------------------------------
def _part1(rows: list[dict[str, Any]], method: str, noise: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["part"] == "noise" and r.get("picked_lr") and r["method"] == method and r["setting"]["noise"] == noise]


def _cell(rows: list[dict[str, Any]], method: str, noise: str) -> tuple[float, float, str]:
    """Mean and min final accuracy of the picked runs, and the picked hyper-parameters (lr, and b2 where varied)."""
    sel = _part1(rows, method, noise)
    accs = [r["final_test_accuracy"] for r in sel]
    return _mean(accs), min(accs), _hyper(sel[0])


def _hyper(row: dict[str, Any]) -> str:
    betas = row["optimizer"].get("betas")
    return f"lr {row['setting']['lr']:g}" + (f", b2 {betas[1]:g}" if betas else "")


def _figures(rows: list[dict[str, Any]], out: Path, noise_set: list, rules: list[str], attacks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [n[0] for n in noise_set]
    s0 = rows[0]["setting"]
    scales = [sc for sc in SCALES if any(lab.endswith(f" s{sc:g}") for lab in labels)]
    fig, axes = plt.subplots(1, len(scales), figsize=(5.5 * len(scales), 4), sharey=True, squeeze=False)
    for ax, sc in zip(axes[0], scales):
        xs = [lab for lab in labels if lab == "none" or lab.endswith(f" s{sc:g}")]
        for m in METHODS:
            ax.plot([x.split(" ")[0] for x in xs], [100 * _cell(rows, m, x)[0] for x in xs], marker="o", label=m)
        ax.set(xlabel="injected noise (aN: alpha-stable, tail index N)", title=f"noise scale {sc:g}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{s0['data']} {s0['model']}, 10 workers, mean, {s0['rounds']} rounds (mean of 2 seeds)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_tail.png", dpi=110)
    plt.close(fig)

    cols = min(len(labels), 5)
    rows_n = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 3.2 * rows_n), sharey=True, squeeze=False)
    axes = axes.flatten()
    for ax in axes[len(labels) :]:
        ax.axis("off")
    for ax, n in zip(axes, labels):
        for m in METHODS:
            r = next(x for x in _part1(rows, m, n) if x["setting"]["seed"] == 0)
            ax.plot([c[0] for c in r["curve"]], [100 * c[1] for c in r["curve"]], marker=".", label=m)
        ax.set(title=f"noise: {n}", xlabel="round")
        ax.grid(alpha=0.3)
    for ax in axes[::cols]:
        ax.set_ylabel("test accuracy (%)")
    axes[len(labels) - 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

    part2 = [r for r in rows if r["part"] == "attack"]
    groups = [(rule, atk) for rule in rules for atk in attacks]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(groups)), 4))
    w = 0.8 / len(ATTACK_METHODS)
    for j, m in enumerate(ATTACK_METHODS):
        ys = [
            100
            * next(
                r["final_test_accuracy"]
                for r in part2
                if r["method"] == m and r["setting"]["aggregator"] == g[0] and r["setting"]["attack"] == g[1]
            )
            for g in groups
        ]
        ax.bar([i + (j - (len(ATTACK_METHODS) - 1) / 2) * w for i in range(len(groups))], ys, w, label=m)
    ax.set_xticks(range(len(groups)), [f"{a}\n{b}" for a, b in groups], fontsize=7)
    ax.set(ylabel="final test accuracy (%)", title=f"3 Byzantine of 10, noise {ATTACK_NOISE}, seed 0")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "attacks.png", dpi=110)
    plt.close(fig)


def _report(
    rows: list[dict[str, Any]],
    out: Path,
    noise_set: list,
    rules: list[str],
    attacks: list[str],
    wall: float,
    quick: bool,
    data_dir: str | None,
) -> None:
    labels = [n[0] for n in noise_set]
    cmd = "byzlearn reproduce acclip" + (f" --data-dir {data_dir}" if data_dir else "") + (" --quick" if quick else "")
    t1 = ["| method | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for m in METHODS:
        cells = []
        for n in labels:
            mean, lo, hyper = _cell(rows, m, n)
            cells.append(f"{100 * mean:.1f} (min {100 * lo:.1f}, {hyper})")
        t1.append(f"| {m} | " + " | ".join(cells) + " |")
    part2 = [r for r in rows if r["part"] == "attack"]
    t2 = ["| rule | attack | " + " | ".join(ATTACK_METHODS) + " |", "|---|---|" + "---|" * len(ATTACK_METHODS)]
    for rule in rules:
        for atk in attacks:
            accs = [
                next(
                    r["final_test_accuracy"]
                    for r in part2
                    if r["method"] == m and r["setting"]["aggregator"] == rule and r["setting"]["attack"] == atk
                )
                for m in ATTACK_METHODS
            ]
            t2.append(f"| {rule} | {atk} | " + " | ".join(f"{100 * a:.1f}" for a in accs) + " |")
    run_time = sum(r["wall_time_s"] for r in rows)
    text = TEMPLATE.format(
        table1="\n".join(t1),
        table2="\n".join(t2),
        command=cmd,
        machine=machine(),
        wall=wall / 60,
        runs=len(rows),
        comparison=_comparison(rows, labels),
        attack_noise=ATTACK_NOISE,
        run_time=run_time / 60,
        rounds=rows[0]["setting"]["rounds"],
        quick="\n**QUICK RUN (smoke check, not the committed study).**\n" if quick else "",
    )
    (out / "results.md").write_text(text)


def _comparison(rows: list[dict[str, Any]], labels: list[str]) -> str:
    """The measured drops (computed), then the reading of them (text; see DISCUSSION)."""
    lines = []
    for sc in SCALES:
        gauss, heavy = f"gauss s{sc:g}", [f"{t} s{sc:g}" for t, a in TAILS if a < 2.0]
        heavy = [h for h in heavy if h in labels]
        if gauss not in labels or not heavy:
            continue
        lines.append(
            f"Scale {sc:g}: drop in final accuracy from Gaussian noise to "
            + " / ".join(f"`{h}`" for h in heavy)
            + " (points, mean of 2 seeds): "
            + "; ".join(
                f"{m} " + " / ".join(f"{100 * (_cell(rows, m, gauss)[0] - _cell(rows, m, h)[0]):.1f}" for h in heavy) for m in METHODS
            )
            + "."
        )
    return "\n\n".join(lines) + "\n\n" + DISCUSSION


DISCUSSION = """Reading of the committed run (MNIST, 300 rounds; the text does not change with a rerun, the numbers might):

- **SGD degrades under heavy tails, not under Gaussian noise of the same scale.** With noise of scale 0.003
  (about the size of the gradient's coordinates): 92.4% under Gaussian noise, 90.4 / 84.7 / 53.8% at tail
  index 1.5 / 1.3 / 1.1, each at its own best learning rate (picked on training loss). At scale 0.01 the fall
  is steeper (86.3 / 70.5 / 31.8%). This is the paper's claim (heavy-tailed noise, not noise as such, is what
  hurts SGD), reproduced on injected noise.
- **Where SGD degrades and ACClip does not: tail index 1.5 and 1.3 at scale 0.003.** ACClip stays at 91.7
  and 90.3% (1.1 and 2.4 points below its 92.8% under Gaussian noise) where SGD loses 2.0 and 7.7 points,
  and global clipping (GClip) 0.9 and 4.1. At scale 0.01 ACClip loses 2.9 points at 1.5 (SGD 6.2) and 5.4
  at 1.3 (SGD 22.0).
- **Where ACClip degrades too: the heaviest tail, 1.1.** 82.5% at scale 0.003 (-10.3 points; SGD -38.6,
  Adam -2.9), 67.6% at 0.01. A reason visible in the update: a spike g in one coordinate raises its own
  threshold tau by (1-b2)|g| (alpha = 1), so the spike is clipped only to a fraction of what momentum SGD
  would apply, and the raised tau lets the next spikes through for ~1/(1-b2) rounds. That is why the slower
  moment estimate b2 = 0.999 (a spike raises tau ten times less) was picked, on training loss, at every heavy
  tail, and the paper's 0.99 only without heavy tails; both are in the grid and in results.json.
- **Against Adam and fixed clipping**: Adam degrades less than ACClip at the heaviest tails (89.1 vs 82.5% at
  1.1, scale 0.003), and coordinate-wise clipping at a fixed threshold of 0.01 hardly degrades at all
  (90.4-92.8% everywhere). The injected noise is i.i.d. across coordinates with a known scale, the most
  favourable case for a fixed coordinate-wise threshold (chosen once, not tuned per setting); real
  heavy-tailed noise is not known to be. The paper's claim that ACClip beats Adam (on BERT) is not
  reproduced on this task.
- Learning rates: grids of five rates per method (ACClip: five rates x two b2); picks at the top of a grid:
  SGD and GClip at 3 under Gaussian noise of scale 0.003, CClip at 3 in five settings, Adam at 0.01
  everywhere (so these baselines may be slightly under-tuned there); ACClip's picks are all inside its grid.
- **With robust aggregation (part 2, tail index 1.3, scale 0.003)**: ACClip composes with every rule (no
  failure) and is within 1.6 points of Adam and fixed clipping under no attack and sign flip. Under ALIE
  every combination stays at or below 70% (SGD is the best of them there): with heavy-tailed honest noise
  the honest standard deviation ALIE scales by is large, and no optimiser here fixes that. One seed only
  in part 2.
- Not reproduced: BERT pre-training/fine-tuning, the measurement of the tail index of real gradient noise
  (see `docs/reproductions/acclip-attention/` for a small attention model), the paper's convergence bounds."""


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
  alpha-stable noise to each gradient coordinate, of scale 0.003 (the honest gradient coordinates have a
  median magnitude of about 0.003 at initialisation) or 0.01. Settings: `none` (no injected noise), then
  per scale `gauss` (alpha = 2: Gaussian, variance 2 x scale^2), `a1.5`, `a1.3`, `a1.1` (infinite
  variance, same scale). Only the tail index changes within a scale. Noise this way is independent across coordinates,
  which favours coordinate-wise rules; real heavy-tailed noise is not known to be. No attention model and
  no BERT were trained.
- **Learning rates**: per method and noise setting, the lowest final training loss of the honest
  workers (mean of the last 20 rounds; test data is never used to choose) over a 5-point grid on seed 0
  (SGD and the clipped methods: 0.03, 0.1, 0.3, 1, 3; Adam: 1e-4, 3e-4, 1e-3, 3e-3, 1e-2; ACClip: 0.1, 0.3,
  1, 3, 10, each with b2 = 0.99 and 0.999), then that choice run again on seed 1. Every grid run is in
  `results.json` (`picked_lr` marks the picked ones). The thresholds of the fixed clipping baselines (1.0
  and 0.01) were not tuned per setting.

## Part 1: accuracy against the noise's tail (no attack)

Final test accuracy (%) after {rounds} rounds, mean of seeds 0 and 1 (min of the two, picked lr and b2).

{table1}

![accuracy against tail index](accuracy_vs_tail.png)

![test accuracy curves](curves.png)

## Part 2: ACClip with robust aggregation under attack

10 workers of which 3 Byzantine (fixed set), noise `{attack_noise}` on every worker's gradient before the
attack sees the honest rows, seed 0; each optimiser as part 1 picked it for `{attack_noise}`. Final test accuracy (%).

{table2}

![rules x attacks x optimisers](attacks.png)

## Comparison with the paper

{comparison}
"""
