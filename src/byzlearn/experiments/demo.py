"""The main job (``byzlearn demo`` / ``make demo``): a short robustness comparison on the embedded
digits data set (scikit-learn's 8x8 digits; nothing to download).

10 workers, 3 of them Byzantine, an MLP with 20 sigmoid hidden units, 300 rounds: the mean and
seven robust rules (one behind NNM) against no attack and four attacks. It is the robustness matrix
(``experiments.matrix``) on a small built-in config, so it resumes if interrupted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .matrix import run_matrix

DEMO = {
    "data": {"name": "digits", "partition": "iid"},
    "model": {"name": "mlp20"},
    "workers": {"n": 10, "batch_size": 32},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "train": {"rounds": 300, "eval_every": 50, "checkpoint_every": 300, "seed": 0},
    "matrix": {
        "aggregators": [
            "mean",
            "median",
            "trimmed_mean",
            "geometric_median",
            "krum",
            "multi_krum",
            "centered_clipping",
            {"name": "krum", "pre": ["nnm"]},
        ],
        "attacks": ["none", "gaussian", {"name": "sign_flip", "scale": 4.0}, "alie", {"name": "ipm", "epsilon": 0.1}],
        "byzantine": [3],
    },
}


def main(out: Path | None = None, quiet: bool = False) -> int:
    out = out or Path("runs") / "demo"
    t0 = time.perf_counter()
    print("byzlearn demo: digits (8x8, 1437 train / 360 test), MLP 64-20-10, 10 workers of which 3 Byzantine, 300 rounds")
    rows = run_matrix(DEMO, out, jobs=min(2, os.cpu_count() or 1), progress=False if quiet else None)
    print()
    print("final test accuracy (%):")
    print((out / "table.md").read_text())
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.0f} s")
    print(f"heatmap: {out / 'heatmap.png'}   per-run folders (metrics, curves.png): {out / 'cells'}")
    return 0
