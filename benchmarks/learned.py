"""Learned aggregators: aggregation time per round, meta-training speed, white-box attack time.

At the MNIST MLP (``mlp20``, 784-20-10, d = 15,910) with n = 10 workers, the round's batch ``G`` is
a real one (the honest gradients of one simulator round), and the ARNN aggregators probe with the
real simulator's ``public_loss`` (public split of 1000 samples, batches of 16; the default
``clipped`` probe includes one extra public-batch gradient for the reference norm). Every
learned aggregator (concat LSTM/GRU RNN and ARNN, the paper's; the set encoder, ours) is timed as
the registered rule ``learned`` (``LearnedAggregator.aggregate``: pre-processing, the coordinatewise
network with its persistent state, post-processing, and for ARNN the public-batch probe), side by
side with ``mean`` and ``krum`` (f = 2) in the same run: after one warm-up call each, the rules
are called in turn ``--repeats`` times (interleaved, so that load from other jobs hits all alike)
and the median is reported as ratios to the mean and to Krum. The networks are UNTRAINED (random
weights saved with a meta-training card): a trained network of the same architecture costs the same.

Also timed: the white-box attack ``learned_whitebox`` (ours, default 10 Adam steps through the
defender, f = 2) per round, one full simulator round with the mean (gradients included) for
scale, and meta-training (``meta_train`` on the same data, ``task.steps = 40``, ``task.unroll = 20``,
``--trajectories`` trajectories, f = 2 ALIE): meta-steps (Adam updates of the network, each
back-propagating through 20 rounds) per second and optimisee rounds per second, with the
validation trajectories stubbed out so that only the training loop is timed.

Usage (from the repository root)::

    .venv/bin/python benchmarks/learned.py --json benchmarks/results-learned-cpu.json
    .venv/bin/python benchmarks/learned.py --quick      # smoke check (digits if MNIST is absent), seconds

MNIST is read from ``--data-dir`` (default: ``$BYZLEARN_DATA``, else ``../shared/data/mnist``
next to the checkout); without it the embedded ``digits`` set is used (d = 1,510 then).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import byzlearn  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from byzlearn import config as C
from byzlearn.aggregators import build_aggregator
from byzlearn.attacks import ATTACKS, AttackContext
from byzlearn.data import load_dataset
from byzlearn.engine import Simulator
from byzlearn.learned import meta_train as MT
from byzlearn.learned import save_aggregator

VARIANTS = {  # label -> meta-training overrides of the network
    "rnn_lstm": [],
    "arnn_lstm": ["aggregator.loss_info=true"],
    "arnn_lstm (probe=step)": ["aggregator.loss_info=true", "aggregator.probe=step"],
    "rnn_gru": ["aggregator.cell=gru"],
    "arnn_gru": ["aggregator.cell=gru", "aggregator.loss_info=true"],
    "set_rnn_lstm": ["aggregator.encoder=set", "aggregator.preprocess=floor"],
    "set_arnn_lstm": ["aggregator.encoder=set", "aggregator.loss_info=true", "aggregator.preprocess=floor", "aggregator.input_clip=true"],
}
ATTACKED = ("rnn_lstm", "arnn_lstm", "set_arnn_lstm")
META = ("rnn_lstm", "arnn_lstm", "rnn_gru", "set_arnn_lstm")


def dataset(data_dir: str | None):
    if data_dir and Path(data_dir).is_dir():
        try:
            return "mnist", data_dir, load_dataset("mnist", data_dir, download=False)
        except Exception as e:  # noqa: BLE001 - fall back to the embedded set
            print(f"MNIST not usable in {data_dir} ({e}); using digits", file=sys.stderr)
    return "digits", None, load_dataset("digits", None, download=False)


def meta_overrides(data: str, data_dir: str | None, n: int, trajectories: int, threads: int) -> list[str]:
    over = [
        f"task.data={data}",
        f"task.workers={n}",
        "task.steps=40",
        "task.unroll=20",
        "task.public_size=1000",
        f"meta.trajectories={trajectories}",
        "meta.validate_every=100000",
        "meta.patience=0",
        f"meta.threads={threads}",
        "byzantine.counts=[2]",
        'byzantine.attacks=["alie"]',
    ]
    return over + ([f"task.data_dir={json.dumps(data_dir)}"] if data_dir else [])


def interleaved_medians(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function: one warm-up each, then ``repeats`` passes over all in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    ap.add_argument("--data-dir", default=os.environ.get("BYZLEARN_DATA", str(default_dir)))
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--f", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--trajectories", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    ap.add_argument("--quick", action="store_true", help="smoke check: 3 repeats, 1 meta-training trajectory, one network")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.trajectories = 3, 1
    torch.set_num_threads(args.threads)
    n, f = args.n, args.f
    data, data_dir, ds = dataset(args.data_dir)

    over = [
        f"data.name={data}",
        f"workers.n={n}",
        "workers.byzantine=0",
        "model.name=mlp20",
        "data.public_size=1000",
        "data.public_batch=16",
        "aggregator.name=mean",
        "optimizer.name=sgd",
        "optimizer.lr=0.5",
        f"train.threads={args.threads}",
    ]
    if data_dir:
        over.append(f"data.data_dir={json.dumps(data_dir)}")
    sim = Simulator(C.load(None, over), ds)
    ctx = sim.aggregation_context()
    G, _ = sim.gradient_batch(ctx)
    d = G.shape[1]
    print(f"data {data}, d = {d}, n = {n}, f = {f}, {args.threads} thread(s)", file=sys.stderr)

    tmp = Path(tempfile.mkdtemp(prefix="byzlearn-bench-learned-"))
    rules = {"mean": build_aggregator({"name": "mean"}, f_default=f), "krum": build_aggregator({"name": "krum"}, f_default=f)}
    variants = {k: v for k, v in VARIANTS.items() if not args.quick or k in ("rnn_lstm", "arnn_lstm")}
    for i, (label, extra) in enumerate(variants.items()):
        mcfg = MT.load_config(None, meta_overrides(data, data_dir, n, 1, args.threads) + extra)
        torch.manual_seed(i)
        folder = tmp / f"net{i}"
        save_aggregator(MT.build_network(mcfg), {**MT.card_of(mcfg), "method": mcfg.method}, folder)
        rules[label] = build_aggregator({"name": "learned", "path": str(folder)}, f_default=f)

    results: list[dict] = []
    with torch.no_grad():
        fns = {label: (lambda a=agg: a(G, ctx)) for label, agg in rules.items()}
        if "arnn_lstm" in rules:
            fns["arnn_lstm: public-batch probe alone"] = lambda: rules["arnn_lstm"].public_losses(G, ctx)
        for label in ATTACKED:
            if label in rules:
                actx = AttackContext(
                    n=n,
                    f=f,
                    round=0,
                    honest=G[f:],
                    own=None,
                    params=sim.theta,
                    aggregator=rules[label],
                    generator=torch.Generator().manual_seed(0),
                    aggregation=ctx,
                    byzantine=torch.arange(f),
                )
                attack = ATTACKS.build("learned_whitebox", {}, "attack")
                fns[f"learned_whitebox vs {label} (10 steps)"] = lambda a=attack, c=actx: a.forge(c)
        fns["simulator round (mean, no attack)"] = sim.step
        sec = interleaved_medians(fns, args.repeats)
    mean_s, krum_s = sec["mean"], sec["krum"]
    for label, s in sec.items():
        results.append(dict(kind="per round", what=label, ms=s * 1e3, vs_mean=s / mean_s, vs_krum=s / krum_s))
        print(f"  {label:<42s} {s * 1e3:9.3f} ms  {s / mean_s:8.1f}x mean  {s / krum_s:7.2f}x krum", file=sys.stderr, flush=True)

    real_validation = MT.validation_score
    MT.validation_score = lambda *a, **k: 0.0  # time the training loop alone
    try:
        for label in [m for m in META if m in variants]:
            mcfg = MT.load_config(None, meta_overrides(data, data_dir, n, args.trajectories, args.threads) + VARIANTS[label])
            card = MT.meta_train(mcfg, tmp / f"meta-{label}", progress=False, dataset=ds)
            rounds = card["meta_steps"] * mcfg.task.unroll
            results.append(
                dict(
                    kind="meta-training",
                    what=label,
                    meta_steps=card["meta_steps"],
                    wall_s=card["wall_time"],
                    meta_steps_per_s=card["meta_steps"] / card["wall_time"],
                    rounds_per_s=rounds / card["wall_time"],
                )
            )
            print(
                f"  meta-train {label:<20s} {card['meta_steps']} meta-steps in {card['wall_time']:.1f} s: "
                f"{card['meta_steps'] / card['wall_time']:.3f} meta-steps/s, {rounds / card['wall_time']:.1f} rounds/s",
                file=sys.stderr,
                flush=True,
            )
    finally:
        MT.validation_score = real_validation

    print(
        f"\nd = {d} ({data}, mlp20), n = {n}, f = {f}; median of {args.repeats} interleaved calls after a warm-up; "
        f"torch {torch.__version__}, {args.threads} thread(s); untrained networks (same cost as trained).\n"
    )
    print("| per round | ms | vs mean | vs Krum |")
    print("|---|---:|---:|---:|")
    for r in results:
        if r["kind"] == "per round":
            print(f"| {r['what']} | {r['ms']:.3g} | {r['vs_mean']:.1f}x | {r['vs_krum']:.2f}x |")
    print("\n| meta-training (steps 40, unroll 20) | meta-steps | wall s | meta-steps/s | rounds/s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        if r["kind"] == "meta-training":
            print(f"| {r['what']} | {r['meta_steps']} | {r['wall_s']:.1f} | {r['meta_steps_per_s']:.3f} | {r['rounds_per_s']:.1f} |")
    if args.json:
        meta = dict(
            data=data,
            d=d,
            n=n,
            f=f,
            device="cpu",
            torch=torch.__version__,
            threads=args.threads,
            repeats=args.repeats,
            trajectories=args.trajectories,
            cpu_count=os.cpu_count(),
            machine=platform.machine(),
            time=time.strftime("%Y-%m-%d %H:%M:%S"),
            networks="untrained (random weights, same cost as trained)",
        )
        args.json.write_text(json.dumps(dict(meta=meta, results=results), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
