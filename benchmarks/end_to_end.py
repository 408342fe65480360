"""End to end: rounds per second of the whole training round, byzlearn against ByzFL's own loop (issue 19).

ByzFL's workload (MNIST, its ``fc_mnist`` 784-100-10 ReLU, d = 79,510, batch 32 per worker, SGD lr 0.1),
10 or 42 honest workers + 3 Byzantine, each setting with worker momentum 0 and 0.9:

=================  =========================================  ============================================
setting            byzlearn                                   ByzFL 0.0.11
=================  =========================================  ============================================
ALIE, TM           ``alie`` z = 1.5, ``trimmed_mean``         ``ALittleIsEnough`` tau = 1.5, ``TrMean``
sign flip, NNM+GM  ``sign_flip`` of the mean, NNM + GM        ``SignFlipping``, ``NNM`` + ``GeometricMedian``
IPM, Krum          ``ipm`` epsilon = 2, ``krum``              ``InnerProductManipulation`` tau = 2, ``Krum``
optimal ALIE, TM   ``alie_optimal`` (plus), ``trimmed_mean``  ``Optimal_ALittleIsEnough``, ``TrMean``
=================  =========================================  ============================================

Three engines, alternating within one run (per setting: ByzFL, byzlearn, loop, ``--repeats`` times;
medians of rounds/s after one warm-up block each):

* **ByzFL**: its own DSGD loop, as ``byzfl.benchmark.train.start_training`` runs it (per honest
  ``Client``: ``compute_gradients``; ``get_flat_gradients_with_momentum``; ``ByzantineClient.apply_attack``;
  ``Server.update_model_with_gradients``; ``Client.set_model_state`` of the new model), in a worker process of
  its own environment (``benchmarks/byzfl_env.sh``: ``BYZLEARN_BYZFL_PYTHON``, default
  ``/work/byzfl-venv/bin/python``) that reads commands from this one. Its clients draw minibatches from
  ``DataLoader``s over the same normalised MNIST tensors (ByzFL's ``Normalize(0.1307, 0.3081)``).
* **byzlearn**: ``Simulator.step`` (eager, ``train.compile = false``), the whole round: minibatches, the
  batched gradients, momentum, attack, rule, server step.
* **loop**: the same simulator with the gradients computed one worker at a time by plain PyTorch
  (``benchmarks/simulator.py``'s ``LoopSimulator``): what byzlearn's batching gains over a loop.

Usage (after ``bash benchmarks/byzfl_env.sh``)::

    .venv/bin/python benchmarks/end_to_end.py --data-dir ../shared/data/mnist --json benchmarks/results-end-to-end-cpu.json
    .venv/bin/python benchmarks/end_to_end.py --quick          # two settings, a few rounds: a smoke check
    .venv/bin/python benchmarks/end_to_end.py --device cuda --json benchmarks/results-end-to-end-gpu.json   # on a GPU

Evaluation is outside the timed rounds in all three; the optimal attack's blocks are a fifth as long
(each of its rounds runs the defender's rule 20 times). Threads: ``--threads`` in every process (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from aggregators_common import sync  # benchmarks/ is on sys.path (in ByzFL's worker too: stdlib and torch only)

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "alie-tm": ({"name": "alie", "z": 1.5}, {"name": "trimmed_mean"}, ("ALittleIsEnough", {"tau": 1.5}), ("TrMean", [])),
    "signflip-nnm-gm": (
        {"name": "sign_flip", "reference": "mean"},
        {"name": "geometric_median", "pre": ["nnm"]},
        ("SignFlipping", {}),
        ("GeometricMedian", ["NNM"]),
    ),
    "ipm-krum": ({"name": "ipm", "epsilon": 2.0}, {"name": "krum"}, ("InnerProductManipulation", {"tau": 2.0}), ("Krum", [])),
    "optalie-tm": (
        {"name": "alie_optimal", "direction": "plus"},
        {"name": "trimmed_mean"},
        ("Optimal_ALittleIsEnough", {}),
        ("TrMean", []),
    ),
}
F = 3


# ---------------------------------------------------------------------------------- ByzFL side
def byzfl_rounds(clients, server, byz, k: int) -> None:
    """``k`` rounds of the body of ByzFL's DSGD training loop (``byzfl/benchmark/train.py``), evaluation aside."""
    for _ in range(k):
        for c in clients:
            c.compute_gradients()
        honest = [c.get_flat_gradients_with_momentum() for c in clients]
        server.update_model_with_gradients(honest + byz.apply_attack(honest))
        model = server.get_dict_parameters()
        for c in clients:
            c.set_model_state(model)


