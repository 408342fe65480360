"""``byzlearn reproduce acclip-attention``: SGD vs clipped SGD vs Adam vs ACClip on a small attention model.

The part of the ACClip study (``repro_acclip``, injected noise on MNIST) that uses a real attention
model instead: the ``attention`` model (two pre-norm transformer blocks, d_model 32, ~19k parameters)
on the synthetic ``sequence`` task (Zipf-distributed tokens; "does the first token occur again?").
Nothing is injected: the gradient noise is the model's own minibatch noise.

Part 1 (tail measurement): at initialisation and after 300 Adam rounds, K minibatch gradients
g_b (batch 32, and single examples) and the full training gradient g; the norms ||g_b - g||, their
Hill tail index (top 5%), and the same for a Gaussian with the same covariance (random Gaussian
combinations of the K observed noise vectors), against ``mlp20`` on MNIST.
Part 2 (training): 10 workers, mean, no attack; each optimiser's learning rate picked from a small
grid on seed 0 by the final TRAINING loss (mean of the last 20 rounds), then rerun on seed 1.
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
from torch import Tensor
from torch.func import grad

from .. import config as config_mod
from ..data import Dataset, load_dataset
from ..engine import Simulator
from .reproduce import REPRODUCTIONS, machine, write_json

METHODS: dict[str, tuple[dict[str, Any], list[float]]] = {  # fixed keys, learning-rate grid
    "sgd": ({"name": "sgd"}, [0.03, 0.1, 0.3, 1.0]),
    "clipped_sgd": ({"name": "clipped_sgd", "max_norm": 1.0}, [0.03, 0.1, 0.3, 1.0]),
    "adam": ({"name": "adam"}, [3e-4, 1e-3, 3e-3, 1e-2]),
    "acclip": ({"name": "acclip"}, [0.03, 0.1, 0.3, 1.0]),
}
TAIL_FRACTION = 0.05  # the Hill estimator uses the top 5% of the norms
_DATASET: Dataset | None = None  # set in the parent before the worker processes fork


def _init_worker() -> None:
    torch.set_num_threads(1)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _sim(data: str, model: str, optimizer: dict[str, Any], seed: int, dataset: Dataset, rounds: int = 1) -> Simulator:
    over = [
        f"data.name={data}",
        f"model.name={model}",
        "workers.n=10",
        "aggregator.name=mean",
        "attack.name=none",
        f"train.seed={seed}",
        f"train.rounds={rounds}",
        "train.threads=1",
    ]
    over += [f"optimizer.{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in optimizer.items()]
    return Simulator(config_mod.load(None, over), dataset=dataset)


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    """One training run: a results.json row with its test-accuracy and training-loss curves."""
    s = spec["setting"]
    t0 = time.perf_counter()
    sim = _sim(s["data"], s["model"], {**spec["optimizer"], "lr": s["lr"]}, s["seed"], _DATASET, s["rounds"])
    curve, losses = [], []
    for r in range(1, s["rounds"] + 1):
        losses.append(sim.step())
        if r % spec["eval_every"] == 0 or r == s["rounds"]:
            curve.append((r, sim.evaluate()[1]))
    tail = losses[-20:]
    return {
        "method": spec["method"],
        "setting": s,
        "final_test_accuracy": curve[-1][1],
        "best_test_accuracy": max(a for _, a in curve),
        "final_train_loss": _finite(sum(tail) / len(tail)),
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "curve": [[r, a] for r, a in curve],
        "train_loss_curve": [
            [r, _finite(sum(losses[max(0, r - 10) : r]) / len(losses[max(0, r - 10) : r]))] for r in range(10, s["rounds"] + 1, 10)
        ],
    }


# -- part 1: the gradient-noise tail -------------------------------------------------------------------------
def hill(x: Tensor, fraction: float = TAIL_FRACTION) -> float:
    """Hill estimate of the tail index of the positive samples ``x`` from their top ``fraction``."""
    s = x.double().sort(descending=True).values
    k = max(2, int(fraction * s.numel()))
    return float(1.0 / torch.log(s[:k] / s[k]).mean())


def _full_gradient(sim: Simulator, chunk: int = 5000) -> Tensor:
    g = grad(sim._loss)
    total, n = torch.zeros(sim.d), sim.y_train.shape[0]
    for a in range(0, n, chunk):
        x, y = sim.x_train[a : a + chunk], sim.y_train[a : a + chunk]
        total += g(sim.theta.detach(), x, y) * y.shape[0]
    return total / n


def noise_norms(sim: Simulator, samples: int, batch: int, gen: torch.Generator, chunk: int = 64) -> dict[str, Any]:
    """Norms of ``samples`` minibatch-gradient deviations from the full gradient, and of a same-covariance Gaussian."""
    full = _full_gradient(sim)
    n = sim.y_train.shape[0]
    noise = []
    for a in range(0, samples, chunk):
        k = min(chunk, samples - a)
        idx = torch.randint(0, n, (k, batch), generator=gen)
        x = sim.x_train[idx.reshape(-1)].view(k, batch, *sim.x_train.shape[1:])
        G, _ = sim._grads(sim.theta.detach(), x, sim.y_train[idx.reshape(-1)].view(k, batch))
        noise.append(G - full)
    E = torch.cat(noise)  # [K, d]
    gauss = (torch.randn(samples, samples, generator=gen) @ E) / math.sqrt(samples)  # same covariance as E's rows
    norms, gnorms = E.norm(dim=1), gauss.norm(dim=1)
    q = lambda v, p: float(v.quantile(p))  # noqa: E731
    return {
        "batch": batch,
        "samples": samples,
        "full_grad_norm": float(full.norm()),
        "median": q(norms, 0.5),
        "p99_over_median": q(norms, 0.99) / q(norms, 0.5),
        "max_over_median": float(norms.max()) / q(norms, 0.5),
        "hill": hill(norms),
        "gauss_p99_over_median": q(gnorms, 0.99) / q(gnorms, 0.5),
        "gauss_max_over_median": float(gnorms.max()) / q(gnorms, 0.5),
        "gauss_hill": hill(gnorms),
        "norms": norms.tolist(),
        "gauss_norms": gnorms.tolist(),
    }


def measure_tails(tasks: list[tuple[str, str, Dataset]], train_rounds: int, samples: int) -> list[dict[str, Any]]:
    """For each (data, model, dataset): the noise norms at initialisation and after ``train_rounds`` Adam rounds."""
    out = []
    for data, model, ds in tasks:
        sim = _sim(data, model, {"name": "adam", "lr": 0.003}, 0, ds)
        for stage in ("init", "trained"):
            if stage == "trained":
                for _ in range(train_rounds):
                    sim.step()
            acc = sim.evaluate()[1]
            for batch in (1, 32):
                gen = torch.Generator().manual_seed(7 + batch)
                out.append(
                    {
                        "data": data,
                        "model": model,
                        "d": sim.d,
                        "stage": stage,
                        "rounds": 0 if stage == "init" else train_rounds,
                        "test_accuracy": acc,
                        **noise_norms(sim, samples, batch, gen),
                    }
                )
    return out


@REPRODUCTIONS.register("acclip-attention")
def reproduce(out: Path, quick: bool, data_dir: str | None) -> None:
    """SGD, clipped SGD, Adam, ACClip on a small attention model (synthetic Zipf sequences); its gradient-noise tail vs mlp20/MNIST."""
    global _DATASET
    t_start = time.perf_counter()
    _DATASET = load_dataset("sequence")
    ref_name = "digits" if quick else "mnist"
    ref = load_dataset(ref_name, data_dir, download=True)
    rounds, eval_every = (40, 20) if quick else (600, 50)
    tail_rounds, samples = (20, 100) if quick else (300, 1000)
    jobs = 1 if quick else 2

    tails = measure_tails([("sequence", "attention", _DATASET), (ref_name, "mlp20", ref)], tail_rounds, samples)
    t_tail = time.perf_counter() - t_start

    grid = [
        {
            "method": m,
            "optimizer": fixed,
            "eval_every": eval_every,
            "setting": {
                "data": "sequence",
                "model": "attention",
                "n": 10,
                "aggregator": "mean",
                "attack": "none",
                "lr": lr,
                "seed": 0,
                "rounds": rounds,
            },
        }
        for m, (fixed, lrs) in METHODS.items()
        for lr in (lrs[1:2] if quick else lrs)
    ]
    with ProcessPoolExecutor(jobs, mp_context=get_context("fork"), initializer=_init_worker) as ex:
        rows = list(ex.map(_run, grid))
        loss = lambda r: r["final_train_loss"] if r["final_train_loss"] is not None else math.inf  # noqa: E731
        picked: dict[str, dict[str, Any]] = {}
        for r in rows:  # picked on the final training loss, never on test data
            if r["method"] not in picked or loss(r) < loss(picked[r["method"]]):
                picked[r["method"]] = r
        for r in rows:
            r["picked_lr"] = r is picked[r["method"]]
        reruns = [
            {"method": m, "optimizer": METHODS[m][0], "eval_every": eval_every, "setting": {**r["setting"], "seed": 1}}
            for m, r in picked.items()
        ]
        for r in ex.map(_run, reruns):
            r["picked_lr"] = True
            rows.append(r)
    wall = time.perf_counter() - t_start

    write_json(rows, out)
    (out / "tails.json").write_text(json.dumps([{k: v for k, v in t.items() if not k.endswith("norms")} for t in tails], indent=1) + "\n")
    _figures(rows, tails, out)
    _report(rows, tails, out, wall, t_tail, quick, data_dir)


# -- figures and report ----------------------------------------------------------------------------------------
def _picked(rows: list[dict[str, Any]], m: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["method"] == m and r.get("picked_lr")]


def _figures(rows: list[dict[str, Any]], tails: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [t for t in tails if t["batch"] == 32] + [t for t in tails if t["batch"] == 1]
    fig, axes = plt.subplots(2, len(panels) // 2, figsize=(3.3 * len(panels) // 2, 6))
    for ax, t in zip(axes.flat, panels):
        med = t["median"]
        a = torch.tensor(t["norms"]) / med
        b = torch.tensor(t["gauss_norms"]) / float(torch.tensor(t["gauss_norms"]).median())
        hi = float(max(a.max(), b.max()))
        bins = torch.linspace(0, hi, 40).tolist()
        ax.hist(b.tolist(), bins=bins, alpha=0.5, label=f"same-cov. Gaussian (Hill {t['gauss_hill']:.1f})", color="grey")
        ax.hist(a.tolist(), bins=bins, alpha=0.6, label=f"gradient noise (Hill {t['hill']:.1f})")
        ax.set_yscale("log")
        ax.set_title(f"{t['model']}/{t['data']}, {t['stage']}, batch {t['batch']}", fontsize=8)
        ax.set_xlabel("||g_batch - g_full|| / median", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "noise_norms.png", dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in METHODS:
        r = next(x for x in _picked(rows, m) if x["setting"]["seed"] == 0)
        a1.plot([c[0] for c in r["curve"]], [100 * c[1] for c in r["curve"]], marker=".", label=f"{m} (lr {r['setting']['lr']:g})")
        a2.plot([c[0] for c in r["train_loss_curve"]], [c[1] for c in r["train_loss_curve"]], label=m)
    a1.set(xlabel="round", ylabel="test accuracy (%)", title="sequence / attention, seed 0, picked lr")
    a2.set(xlabel="round", ylabel="training loss (honest mean, 10-round avg)", yscale="log")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def _report(
    rows: list[dict[str, Any]], tails: list[dict[str, Any]], out: Path, wall: float, t_tail: float, quick: bool, data_dir: str | None
) -> None:
    cmd = "byzlearn reproduce acclip-attention" + (f" --data-dir {data_dir}" if data_dir else "") + (" --quick" if quick else "")
    t1 = [
        "| model / data | stage (test acc.) | batch | Hill index (top 5%) | same-cov. Gaussian Hill | p99/median | Gaussian p99/median "
        "| max/median | Gaussian max/median |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tails:
        t1.append(
            f"| {t['model']} / {t['data']} (d = {t['d']}) | {t['stage']} ({100 * t['test_accuracy']:.1f}%) | {t['batch']} | "
            f"{t['hill']:.1f} | {t['gauss_hill']:.1f} | {t['p99_over_median']:.2f} | {t['gauss_p99_over_median']:.2f} | "
            f"{t['max_over_median']:.2f} | {t['gauss_max_over_median']:.2f} |"
        )
    t2 = [
        "| method | lr grid | picked lr | final train loss (seed 0 / 1) | final test acc. % (seed 0 / 1, mean) | best test acc. % (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for m, (_, lrs) in METHODS.items():
        sel = sorted(_picked(rows, m), key=lambda r: r["setting"]["seed"])
        fl = " / ".join(f"{r['final_train_loss']:.3f}" if r["final_train_loss"] is not None else "nan" for r in sel)
        fa = " / ".join(f"{100 * r['final_test_accuracy']:.1f}" for r in sel)
        mean = 100 * sum(r["final_test_accuracy"] for r in sel) / len(sel)
        best = 100 * sum(r["best_test_accuracy"] for r in sel) / len(sel)
        t2.append(f"| {m} | {', '.join(f'{x:g}' for x in lrs)} | {sel[0]['setting']['lr']:g} | {fl} | {fa} ({mean:.1f}) | {best:.1f} |")
    t3 = ["| method | " + " | ".join("lr" for _ in range(1)) + " | final train loss | final test acc. % |", "|---|---|---|---|"]
    for r in rows:
        if r["setting"]["seed"] == 0:
            fl = f"{r['final_train_loss']:.3f}" if r["final_train_loss"] is not None else "nan"
            t3.append(
                f"| {r['method']} | {r['setting']['lr']:g}{' (picked)' if r.get('picked_lr') else ''} | {fl} | "
                f"{100 * r['final_test_accuracy']:.1f} |"
            )
    text = TEMPLATE.format(
        quick="\n**QUICK RUN (smoke check, not the committed study).**\n" if quick else "",
        command=cmd,
        machine=machine(),
        wall=wall / 60,
        tail_time=t_tail / 60,
        runs=len(rows),
        run_time=sum(r["wall_time_s"] for r in rows) / 60,
        rounds=rows[0]["setting"]["rounds"],
        tails="\n".join(t1),
        table="\n".join(t2),
        grid="\n".join(t3),
        samples=tails[0]["samples"],
        tail_rounds=tails[-1]["rounds"],
        ref=tails[-1]["data"],
        comparison=_comparison(rows, tails),
    )
    (out / "results.md").write_text(text)


def _comparison(rows: list[dict[str, Any]], tails: list[dict[str, Any]]) -> str:
    """The measured figures the reading rests on (computed), then the reading (text; see DISCUSSION)."""
    acc = {m: sum(r["final_test_accuracy"] for r in _picked(rows, m)) / len(_picked(rows, m)) for m in METHODS}
    hills = ", ".join(f"{t['model']} {t['stage']} batch {t['batch']}: {t['hill']:.1f} (Gaussian {t['gauss_hill']:.1f})" for t in tails)
    return (
        "Final test accuracy, mean of 2 seeds: " + ", ".join(f"{m} {100 * a:.1f}%" for m, a in acc.items()) + ".\n"
        f"Hill indices of the noise norms: {hills}.\n\n" + DISCUSSION
    )


DISCUSSION = """Reading of the committed run (the text does not change with a rerun, the numbers above might):

