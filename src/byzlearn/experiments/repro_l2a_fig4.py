"""``byzlearn reproduce l2a-fig4``: learned aggregators against averaging (Ji et al., IJCAI 2019, Fig. 4).

MNIST, MLP 784-20-10 sigmoid, 10 workers with equal (iid) shards, no Byzantine worker, server SGD.
Methods: ``mean`` (averaging), the paper's ``rnn_lstm``, ``rnn_gru``, ``arnn_lstm``, ``arnn_gru``,
and our permutation-invariant ``set_rnn_lstm``, ``set_arnn_lstm``; every aggregator is meta-trained
on demand (``l2a.ensure_aggregators``) and evaluated on seeds it never saw, on the MNIST test set.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data import load_dataset
from . import l2a
from .reproduce import REPRODUCTIONS, machine, write_json

METHODS = ["mean", *l2a.PAPER_METHODS, "set_rnn_lstm", "set_arnn_lstm"]


def base_overrides(data: str, seed: int, public_size: int = 1000) -> list[str]:
    """The fig4 system: the same settings the aggregators were meta-trained in (``public_size`` held out for ARNN)."""
    return [
        f"data.name={data}",
        "model.name=mlp20",
        f"workers.n={l2a.WORKERS}",
        f"workers.batch_size={l2a.BATCH}",
        f"data.public_size={public_size}",
        f"data.public_batch={l2a.PUBLIC_BATCH}",
        "optimizer.name=sgd",
        f"optimizer.lr={l2a.SERVER_LR}",
        f"train.seed={seed}",
    ]


@REPRODUCTIONS.register("l2a-fig4")
def fig4(out: Path, quick: bool, data_dir: str | None) -> None:
    """Learned RNN/ARNN aggregators (LSTM, GRU) vs averaging on MNIST, 10 workers (Ji et al. 2019, Fig. 4)."""
    t0 = time.perf_counter()
    data = "digits" if quick else "mnist"
    rounds, eval_every, seeds = (30, 10, [0]) if quick else (l2a.ROUNDS, 25, l2a.SEEDS)
    aggs = l2a.ensure_aggregators(METHODS[1:], l2a.aggregator_root(out, quick), data_dir, quick)
    t_train = time.perf_counter() - t0
    ds = load_dataset(data, data_dir, download=True)
    specs = [
        {
            "method": m,
            "setting": {
                "data": data,
                "model": "mlp20",
                "workers": l2a.WORKERS,
                "byzantine": 0,
                "attack": "none",
                "partition": "iid",
                "seed": s,
                "rounds": rounds,
            },
            "overrides": base_overrides(data, s) + l2a.aggregator_overrides(m, aggs),
            "data_key": data,
            "rounds": rounds,
            "eval_every": eval_every,
        }
        for m in METHODS
        for s in seeds
    ]
    rows = l2a.run_all(specs, {data: ds}, jobs=1 if quick else 2)
    write_json(rows, out)
    l2a.plot_curves(rows, out / "fig4.png", f"{data}, mlp20, 10 workers, no attack (mean of {len(seeds)} seeds)")
    stats = l2a.mean_over_seeds(rows, lambda r: r["method"])
    wall = time.perf_counter() - t0
    mean_final = stats["mean"]["final"]
    table = [
        f"| method | final test accuracy, mean [min-max] of {len(seeds)} seeds | std (points) | best test accuracy (mean) | "
        "learned, then lost (seeds) | final training loss | vs mean (final, points) | against mean on the spread | s/round |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for m in METHODS:
        st = stats[m]
        spr = sum(r["seconds_per_round"] for r in rows if r["method"] == m) / len(seeds)
        table.append(
            f"| {m} | {l2a.spread(st)} | {100 * st['std']:.2f} | {100 * st['best']:.2f}% | {st['collapsed']} | {st['loss']:.4f} | "
            f"{100 * (st['final'] - mean_final):+.2f} | {'n/a' if m == 'mean' else l2a.versus(st, stats['mean'])} | {spr:.4f} |"
        )
    beat = [m for m in l2a.PAPER_METHODS if l2a.versus(stats[m], stats["mean"]) == "above"]
    overlap = [m for m in l2a.PAPER_METHODS if l2a.versus(stats[m], stats["mean"]) == "overlaps"]
    lstm_gru = {c: abs(stats[f"{c}_lstm"]["final"] - stats[f"{c}_gru"]["final"]) for c in ("rnn", "arnn")}
    md = [
        "# l2a-fig4: learned aggregators vs averaging (Ji et al., IJCAI 2019, Fig. 4)",
        "",
        f"Command: `byzlearn reproduce l2a-fig4{' --quick' if quick else ''} --data-dir ../shared/data/mnist`  ",
        f"Machine: {machine()}  ",
        l2a.wall_line(wall, t_train, l2a.aggregator_root(out, quick)),
        "",
        f"Setting: {data}, MLP 784-20-10 sigmoid, {l2a.WORKERS} workers with equal iid shards, batch {l2a.BATCH} per worker, "
        f"server SGD lr {l2a.SERVER_LR}, {rounds} rounds, mean and range over seeds {seeds} (test seeds; meta-training used "
        "other seeds and "
        "validation trajectories on training data only). Public split: 1000 training samples held out for every method "
        f"(ARNN reads {l2a.PUBLIC_BATCH} of them per round).",
        "",
        *table,
        "",
        "![fig4](fig4.png)",
        "",
        "## Aggregators",
        "",
        l2a.card_summary(aggs),
        "",
        "## Comparison with the paper",
        "",
        "The paper (Fig. 4): both RNN and ARNN aggregators beat averaging; LSTM and GRU perform alike; ARNN is more efficient than RNN.",
        "",
        f"Here, judged on the spread over {len(seeds)} seeds: {len(beat)} of the paper's 4 learned aggregators end above "
        f"averaging on every seed ({', '.join(beat) or 'none'}), {len(overlap)} within averaging's range "
        f"({', '.join(overlap) or 'none'}); "
        f"LSTM vs GRU differ by {100 * lstm_gru['rnn']:.2f} points (RNN) and {100 * lstm_gru['arnn']:.2f} points (ARNN); "
        f"ARNN-LSTM {'above' if stats['arnn_lstm']['final'] > stats['rnn_lstm']['final'] else 'not above'} RNN-LSTM. "
        "Note that part of the learned aggregators' lead over averaging can come from a learned effective step size "
        "(their output is a gradient the server's SGD applies with the same lr as averaging's), which the paper's "
        "comparison also allows.",
        "",
        l2a.collapses(stats, lambda m: f"`{m}`"),
        "",
        *l2a.METHOD_NOTES,
    ]
    (out / "results.md").write_text("\n".join(md) + "\n")