def byzfl_worker() -> None:
    """Runs in ByzFL's environment: reads one JSON command per line, answers one JSON line."""
    sys.path.insert(0, str(HERE))
    import byzfl_side  # the torchvision stub and the IDX reader

    byzfl = byzfl_side.import_byzfl()[0]
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    state: dict = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        torch.set_num_threads(cmd["threads"])
        key = (cmd["setting"], cmd["honest"], cmd["momentum"])
        if key not in state:
            if "x" not in state:
                train = byzfl_side._MNIST(cmd["data_dir"], train=True)
                x = (train.data.float().div(255.0).unsqueeze(1) - 0.1307) / 0.3081
                state["x"], state["y"] = x, train.targets
            torch.manual_seed(0)
            np.random.seed(0)
            _, _, (attack, attack_params), (rule, pre) = SETTINGS[cmd["setting"]]
            agg_info = {"name": rule, "parameters": {"f": F}}
            pre_list = [{"name": p, "parameters": {"f": F}} for p in pre]
            n = cmd["honest"]
            shards = torch.randperm(len(state["y"])).chunk(n)
            clients = [
                byzfl.Client(
                    {
                        "model_name": "fc_mnist",
                        "device": cmd["device"],
                        "optimizer_name": "SGD",
                        "learning_rate": 0.1,
                        "loss_name": "NLLLoss",
                        "weight_decay": 0.0,
                        "milestones": [],
                        "learning_rate_decay": 1.0,
                        "LabelFlipping": False,
                        "training_dataloader": DataLoader(
                            TensorDataset(state["x"][s], state["y"][s]), batch_size=32, shuffle=True, drop_last=True
                        ),
                        "momentum": float(cmd["momentum"]),
                        "nb_labels": 10,
                        "store_per_client_metrics": False,
                    }
                )
                for s in shards
            ]
            test = DataLoader(TensorDataset(state["x"][:32], state["y"][:32]), batch_size=32)
            server = byzfl.Server(
                {
                    "model_name": "fc_mnist",
                    "device": cmd["device"],
                    "validation_loader": None,
                    "test_loader": test,
                    "optimizer_name": "SGD",
                    "learning_rate": 0.1,
                    "weight_decay": 0.0,
                    "milestones": [],
                    "learning_rate_decay": 1.0,
                    "aggregator_info": agg_info,
                    "pre_agg_list": pre_list,
                }
            )
            params = dict(attack_params, f=F, aggregator_info=agg_info, pre_agg_list=pre_list)
            byz = byzfl.ByzantineClient({"name": attack, "f": F, "parameters": params})
            model = server.get_dict_parameters()
            for c in clients:
                c.set_model_state(model)
            state[key] = (clients, server, byz)
        clients, server, byz = state[key]

        byzfl_rounds(clients, server, byz, cmd["warmup"])
        sync(torch.device(cmd["device"]))
        t0 = time.perf_counter()
        byzfl_rounds(clients, server, byz, cmd["rounds"])
        sync(torch.device(cmd["device"]))
        print(json.dumps({"rps": cmd["rounds"] / (time.perf_counter() - t0)}), flush=True)