- **Is the attention model's noise heavier-tailed? Yes once training is under way, not at
  initialisation.** At initialisation both models' minibatch noise looks like a Gaussian of the same
  covariance (batch 32: Hill 5.2 vs 5.6 for attention, 15.6 vs 16.0 for mlp20/MNIST). After 300 Adam
  rounds (attention at 72% test accuracy, in the middle of its loss drop; mlp20 at 91%) the
  single-example noise is heavy-tailed for BOTH models (Hill 1.6 for attention, 7.9 for mlp20, whose
  p99/median is 13: a few misclassified digits with large gradients). The difference is what averaging
  does: 32 MNIST examples already give Gaussian-like noise again (Hill 14.6, p99/median 1.55 vs 1.22 for
  its Gaussian), while the attention model's batch-32 noise stays heavy-tailed (Hill 2.1 vs 13.2 for its
  Gaussian, p99/median 5.9, max/median 12). This is the qualitative picture the paper reports for BERT
  against ResNet. Caveats: each Hill estimate uses the top 50 of 1,000 norms and is noisy (the Gaussian
  references alone range from 5.6 to 26); one parameter point per stage, one seed; a Hill index near 2
  from 50 points does not establish infinite variance; the source of the tail (rare Zipf tokens, or
  sequences the model gets confidently wrong) was not analysed.
