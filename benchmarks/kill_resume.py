"""Kill-and-resume trials: SIGKILL ``byzlearn run`` at random moments, resume, compare with an uninterrupted run.

For each configuration (plain D-SGD, worker momentum, robust FedAvg, DRACO; digits, small model), one
uninterrupted run is the reference; then ``--trials`` times a fresh run is started as a subprocess,
killed with SIGKILL after a random delay (some kills land during a checkpoint write, since checkpoints
are written every few rounds), resumed with ``byzlearn run --resume`` (killed again, up to ``--kills``
times), and run to the end. A trial passes when the final parameters are bit-identical to the
reference's and the metrics hold every evaluation round exactly once.

    .venv/bin/python benchmarks/kill_resume.py --trials 5          # about 2 minutes on 2 cores
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BYZLEARN = str(Path(sys.executable).with_name("byzlearn"))
BASE = [
    "data.name=digits",
    "model.name=mlp20",
    "train.rounds=400",
    "train.eval_every=20",
    "train.checkpoint_every=7",
    "train.threads=1",
    "workers.byzantine=3",
]
CONFIGS = {
    "dsgd-alie-nnm-krum": ["attack.name=alie", "aggregator.name=krum", 'aggregator.pre=["nnm"]'],
    "momentum-ipm-median": ["workers.momentum=0.9", "attack.name=ipm", "aggregator.name=median"],
    "fedavg-signflip-tm": [
        "train.algorithm=fedavg",
        "fedavg.local_steps=2",
        "fedavg.fraction=0.7",
        "attack.name=sign_flip",
        "aggregator.name=trimmed_mean",
        "aggregator.f=2",
    ],
    "draco-constant": ["workers.n=9", "workers.byzantine=1", "attack.name=constant", "aggregator.name=draco_repetition"],
}


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run_args(out: Path, overrides: list[str]) -> list[str]:
    return [BYZLEARN, "run", "--quiet", "--out", str(out)] + [a for o in overrides for a in ("--set", o)]


def final_theta(out: Path) -> torch.Tensor:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["simulator"]["theta"]


def trial(out: Path, overrides: list[str], ref: torch.Tensor, rng: random.Random, kills: int) -> dict:
    proc, killed = start(run_args(out, overrides)), 0
    while True:
        try:
            code = proc.wait(timeout=rng.uniform(0.3, 2.5)) if killed < kills else proc.wait()
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
            if not (out / "config.toml").exists():  # killed before the folder existed: start again
                proc = start(run_args(out, overrides))
            else:
                proc = start([BYZLEARN, "run", "--quiet", "--resume", str(out)])
            continue
        if code != 0:
            return {"ok": False, "kills": killed, "error": proc.stderr.read().decode()[-500:]}
        break
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    same = torch.equal(final_theta(out), ref)
    return {"ok": same and rounds == sorted(set(rounds)), "kills": killed, "identical": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5, help="trials per configuration")
    ap.add_argument("--kills", type=int, default=3, help="kills per trial at most")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    total = failures = kills = 0
    for name, extra in CONFIGS.items():
        overrides = BASE + extra
        ref_dir = root / name / "reference"
        subprocess.run(run_args(ref_dir, overrides), check=True, stdout=subprocess.DEVNULL)
        ref = final_theta(ref_dir)
        for t in range(args.trials):
            t0 = time.perf_counter()
            res = trial(root / name / f"trial{t}", overrides, ref, rng, args.kills)
            total += 1
            kills += res["kills"]
            failures += not res["ok"]
            print(
                f"{name} trial {t}: {res['kills']} kills, {'bit-identical' if res['ok'] else 'FAILED ' + str(res)} "
                f"({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
    print(f"\n{total} trials, {kills} kills, {failures} failures (folders in {root})")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
