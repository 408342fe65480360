"""PNG plots of runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(rows: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Test accuracy and training loss against rounds, side by side."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ev = [r for r in rows if r.get("test_accuracy") is not None]
    ax_acc.plot([r["round"] for r in ev], [100 * r["test_accuracy"] for r in ev], marker=".")
    ax_acc.set(xlabel="round", ylabel="test accuracy (%)", title="test accuracy")
    tr = [r for r in rows if r.get("train_loss") is not None]
    ax_loss.plot([r["round"] for r in tr], [r["train_loss"] for r in tr], marker=".", color="tab:orange")
    ax_loss.set(xlabel="round", ylabel="loss", title="honest workers' training loss")
    if tr and all(r["train_loss"] > 0 for r in tr):
        ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