- **Optimisers: Adam wins by far; clipping does little.** Adam reaches 93% (98.1 / 87.9 on the two
  seeds), ACClip 74.8%, GClip 72.1%, SGD 70.3% (SGD's seeds alone differ by 6 points). Adam's training loss
  drops sharply after ~350 rounds (curves.png); no other method shows that drop within 600 rounds. So the
  paper's observation "adaptive methods beat SGD on attention models" holds here for Adam, but the
  mechanism the paper proposes, clipping the heavy-tailed noise, explains little of it: the two clipping
  methods gain 2-4.5 points over SGD while Adam gains 23. Note that GClip's threshold of 1.0 binds mainly
  early (the full gradient norm is 3.3 at initialisation and 0.43 after 300 Adam rounds; the server's
  batch-320 mean gradient is rarely above 1 later), and ACClip only caps large coordinates while its step
  stays in gradient units, whereas Adam rescales every coordinate to a step of about lr whatever its
  gradient scale. A plausible reading (a hypothesis, not tested here, e.g. with sign-SGD or per-layer
  normalised SGD) is that Adam's advantage on this task comes from that per-coordinate normalisation of
  small, slowly-moving coordinates rather than from robustness to the heavy tail.
- The paper's result that ACClip beats Adam (on BERT) is not reproduced, as in the MNIST study.
- Learning rates: every pick is inside its grid (SGD, GClip, ACClip 0.3; Adam 0.001). 600 rounds is short:
  the SGD-family accuracies are still rising at the end and Adam's seed 1 has not finished its drop, so
  longer runs could change the gaps (not run: the study is sized for ~4 minutes on 2 cores). GClip's
  threshold and ACClip's betas/alpha were not tuned.
- Not reproduced: BERT, the paper's per-coordinate noise distributions, its convergence bounds; no
  Byzantine workers in this part."""


TEMPLATE = """# ACClip on a small attention model (Zhang et al., NeurIPS 2020), synthetic sequence task
{quick}
Command: `{command}` (MNIST files, for the tail comparison, from `--data-dir`).
Machine: {machine}. Wall time: {wall:.1f} min in all ({tail_time:.1f} min for the tail measurement, one thread, then {runs}
training runs, 2 at a time with one thread each; the runs' own times sum to {run_time:.1f} min).

## What is run

- **Paper**: "Why are Adaptive Methods Good for Attention Models?" (Zhang, Karimireddy, Veit, Kim, Reddi,
  Kumar, Sra, NeurIPS 2020). Claim: the stochastic-gradient noise of attention models (BERT) is
  heavy-tailed, unlike that of ResNets on images; under heavy tails SGD does badly, clipping and adaptive
  methods (Adam, ACClip) do well. The companion study `docs/reproductions/acclip/` injects the heavy tail
  on MNIST; here nothing is injected.
- **Model**: `attention` (`byzlearn.models.attention`): token embedding (vocabulary 32) + learned position
  embedding, 2 pre-norm transformer blocks (d_model 32, 2 heads, explicit softmax attention, GELU MLP of
  width 64), layer norm, mean pooling, linear head; 18,754 parameters.
- **Task**: `sequence` (`byzlearn.data.synthetic`): 20,000 training / 5,000 test sequences of 16 tokens
  drawn i.i.d. from a Zipf law over 32 tokens (P(k) proportional to 1/(k+1)); label: does the first token
  occur again later in the sequence? Balanced by construction (50/50), label independent of the first
  token. A fixed seed, nothing downloaded.
- **Training**: 10 workers, IID shards, batch 32 each, `mean` aggregation, no attack, {rounds} rounds; the
  server applies the optimiser to the mean gradient. SGD (no momentum), GClip (`clipped_sgd`, global norm
  clipped to 1.0, not tuned), Adam (torch defaults but lr), ACClip (`acclip`: betas (0.9, 0.99), eps 1e-5,
  alpha = 1). Learning rate per method from the grid below on seed 0, picked by the lowest final
  training loss (honest workers' mean loss over the last 20 rounds; test data never used to choose), then
  the picked rate rerun on seed 1.

## Part 1: is the gradient noise heavy-tailed?

For each model, at initialisation and after {tail_rounds} rounds of Adam (lr 0.003, same engine): the full
training-set gradient g, {samples} random minibatches (batch 32, the training batch, and single examples),
the norms ||g_b - g||. The Hill estimator (top 5% of the norms) estimates the tail index of the norm
distribution (small = heavy: below 2 means infinite variance; it grows without bound for light tails). As a
reference, the same statistics for a Gaussian with exactly the empirical covariance of the noise
(random N(0, 1) combinations of the {samples} observed noise vectors, divided by sqrt({samples})): the
Gaussian reference accounts for the dimension and anisotropy, so the comparison is noise vs Gaussian of
the same covariance, model by model. `{ref}` / `mlp20` is the non-attention comparison.

{tails}

![noise norm histograms](noise_norms.png)

## Part 2: SGD, clipped SGD, Adam, ACClip

Picked learning rate, final training loss and final test accuracy after {rounds} rounds (seeds 0 and 1).

{table}

![curves](curves.png)

Every grid run (seed 0):

{grid}

## Comparison with the paper

{comparison}
"""
