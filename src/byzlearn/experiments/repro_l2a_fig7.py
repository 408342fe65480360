"""``byzlearn reproduce l2a-fig7``: one global model from heterogeneous local models (Ji et al., IJCAI 2019, §5.5, Fig. 7).

The paper: 4 systems of 10 workers each, with local models MLP-20 sigmoid, MLP-40 sigmoid, MLP
20-20 sigmoid and MLP-20 ReLU; 3 workers drawn at random from each system send their gradients to
the RNN aggregator, which updates an MLP 784-20-10 sigmoid. The paper does not say how the
gradients of other architectures map onto the global model's coordinates; OUR reading
(``byzlearn.learned.heterogeneous``): every local model contains the global parameters (the
MLP-40's first 20 hidden units, the MLP 20-20's first and output layers, the ReLU MLP's whole
vector) and sends the gradient with respect to them; its extra parameters stay local and are
trained locally by SGD with the server's lr.

Methods on the 12 heterogeneous workers: ``mean``; ``rnn_lstm_m12`` (the paper's fixed-order LSTM
aggregator meta-trained, in the homogeneous Fig. 4 setting, for M = 12 inputs, since its input
layer is tied to M); ``set_rnn_lstm`` (ours: the permutation-invariant variant meta-trained with
10 workers in the Fig. 4 setting, applied unchanged to 12). Reference: the homogeneous MLP-20
system (10 workers) under ``mean``. Server SGD lr 0.5, batch 128 per worker, 500 rounds, seeds 0-4.
``set_rnn_lstm_capped``: the same set-RNN with ``step_cap = 1`` (the guard against late collapses).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ..data import load_dataset
from ..learned.heterogeneous import KINDS, HeterogeneousSimulator
from . import l2a
from .repro_l2a_fig4 import base_overrides
from .reproduce import REPRODUCTIONS, machine, write_json

LEARNED = ["rnn_lstm_m12", "set_rnn_lstm"]
# the guard against late collapses (ours): the same network, its step capped at the median worker's gradient norm
GUARDED = {"rnn_lstm_m12_capped": ("rnn_lstm_m12", 1.0), "set_rnn_lstm_capped": ("set_rnn_lstm", 1.0)}
METHODS = ["mean", *LEARNED, *GUARDED]
PICKED, SYSTEM_WORKERS = 3, 10
HETERO_MODEL = "mlp20 global, workers: " + ", ".join(f"{PICKED}x {k}" for k in KINDS)
CLAIM = (
    "the RNN aggregator can efficiently utilize gradients from different local models to improve the global learning model's performance"
)


# Why rnn_lstm_m12 falls behind (measured on MNIST, seed 0, the committed network, first 120 rounds, before the portable kernels;
# not re-measured by the run).
M12_NOTE = (
    "Why `rnn_lstm_m12` falls behind: as in Fig. 4 it learned a larger effective step than averaging's (its output is 4.3 "
    "to 8.4 times the norm of the 12 workers' mean in rounds 1-120), and the three ReLU workers' gradients are 2 to 50 "
    "times longer than the others' (norms 1.6 against 0.3-0.9 at round 1, 3.4-5.0 against 0.1-0.3 at round 60), so they "
    "set the per-coordinate scale the network normalises by. Its output's cosine to the mean falls from 0.96 at round 1 "
    "to 0.14-0.59 from round 20 on, and test accuracy is 56% at round 10 and 74% at round 120, against averaging's 92.6% "
    "at round 500. It was meta-trained on 12 sigmoid MLP-20 workers, so it never met gradients shaped like these."
)


def run_hetero(spec: dict[str, Any]) -> dict[str, Any]:
    """One heterogeneous run (``method``, ``setting``, ``aggregator``, ``data_key``, ``seed``, ``rounds``, ``eval_every``)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sim = HeterogeneousSimulator(
        l2a.dataset(spec["data_key"]), spec["aggregator"], KINDS, SYSTEM_WORKERS, PICKED, l2a.BATCH, l2a.SERVER_LR, spec["seed"]
    )
    return {**l2a.train_curve(sim, spec, t0), "chosen_workers": sim.chosen}


def _run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    return run_hetero(spec) if spec["setting"]["system"] == "heterogeneous" else l2a.run_curve(spec)


def _aggregator_section(method: str, aggs: dict[str, Path]) -> dict[str, Any]:
    if method == "mean":
        return {"name": "mean"}
    if method in GUARDED:
        net, cap = GUARDED[method]
        return {"name": "learned", "path": str(aggs[net]), "step_cap": cap}
    return {"name": "learned", "path": str(aggs[method])}


