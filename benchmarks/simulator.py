"""Simulator speed: rounds per second of the batched engine against a Python loop over workers.

All engines run the same configuration in the same process: the batched one computes all workers'
gradients with one ``vmap(grad)`` pass (eagerly, and with ``train.compile = true``, compiled by
``torch.compile``); the loop computes the same gradients worker by worker with
``torch.autograd.grad`` (what a straightforward implementation does). Everything else in the round
(sampling, attack, aggregation, optimiser) is shared. Measurements alternate between the two engines
and the median of several repeats is reported, as a ratio, because the machine is shared and noisy.

    .venv/bin/python benchmarks/simulator.py [--data-dir ../shared/data/mnist] [--rounds 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from byzlearn import config as C
from byzlearn.data import load_dataset
from byzlearn.engine import Simulator


class LoopSimulator(Simulator):
    """The same simulator with per-worker gradients computed one worker at a time."""

    def worker_gradients(self, idx, poison=None, workers=None):
        params = list(self.model.module.parameters())
        grads, losses = [], []
        self.model.load_into_module(self.theta)
        for row in idx.to(self.device):
            x, y = self.x_train[row], self.y_train[row]
            loss = F.cross_entropy(self.model.module(x), y)
            g = torch.autograd.grad(loss, params)
            grads.append(torch.cat([t.reshape(-1) for t in g]))
            losses.append(loss.detach())
        return torch.stack(grads), torch.stack(losses)


def rounds_per_second(sim: Simulator, rounds: int) -> float:
    t0 = time.perf_counter()
    for _ in range(rounds):
        sim.step()
    return rounds / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
    ap.add_argument("--data-dir", default=os.environ.get("BYZLEARN_DATA", str(default_dir)))
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[10, 45])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    ds = load_dataset("mnist", args.data_dir, download=False)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"device {args.device}"
    )
    print(f"MNIST, mlp20 (784-20-10 sigmoid), batch 32 per worker, mean rule, {args.rounds} rounds x {args.repeats} repeats\n")
    print("| workers | loop rounds/s | batched rounds/s | batched + compile rounds/s | batched / loop | batched + compile / loop |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.workers:
        base = ["data.name=mnist", f"workers.n={n}", "workers.batch_size=32", f"train.device={args.device}"]
        cfg, cfg_c = C.load(None, base), C.load(None, base + ["train.compile=true"])
        loop, fast, comp = LoopSimulator(cfg, dataset=ds), Simulator(cfg, dataset=ds), Simulator(cfg_c, dataset=ds)
        g_loop, _ = loop.gradient_batch()
        for sim in (fast, comp):
            g, _ = sim.gradient_batch()
            assert torch.allclose(g, g_loop, atol=1e-6), "the engines must compute the same gradients"
        for sim in (loop, fast, comp):
            rounds_per_second(sim, 5)  # warm-up (and compilation)
        res: dict[str, list[float]] = {"loop": [], "fast": [], "comp": []}
        for _ in range(args.repeats):
            for key, sim in (("loop", loop), ("fast", fast), ("comp", comp)):
                res[key].append(rounds_per_second(sim, args.rounds))
        rl, rf, rc = (statistics.median(res[k]) for k in ("loop", "fast", "comp"))
        print(f"| {n} | {rl:.1f} | {rf:.1f} | {rc:.1f} | {rf / rl:.1f}x | {rc / rl:.1f}x |")


if __name__ == "__main__":
    main()