class ByzFL:
    def __init__(self, python: str, data_dir: str, threads: int, device: str = "cpu"):
        self.data_dir, self.threads, self.device = data_dir, threads, device
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--byzfl-worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def rps(self, setting: str, honest: int, momentum: float, rounds: int, warmup: int) -> float:
        cmd = dict(op="run", setting=setting, honest=honest, momentum=momentum, rounds=rounds, warmup=warmup)
        self.proc.stdin.write(json.dumps(dict(cmd, data_dir=self.data_dir, threads=self.threads, device=self.device)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the ByzFL worker process ended (see its stderr above)")
        return json.loads(line)["rps"]

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(30)


# ------------------------------------------------------------------------------- byzlearn side
def workload(n: int, f: int, data_dir: str | None = None, momentum: float = 0.0, device: str = "cpu") -> list[str]:
    """Config overrides of ByzFL's workload (MNIST, ``fc_mnist``, batch 32, SGD lr 0.1, no evaluation) for
    ``n`` workers of which ``f`` Byzantine; ``data_dir=None`` leaves the data set to the caller (``dataset=``).
    ``benchmarks/scale.py`` and ``benchmarks/components.py`` build their simulators from it too."""
    over = ["data.name=mnist", "model.name=fc_mnist", f"workers.n={n}", f"workers.byzantine={f}", "workers.batch_size=32"]
    over += [f"workers.momentum={momentum}", "optimizer.name=sgd", "optimizer.lr=0.1", "train.eval_every=1000000"]
    over += [f"train.device={json.dumps(device)}"]
    return over + ([f"data.data_dir={json.dumps(data_dir)}"] if data_dir is not None else [])


def simulators(setting: str, honest: int, momentum: float, data_dir: str, device: str = "cpu"):
    from byzlearn import config as C
    from byzlearn.engine import make_simulator

    sys.path.insert(0, str(HERE))
    from simulator import LoopSimulator

    attack, rule, _, _ = SETTINGS[setting]
    over = workload(honest + F, F, data_dir, momentum, device)
    over += [f"attack.{k}={json.dumps(v)}" for k, v in attack.items()]  # TOML literals
    over += [f"aggregator.{k}={json.dumps(v)}" for k, v in rule.items()]
    cfg = C.load(None, over)
    sim = make_simulator(cfg)
    return sim, LoopSimulator(cfg, dataset=sim.dataset)


def rps(sim, rounds: int, warmup: int) -> float:
    for _ in range(warmup):
        sim.step()
    sync(sim.device)
    t0 = time.perf_counter()
    for _ in range(rounds):
        sim.step()
    sync(sim.device)
    return rounds / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--byzfl-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default="../shared/data/mnist")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds per block")
    ap.add_argument("--repeats", type=int, default=3, help="blocks per engine and setting (alternating)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: both engines' device (ByzFL's client and server device)")
    ap.add_argument("--quick", action="store_true", help="ALIE/TM and optimal ALIE/TM at 10 + 3, no momentum, 3 rounds")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.byzfl_worker:
        byzfl_worker()
        return
    import torch

    torch.set_num_threads(args.threads)
    python = os.environ.get("BYZLEARN_BYZFL_PYTHON", "/work/byzfl-venv/bin/python")
    if not Path(python).exists():
        sys.exit(f"byzlearn: error: ByzFL's environment is missing ({python}); create it with: bash benchmarks/byzfl_env.sh")
    data_dir = str(Path(args.data_dir).resolve())
    byzfl = ByzFL(python, data_dir, args.threads, args.device)
    plan = [(s, h, m) for h in (10, 42) for s in SETTINGS for m in (0.0, 0.9)]
    if args.quick:
        plan, args.rounds, args.repeats = [("alie-tm", 10, 0.0), ("optalie-tm", 10, 0.0)], 3, 1
    res = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} threads per process, device {args.device}",
        "command": "python " + " ".join(sys.argv),
        "rows": [],
    }
    print("| workers | setting | momentum | ByzFL rounds/s | byzlearn rounds/s | loop rounds/s | byzlearn / ByzFL | byzlearn / loop |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    try:
        for setting, honest, momentum in plan:
            sim, loop = simulators(setting, honest, momentum, data_dir, args.device)
            times: dict[str, list[float]] = {"byzfl": [], "byzlearn": [], "loop": []}
            k = max(2, args.rounds // 5) if setting.startswith("opt") else args.rounds  # 20 rule evaluations per round
            for i in range(args.repeats):
                warm = 2 if i == 0 else 0
                times["byzfl"].append(byzfl.rps(setting, honest, momentum, k, warm))
                times["byzlearn"].append(rps(sim, k, warm))
                times["loop"].append(rps(loop, k, warm))
            med = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "workers": f"{honest} + {F}",
                "setting": setting,
                "momentum": momentum,
                **{f"{k}_rounds_per_s": v for k, v in med.items()},
                "vs_byzfl": med["byzlearn"] / med["byzfl"],
                "vs_loop": med["byzlearn"] / med["loop"],
                "blocks": times,
            }
            res["rows"].append(row)
            print(
                f"| {row['workers']} | {setting} | {momentum} | {med['byzfl']:.1f} | {med['byzlearn']:.1f} | {med['loop']:.1f} | "
                f"{row['vs_byzfl']:.1f}x | {row['vs_loop']:.1f}x |",
                flush=True,
            )
    finally:
        byzfl.close()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
