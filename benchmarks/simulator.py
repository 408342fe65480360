"""Simulator speed: rounds per second of the batched engine against a Python loop over workers.

Both engines run the same configuration in the same process: the batched one computes all workers'
gradients with one ``vmap(grad)`` pass; the loop computes the same gradients worker by worker with
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

    def worker_gradients(self, workers, idx, poison=None):
        params = list(self.model.module.parameters())
        grads, losses = [], []
        with torch.no_grad():
            for p, v in zip(params, self.model.unflatten(self.theta)):
                p.copy_(self.model.unflatten(self.theta)[v] if isinstance(v, str) else v)
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
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    print(f"MNIST, mlp20 (784-20-10 sigmoid), batch 32 per worker, mean rule, {args.rounds} rounds x {args.repeats} repeats\n")
    print("| workers | batched rounds/s | loop rounds/s | speed-up (batched / loop) |")
    print("|---:|---:|---:|---:|")
    for n in args.workers:
        cfg = C.load(None, [f"data.name=mnist", f"workers.n={n}", "workers.batch_size=32", f"train.device={args.device}"])
        fast, slow = Simulator(cfg, dataset=ds), LoopSimulator(cfg, dataset=ds)
        g_fast, _ = fast.gradient_batch()
        g_slow, _ = slow.gradient_batch()
        assert torch.allclose(g_fast, g_slow, atol=1e-6), "the two engines must compute the same gradients"
        rounds_per_second(fast, 5), rounds_per_second(slow, 5)  # warm-up
        a, b = [], []
        for _ in range(args.repeats):
            a.append(rounds_per_second(fast, args.rounds))
            b.append(rounds_per_second(slow, args.rounds))
        ra, rb = statistics.median(a), statistics.median(b)
        print(f"| {n} | {ra:.1f} | {rb:.1f} | {ra / rb:.1f}x |")


if __name__ == "__main__":
    main()
