"""Shared machinery of the learned-aggregator reproductions ``l2a-fig4`` .. ``l2a-fig7``.

Ji, Chen, Wang, Yu, Li, "Learning to Learn Gradient Aggregation by Gradient Descent", IJCAI 2019.
Every figure uses aggregators meta-trained in the paper's Fig. 4 setting (MNIST, MLP 784-20-10
sigmoid, 10 workers with equal shards, SGD at the server); they are trained once, on demand, into
``docs/reproductions/l2a-aggregators/<method>/`` and reused by the other figures. The recipes below
are the whole meta-training setting; each card.json repeats it.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

import torch

from .. import config as config_mod
from ..data import Dataset
from ..engine import make_simulator
from ..learned.meta_train import from_sections, meta_train
from ..plots import plt

AGGREGATOR_ROOT = Path("docs") / "reproductions" / "l2a-aggregators"
ALIE = {"name": "alie", "z": 1.0}  # z fixed: the paper's default z is undefined at 7 of 10 Byzantine
TRAIN_ATTACKS = ["gaussian", "sign_flip", "constant", ALIE]
SERVER_LR, BATCH, WORKERS, PUBLIC_BATCH, ROUNDS = 0.5, 128, 10, 32, 500
COLLAPSE = 0.05  # a seed whose best test accuracy is this far above its final one was learned, then lost
RULES = ("mean", "krum")  # the rule-based methods: deterministic rows; every other method's rows are judged on their spread
# Test seeds of every figure: a learned aggregator's run is chaotic, so each figure states the spread over these
SEEDS = [0, 1, 2, 3, 4]

_PAPER_NET = {"preprocess": "seed"}
_OURS_NET = {"encoder": "set", "preprocess": "floor"}
METHOD_NOTES = [
    "## What is the paper's and what is ours",
    "",
    "- Paper (Ji et al. 2019, §4.2-4.3): the coordinatewise 2-layer LSTM/GRU with 20 units and a linear head; inputs "
    "divided by the per-coordinate L2 norm across workers, normalised entries below e^-p replaced by e^-p (p = 10), the "
    "output multiplied back; ARNN's extra input is each worker's loss on a small public batch; meta-loss = sum of the "
    "training losses over the unroll (T = 20), truncated BPTT without second derivatives, Adam; best weights on "
    "validation. Methods `rnn_lstm`, `rnn_gru`, `arnn_lstm`, `arnn_gru`.",
    "- Our readings where the paper is silent: the aggregator's output is the aggregated gradient that the server's SGD "
    "applies; ARNN's loss is taken after a trial SGD step along the worker's vector clipped to the norm of the server's "
    "own public-batch gradient, fed as tanh(10 x relative change). The paper's four networks of Fig. 4 (reused "
    "unchanged by Fig. 5), and Fig. 7's 12-worker RNN, are meta-trained without Byzantine workers, in Fig. 4's setting "
    "(100-round trajectories; the best weights chosen on 500-round validation trajectories, the horizon they are used for). "
    "For Fig. 6 the RNN-LSTM and ARNN-LSTM are meta-trained again with Byzantine workers and attacks drawn from Gaussian, "
    "sign flip, constant and ALIE (z = 1) (folders `rnn_lstm_byz`, `arnn_lstm_byz`; the results still name them "
    "`rnn_lstm`, `arnn_lstm`): the RNN on 100-round trajectories with 0 or 3 of 10 Byzantine, every Byzantine-trained "
    "ARNN (the paper's and ours) on 40-round trajectories with 3 or 7 of 10.",
    "- Ours, beyond the paper: `set_rnn_lstm`, `set_arnn_lstm`: a permutation-invariant encoder (shared per-worker "
    "embedding, mean and softmax-attention pooling over workers, output = learned gain x attention-weighted average + "
    "correction; `floor` pre-processing; the ARNN variant also keeps a running mean of each worker's loss feature, and "
    "shortens every worker's vector to the norm of the server's public-batch gradient before reading it (`input_clip`, "
    "FLTrust's norm bound): a softmax leaves about 1e-4 of attention on a forged row, and without the bound a Gaussian "
    "row 1e5 times the honest scale carries that into the step), so one trained aggregator serves any number of workers. "
    "`set_arnn_lstm` is meta-trained without that bound and used with it, as chosen on 500-round validation trajectories "
    "(training data, `byzlearn meta-validate`): mean capped training loss 0.365 with the bound against 1.099 without; "
    "networks meta-trained with the bound scored 0.380 and 0.715 (meta seeds 0 and 1), and 0.419 fine-tuned with it "
    "from these weights, each of them worst at 7 of 10 under ALIE (0.672, 2.545, 0.656 against 0.407).",
]
# Every ARNN (the paper's and ours) is meta-trained on attacked systems only (3 or 7 of 10 Byzantine), on shorter
# trajectories (40 rounds) and more of them: drawn from a mixture that includes attack-free systems, the
# attention of our network did not learn to drop Gaussian and constant vectors within 80 trajectories.
_ARNN_TRAINING: dict[str, Any] = {"counts": [3, 7], "task": {"steps": 40}, "meta": {"lr": 0.03, "trajectories": 160}}
# The paper's Fig. 4 setting has no Byzantine worker: its four networks are meta-trained there (and reused,
# unchanged, by Fig. 5's transfer experiments).
# Validation trajectories run the 500 rounds the networks are used for (one attack-free trajectory, so cheap), every
# 10 trajectories: on the 100-round training horizon the best-scored weights need not be the best at round 500.
_FIG4_TRAINING: dict[str, Any] = {"counts": [0], "meta": {"trajectories": 50, "validate_steps": ROUNDS, "validate_every": 10}}
RECIPES: dict[str, dict[str, Any]] = {
    # the paper's networks: RNN sees the gradients, ARNN also the public-batch losses
    "rnn_lstm": {"aggregator": {**_PAPER_NET, "cell": "lstm"}, **_FIG4_TRAINING},
    "rnn_gru": {"aggregator": {**_PAPER_NET, "cell": "gru"}, **_FIG4_TRAINING},
    "arnn_lstm": {"aggregator": {**_PAPER_NET, "cell": "lstm", "loss_info": True}, **_FIG4_TRAINING},
    "arnn_gru": {"aggregator": {**_PAPER_NET, "cell": "gru", "loss_info": True}, **_FIG4_TRAINING},
    # Fig. 6: the paper's RNN and ARNN (LSTM) meta-trained again, with Byzantine workers
    "rnn_lstm_byz": {"aggregator": {**_PAPER_NET, "cell": "lstm"}, "counts": [0, 3], "meta": {"trajectories": 50}},
    "arnn_lstm_byz": {"aggregator": {**_PAPER_NET, "cell": "lstm", "loss_info": True}, **_ARNN_TRAINING},
    # ours: permutation-invariant, any number of workers
    "set_rnn_lstm": {"aggregator": {**_OURS_NET, "cell": "lstm"}, "counts": [0, 3], "meta": {"lr": 0.03, "trajectories": 50}},
    "set_arnn_lstm": {"aggregator": {**_OURS_NET, "cell": "lstm", "loss_info": True, "loss_memory": True}, **_ARNN_TRAINING},
    # Fig. 7: the paper's fixed-order RNN meta-trained for the 12 workers of the heterogeneous systems (no attack there either)
    "rnn_lstm_m12": {"aggregator": {**_PAPER_NET, "cell": "lstm"}, **_FIG4_TRAINING, "task": {"workers": 12}},
}
PAPER_METHODS = ["rnn_lstm", "rnn_gru", "arnn_lstm", "arnn_gru"]
TRAIN_ORDER = [
    "arnn_lstm_byz",
    "set_arnn_lstm",
    "rnn_lstm",
    "arnn_lstm",
    "set_rnn_lstm",
    "rnn_lstm_byz",
    "arnn_gru",
    "rnn_gru",
    "rnn_lstm_m12",
]


def recipe(method: str, data_dir: str | None, quick: bool) -> dict[str, Any]:
    """The meta-training sections of ``method`` (``quick``: a tiny version on the digits data)."""
    r = RECIPES[method]
    task = {
        "data": "mnist",
        "model": "mlp20",
        "workers": WORKERS,
        "batch_size": BATCH,
        "server_lr": SERVER_LR,
        "public_size": 1000,
        "public_batch": PUBLIC_BATCH,
        "steps": 100,
        "unroll": 20,
        "meta_batch": 128,
        **({"data_dir": data_dir} if data_dir else {}),
        **r.get("task", {}),
    }
    meta = {"trajectories": 80, "lr": 0.01, "validate_every": 20, "patience": 0, "threads": 1, "seed": 0, **r.get("meta", {})}
    if quick:
        task.update(data="digits", steps=20, unroll=10, public_size=200, data_dir=None)
        task = {k: v for k, v in task.items() if v is not None}
        meta.update(trajectories=4, validate_every=2, validate_steps=0)
    return {
        "method": method,
        "aggregator": dict(r["aggregator"]),
        "task": task,
        "byzantine": {"counts": r["counts"], "attacks": TRAIN_ATTACKS},
        "meta": meta,
    }


def _train_one(args: tuple[str, str | None, bool, str]) -> dict[str, Any]:
    method, data_dir, quick, out = args
    torch.set_num_threads(1)
    return meta_train(from_sections(recipe(method, data_dir, quick)), out, progress=False, resume=True)


def aggregator_root(out: Path, quick: bool) -> Path:
    """Where a reproduction keeps its aggregators: the committed ones, or (quick) tiny ones in its own output folder."""
    return out / "aggregators" if quick else AGGREGATOR_ROOT


def ensure_aggregators(methods: list[str], root: Path, data_dir: str | None, quick: bool, jobs: int = 2) -> dict[str, Path]:
    """Folders of the trained ``methods`` under ``root``, meta-training (in parallel) those not there yet."""
    todo = sorted((m for m in methods if not (root / m / "card.json").is_file()), key=TRAIN_ORDER.index)
    if todo:
        print(f"meta-training {', '.join(todo)} into {root} ({jobs} at a time; a killed training resumes)", flush=True)
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=get_context("spawn")) as ex:
            for card in ex.map(_train_one, [(m, data_dir, quick, str(root / m)) for m in todo]):
                print(
                    f"  {card['method']}: validation {card['validation_score']:.4f}, {card['meta_steps']} meta-steps, "
                    f"{card['wall_time']:.0f} s",
                    flush=True,
                )
    return {m: root / m for m in methods}


# -- runs ---------------------------------------------------------------------------------------------------
_DATASETS: dict[str, Dataset] = {}  # filled by the parent before forking the run processes


# How a learned method is used beyond its card: our set-ARNN, meta-trained without the norm bound, runs with it.
# Chosen on 500-round validation trajectories (training data; `byzlearn meta-validate`), where the same weights
# score 0.365 with the bound and 1.099 without (AGGREGATOR_ROOT/set_arnn_lstm/validation_500_*.json), and networks
# meta-trained with the bound score worse (README).
# Fig. 6's ablations run the same weights the other way round (the paper's ARNN with the bound, ours without).
USE_OPTIONS: dict[str, list[str]] = {
    "set_arnn_lstm": ["aggregator.input_clip=true"],
    "arnn_lstm_clip": ["aggregator.input_clip=true"],
    "set_arnn_lstm_noclip": ["aggregator.input_clip=false"],
}


def aggregator_overrides(method: str, agg_dirs: dict[str, Path], krum_f: int = 3) -> list[str]:
    """Config overrides selecting ``method``: ``mean``, ``krum`` (declared f = krum_f) or a learned one."""
    if method == "mean":
        return ["aggregator.name=mean"]
    if method == "krum":
        return ["aggregator.name=krum", f"aggregator.f={krum_f}"]
    return ["aggregator.name=learned", f"aggregator.path={json.dumps(str(agg_dirs[method]))}", *USE_OPTIONS.get(method, [])]


def run_curve(spec: dict[str, Any]) -> dict[str, Any]:
    """One simulator run from ``spec`` (``method``, ``setting``, ``overrides``, ``data_key``, ``rounds``, ``eval_every``)."""
    torch.set_num_threads(1)
    cfg = config_mod.load(None, spec["overrides"] + [f"train.rounds={spec['rounds']}", "train.threads=1"])
    t0 = time.perf_counter()
    return train_curve(make_simulator(cfg, _DATASETS[spec["data_key"]]), spec, t0)


def train_curve(engine: Any, spec: dict[str, Any], t0: float) -> dict[str, Any]:
    """Train ``engine`` (anything with ``step()`` and ``evaluate()``) for ``spec["rounds"]`` rounds; its results row.

    ``curve`` holds ``[round, test accuracy, test loss, mean training loss since the last evaluation]``;
    ``t0`` is when building the engine began (its cost counts in the wall time).
    """
    loss0, acc0 = engine.evaluate()
    curve, window = [[0, acc0, _finite(loss0), None]], []
    for r in range(1, spec["rounds"] + 1):
        window.append(engine.step())
        if r % spec["eval_every"] == 0 or r == spec["rounds"]:
            test_loss, acc = engine.evaluate()
            curve.append([r, acc, _finite(test_loss), _finite(sum(window) / len(window))])
            window = []
    wall = time.perf_counter() - t0
    return {
        "method": spec["method"],
        "setting": spec["setting"],
        **({} if spec["method"] in RULES else {"check": "spread"}),
        "final_test_accuracy": curve[-1][1],
        "best_test_accuracy": max(c[1] for c in curve),
        "final_train_loss": curve[-1][3],
        "wall_time_s": round(wall, 2),
        "seconds_per_round": round(wall / spec["rounds"], 5),
        "curve": curve,
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def run_all(
    specs: list[dict[str, Any]], datasets: dict[str, Dataset], jobs: int = 2, run: Callable[[dict[str, Any]], dict[str, Any]] = run_curve
) -> list[dict[str, Any]]:
    """``run(spec)`` for every spec, in ``jobs`` forked processes; runs read their data set from ``datasets[spec["data_key"]]``."""
    _DATASETS.clear()
    _DATASETS.update(datasets)
    if jobs <= 1:
        return [run(s) for s in specs]
    with ProcessPoolExecutor(jobs, mp_context=get_context("fork")) as ex:
        return list(ex.map(run, specs))


def dataset(key: str) -> Dataset:
    """The data set ``run_all`` handed to the runs under ``key``."""
    return _DATASETS[key]


def mean_over_seeds(rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[Any, dict[str, float]]:
    """Per group of ``key``: mean final/best accuracy and final training loss, and the spread over the seeds.

    ``lo``/``hi``/``std``: min, max and standard deviation of the final accuracy; ``collapsed``: how many
    seeds were learned, then lost (their best accuracy more than ``COLLAPSE`` above their final one)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = {}
    for k, rs in groups.items():
        losses = [r["final_train_loss"] for r in rs if r["final_train_loss"] is not None]
        finals = [r["final_test_accuracy"] for r in rs]
        mean = sum(finals) / len(rs)
        out[k] = {
            "final": mean,
            "best": sum(r["best_test_accuracy"] for r in rs) / len(rs),
            "loss": sum(losses) / len(losses) if len(losses) == len(rs) else float("nan"),
            "seeds": len(rs),
            "lo": min(finals),
            "hi": max(finals),
            "std": (sum((x - mean) ** 2 for x in finals) / max(len(rs) - 1, 1)) ** 0.5,
            "collapsed": sum(r["best_test_accuracy"] - r["final_test_accuracy"] > COLLAPSE for r in rs),
        }
    return out