def specs_for(data: str, aggs: dict[str, Path], seeds: list[int], rounds: int, eval_every: int) -> list[dict[str, Any]]:
    """The heterogeneous runs (every method x seed), then the homogeneous reference (mean x seed)."""
    common = {"data": data, "byzantine": 0, "rounds": rounds, "batch_per_worker": l2a.BATCH, "lr": l2a.SERVER_LR}
    specs = [
        {
            "method": m,
            "setting": {**common, "model": HETERO_MODEL, "workers": PICKED * len(KINDS), "system": "heterogeneous", "seed": s},
            "aggregator": _aggregator_section(m, aggs),
            "data_key": data,
            "seed": s,
            "rounds": rounds,
            "eval_every": eval_every,
        }
        for m in METHODS
        for s in seeds
    ]
    for s in seeds:
        over = base_overrides(data, s, public_size=0) + ["aggregator.name=mean"]
        specs.append(
            {
                "method": "mean",
                "setting": {**common, "model": "mlp20", "workers": SYSTEM_WORKERS, "system": "homogeneous", "seed": s},
                "overrides": over,
                "data_key": data,
                "rounds": rounds,
                "eval_every": eval_every,
            }
        )
    return specs


@REPRODUCTIONS.register("l2a-fig7")
def fig7(out: Path, quick: bool, data_dir: str | None) -> None:
    """Heterogeneous local models (MLP-20/40/20-20 sigmoid, MLP-20 ReLU) updating one MLP-20 (Ji et al. 2019, Fig. 7)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = "digits" if quick else "mnist"
    rounds, eval_every, seeds = (30, 10, [0]) if quick else (l2a.ROUNDS, 25, l2a.SEEDS)
    aggs = l2a.ensure_aggregators(LEARNED, l2a.aggregator_root(out, quick), data_dir, quick)
    t_train = time.perf_counter() - t0
    ds = load_dataset(data, data_dir, download=True)
    rows = l2a.run_all(specs_for(data, aggs, seeds, rounds, eval_every), {data: ds}, jobs=1 if quick else 2, run=_run_spec)
    write_json(rows, out)
    label = lambda r: f"{r['method']} ({r['setting']['system']}, {r['setting']['workers']} workers)"  # noqa: E731
    l2a.plot_curves(
        rows, out / "fig7.png", f"{data}: global mlp20 from 3x mlp20, 3x mlp40, 3x mlp20x2, 3x mlp20relu (mean of seeds {seeds})", label
    )
    wall = time.perf_counter() - t0
    _write_md(rows, out, aggs, wall, t_train, quick, data, rounds, seeds, math.prod(ds.input_shape))


def _write_md(
    rows: list[dict[str, Any]],
    out: Path,
    aggs: dict[str, Path],
    wall: float,
    t_train: float,
    quick: bool,
    data: str,
    rounds: int,
    seeds: list[int],
    inputs: int,
) -> None:
    stats = l2a.mean_over_seeds(rows, lambda r: (r["setting"]["system"], r["method"]))
    spr = {k: sum(r["seconds_per_round"] for r in rows if (r["setting"]["system"], r["method"]) == k) / len(seeds) for k in stats}
    order = [("heterogeneous", m) for m in METHODS] + [("homogeneous", "mean")]
    table = [
        f"| method | system | final test accuracy, mean [min-max] of {len(seeds)} seeds | std (points) | best test accuracy "
        "(mean) | learned, then lost (seeds) | final training loss | vs mean on the same 12 workers (final, points) | s/round |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_st = stats[("heterogeneous", "mean")]
    base = base_st["final"]
    for k in order:
        st = stats[k]
        vs = f"{100 * (st['final'] - base):+.2f}" if k[0] == "heterogeneous" else "n/a"
        system = "12 heterogeneous workers" if k[0] == "heterogeneous" else "10 mlp20 workers (reference)"
        table.append(
            f"| {k[1]} | {system} | {l2a.spread(st)} | {100 * st['std']:.2f} | {100 * st['best']:.2f}% | {st['collapsed']} | "
            f"{st['loss']:.4f} | {vs} | {spr[k]:.4f} |"
        )

    def pts(m: str) -> float:
        return 100 * (stats[("heterogeneous", m)]["final"] - base)

    ref = stats[("homogeneous", "mean")]["final"]
    het = {m: stats[("heterogeneous", m)] for m in METHODS}
    judged = {m: l2a.versus(het[m], base_st) for m in (*LEARNED, *GUARDED)}
    words = {"above": "above averaging on every seed", "below": "below averaging on every seed", "overlaps": "within averaging's spread"}
    verdict = [
        f"`{m}` ends {pts(m):+.2f} points against averaging the same 12 gradients (mean of seeds; its seeds "
        f"{l2a.spread(het[m])}: {words[judged[m]]})"
        for m in (*LEARNED, *GUARDED)
    ]
    better = [m for m in judged if judged[m] == "above"]
    guard_line = (
        "The guard (`aggregator.step_cap = 1`: the same network, its step capped at the median worker's gradient norm): "
        + "; ".join(
            f"`{g}` {het[g]['collapsed']} of {len(seeds)} seeds learned, then lost, against {het[m]['collapsed']} for `{m}`, final "
            f"{l2a.spread(het[g])} against {l2a.spread(het[m])}"
            for g, (m, _) in GUARDED.items()
        )
        + "."
    )
    chosen = rows[0]["chosen_workers"]
    md = [
        "# l2a-fig7: one global MLP-20 from heterogeneous local models (Ji et al., IJCAI 2019, §5.5, Fig. 7)",
        "",
        f"Command: `byzlearn reproduce l2a-fig7{' --quick' if quick else ''} --data-dir ../shared/data/mnist`"
        + (" (quick: a reduced smoke run on the digits data, not the reproduction)" if quick else "")
        + "  ",
        f"Machine: {machine()}  ",
        l2a.wall_line(wall, t_train, l2a.aggregator_root(out, quick)),
        "",
        "## Setting",
        "",
        f"- {data}; 4 systems of {SYSTEM_WORKERS} workers, each system's training set split into {SYSTEM_WORKERS} equal iid shards; "
        f"{PICKED} workers drawn at random, once, from each system (seed 0 draws: {chosen}); 12 gradients per round, ordered by "
        "system (mlp20, mlp40, mlp20x2, mlp20relu), which fixes the slot of each worker in the fixed-order RNN's input.",
        f"- Global model: MLP {inputs}-20-10 sigmoid (d = {inputs * 20 + 20 + 200 + 10:,}), server SGD lr {l2a.SERVER_LR}, "
        f"batch {l2a.BATCH} per "
        f"worker, {rounds} rounds, no Byzantine worker, test accuracy of the global model on the whole test set, mean and "
        f"range over seeds {seeds}. Reference: the homogeneous MLP-20 system with its 10 workers under `mean` (plain simulator, same "
        "lr, batch and initialisation of the global model).",
        "- OUR reading of how different local models send gradients for the global model's coordinates (the paper does "
        "not say): every local model contains the global parameters theta = (W1, b1, W2, b2) and sends d loss/d theta. "
        "`mlp20`: the global model itself; `mlp20relu`: the same parameters with ReLU; `mlp40`: hidden units 1-20 use "
        "the global W1, b1 and W2 columns, hidden units 21-40 (their W1 rows, b1 entries, W2 columns) are the worker's "
        "own; `mlp20x2`: global first layer, the worker's own 20->20 sigmoid layer, global output layer. Own parameters "
        "start like a fresh layer of that model (PyTorch's default initialisation) and are updated every round by the "
        "worker by SGD with the server's lr on their own gradient.",
        "- Methods: `mean` (averaging); `rnn_lstm_m12`: the paper's fixed-order coordinatewise LSTM aggregator, "
        "meta-trained in the Fig. 4 setting (homogeneous MLP-20, MNIST) but with M = 12 workers, as its input layer is "
        "tied to M; `set_rnn_lstm` (ours, beyond the paper): the permutation-invariant variant meta-trained in the Fig. 4 "
        "setting with 10 workers and applied unchanged to 12. Neither saw heterogeneous workers while meta-training. "
        "`set_rnn_lstm_capped`: the same network with `aggregator.step_cap = 1` (ours, the guard against late collapses).",
        "- Training loss (table and figure): the mean of the workers' minibatch losses, each on its OWN local model "
        "(mlp40, mlp20x2 and mlp20relu workers included), over the last evaluation window.",
        "",
        "## Results",
        "",
        *table,
        "",
        "![fig7](fig7.png)",
        "",
        "## Aggregators",
        "",
        l2a.card_summary(aggs),
        "",
        "## Comparison with the paper",
        "",
        f'The paper\'s claim (§5.5, Fig. 7): "{CLAIM}".',
        "",
        f"Here: {'; '.join(verdict)}. The homogeneous reference (10 mlp20 workers, `mean`) ends at {100 * ref:.2f}%, "
        f"the heterogeneous `mean` at {100 * base:.2f}%.",
        "",
        (
            "The paper's claim holds in this reproduction under our reading: its RNN aggregator (`rnn_lstm_m12`) trains the "
            "global model better than averaging the same heterogeneous gradients on every seed."
            if "rnn_lstm_m12" in better
            else "The paper's claim does NOT hold in this reproduction under our reading: its RNN aggregator (`rnn_lstm_m12`) "
            "does not end above averaging the same heterogeneous gradients on every seed."
        )
        + (
            " Our `set_rnn_lstm`, trained for 10 workers and applied to 12, "
            + ("ends above averaging on every seed." if "set_rnn_lstm" in better else "does not end above averaging on every seed.")
        )
        + " We have no numbers from the paper's figure, so the comparison is qualitative; part of a learned aggregator's "
        "lead can be a learned effective step size, as in Fig. 4. The embedding of the local models is our reading, not "
        "the paper's stated method: another mapping of differently shaped gradients could change the outcome."
        + (
            " Quick mode: digits, 30 rounds, tiny aggregators (4 meta-training trajectories); these figures say nothing "
            "about the paper's claim."
            if quick
            else ""
        ),
        "",
        l2a.collapses({k: v for k, v in stats.items() if k[0] == "heterogeneous"}, lambda k: f"`{k[1]}`"),
        "",
        guard_line,
        "",
        *([] if quick else [M12_NOTE, ""]),
        *l2a.METHOD_NOTES,
    ]
    (out / "results.md").write_text("\n".join(md) + "\n")