def spread(st: dict[str, float], digits: int = 2, unit: str = "%") -> str:
    """``mean% [min-max]`` of a ``mean_over_seeds`` group in percent (``mean%`` alone for one seed)."""
    mean = f"{100 * st['final']:.{digits}f}{unit}"
    return mean if st["seeds"] < 2 else f"{mean} [{100 * st['lo']:.{digits}f}-{100 * st['hi']:.{digits}f}]"


def versus(a: dict[str, float], b: dict[str, float]) -> str:
    """``a`` against ``b`` judged on the spread: ``above`` (a's worst seed beats b's best), ``below``, or ``overlaps``."""
    if a["lo"] > b["hi"]:
        return "above"
    if a["hi"] < b["lo"]:
        return "below"
    return "overlaps"


def collapses(stats: dict[Any, dict[str, float]], name: Callable[[Any], str]) -> str:
    """A sentence counting the learned-then-lost seeds of every group that has any."""
    hit = [f"{name(k)} {st['collapsed']} of {st['seeds']}" for k, st in stats.items() if st["collapsed"]]
    head = f"Learned, then lost (best accuracy more than {100 * COLLAPSE:.0f} points above the final one), seeds per method: "
    return head + ("; ".join(hit) if hit else "none") + "."


def plot_curves(
    rows: list[dict[str, Any]],
    path: Path,
    title: str,
    label: Callable[[dict[str, Any]], str] = lambda r: r["method"],
    panel: Callable[[dict[str, Any]], str] | None = None,
) -> Path:
    """Training loss (top) and test accuracy (bottom) against rounds, one line per label (mean over seeds).

    With ``panel``, one column per panel value (an attack, a model, a data set), each label keeping its colour in every
    column and one legend for the figure, so that many settings stay readable."""
    panels: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault(panel(r) if panel else "", []).append(r)
    names = list(dict.fromkeys(label(r) for r in rows))
    colour = {n: f"C{i % 10}" for i, n in enumerate(names)}
    style = {n: "-" if i < 10 else "--" for i, n in enumerate(names)}
    cols = len(panels)
    if cols == 1:  # loss and accuracy side by side
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.6))
        pairs = [(a, b)]
    else:  # loss above accuracy, one column per panel
        fig, axes = plt.subplots(2, cols, figsize=(3.4 * cols, 6.4), squeeze=False, sharex=True)
        pairs = [(axes[0, j], axes[1, j]) for j in range(cols)]
    for (ax_loss, ax_acc), (key, sub) in zip(pairs, panels.items()):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in sub:
            groups.setdefault(label(r), []).append(r)
        for name, rs in groups.items():
            rounds = [c[0] for c in rs[0]["curve"]]
            acc = [100 * sum(r["curve"][i][1] for r in rs) / len(rs) for i in range(len(rounds))]
            ax_acc.plot(rounds, acc, color=colour[name], linestyle=style[name])
            pts = [(c[0], [r["curve"][i][3] for r in rs]) for i, c in enumerate(rs[0]["curve"]) if c[3] is not None]
            pts = [(x, sum(v) / len(v)) for x, v in pts if all(t is not None for t in v)]
            if pts:
                ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], color=colour[name], linestyle=style[name])
        ax_loss.set(title=key or "training loss", yscale="log")
        ax_acc.set(xlabel="round", ylim=(0, 100), title="" if key else "test accuracy")
        if cols == 1:
            ax_loss.set(xlabel="round")
        for ax in (ax_loss, ax_acc):
            ax.grid(alpha=0.3)
    pairs[0][0].set_ylabel("honest training loss")
    pairs[0][1].set_ylabel("test accuracy (%)")
    handles = [plt.Line2D([], [], color=colour[n], linestyle=style[n]) for n in names]
    ncol = min(len(names), 4)
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.03 + 0.035 * -(-len(names) // ncol), 1, 1))  # room for the legend's rows
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def wall_line(wall: float, t_train: float, root: Path) -> str:
    """The report's wall-time line, saying whether any aggregator had to be meta-trained first."""
    if t_train < 0.5:
        return f"Wall time: {wall:.0f} s (no meta-training: every aggregator was already trained in `{root}`)."
    return (
        f"Wall time: {wall:.0f} s, of which {t_train:.0f} s meta-training the aggregators that were not trained yet "
        f"(kept in `{root}` and reused)."
    )


def card_summary(agg_dirs: dict[str, Path]) -> str:
    """A markdown table of the aggregators used: validation score, meta-steps, training time."""
    lines = [
        "| aggregator | network | trained with Byzantine counts | validation score | meta-steps | training time (s) | meta-steps/s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for m, d in agg_dirs.items():
        c = json.loads((d / "card.json").read_text())
        n = c["network"]
        net = (
            f"{n['encoder']}, {n['cell']} {n['layers']}x{n['hidden']}, {c['preprocess']}"
            + (", loss info" if n["loss_info"] else "")
            + (", input clip" if c.get("input_clip") else "")
            + "".join(f"; run with {o.split('.', 1)[1]}" for o in USE_OPTIONS.get(m, []))
        )
        counts = c["training_config"]["byzantine"]["counts"]
        name = m if d.name == m else f"{m} (`{d.name}`)"
        lines.append(
            f"| {name} | {net} | {counts} | {c['validation_score']:.4f} | {c['meta_steps']} | {c['wall_time']:.0f} | "
            f"{c['meta_steps_per_second']:.2f} |"
        )
    return "\n".join(lines)
