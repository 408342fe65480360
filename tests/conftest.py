"""Shared fixtures: real small data (sklearn's digits; MNIST from ../shared/data when present)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from byzlearn.data import load_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# a few meta-training trajectories on digits (seconds): the networks only need to be non-trivial
TINY_META = [
    "task.data=digits",
    "task.workers=4",
    "task.steps=30",
    "task.unroll=10",
    "task.batch_size=16",
    "task.meta_batch=64",
    "task.public_size=200",
    "task.server_lr=0.3",
    "meta.trajectories=12",
    "meta.validate_every=4",
    "meta.patience=0",
    "meta.lr=0.01",
    "meta.threads=1",
]


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist():
    root = SHARED_DATA / "mnist"
    if not root.is_dir():
        pytest.skip(f"MNIST files not found in {root} (CI has shared/ beside the clone)")
    return load_dataset("mnist", str(root), download=False)


def assert_batched_gradients_match_autograd(sim, dataset, n):
    """The simulator's one-pass per-worker gradients equal per-worker ``torch.autograd.grad`` (1e-6)."""
    idx = sim.sampler.sample(sim.gens["sample"])
    grads, losses = sim.worker_gradients(idx)
    assert grads.shape == (n, sim.d) and losses.shape == (n,)
    module = sim.model.module
    sim.model.load_into_module(sim.theta)
    for w in range(n):
        loss = F.cross_entropy(module(dataset.x_train[idx[w]]), dataset.y_train[idx[w]])
        ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(module.parameters()))])
        torch.testing.assert_close(grads[w], ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(losses[w], loss.detach())


def run_full_and_resumed(cfg, tmp_path, stop_after):
    """Run ``cfg`` to the end in ``tmp_path/full``, and in ``tmp_path/cut`` stopped after ``stop_after``
    rounds then resumed. Returns the full run's summary and both runs' final simulator states."""
    from byzlearn.experiments.runner import Run

    full = Run.create(cfg, tmp_path / "full").execute(progress=False)
    assert Run.create(cfg, tmp_path / "cut").execute(progress=False, stop_after=stop_after) is None
    Run.resume(tmp_path / "cut").execute(progress=False)
    state = lambda d: torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)["simulator"]  # noqa: E731
    return full, state("full"), state("cut")


def untrained_aggregator(root, method):
    """An untrained aggregator folder of an l2a recipe, as ensure_aggregators leaves it (so a quick
    reproduction skips meta-training)."""
    from byzlearn.experiments import l2a
    from byzlearn.learned import save_aggregator
    from byzlearn.learned.meta_train import build_network, card_of, from_sections

    cfg = from_sections(l2a.recipe(method, None, quick=True))
    card = {
        **card_of(cfg),
        "validation_score": 1.0,
        "best_trajectory": 0,
        "trajectories_run": 0,
        "meta_steps": 0,
        "wall_time": 0.0,
        "meta_steps_per_second": 0.0,
        "training_config": cfg.to_dict(),
    }
    save_aggregator(build_network(cfg), card, root / method)


def quick_reproduction(name, out, folders):
    """Run ``byzlearn reproduce NAME --quick`` into ``out`` with untrained aggregators in ``folders`` (no
    meta-training) and return its results.json rows."""
    import json

    from byzlearn.experiments import reproduce

    for folder in folders:
        untrained_aggregator(out / "aggregators", folder)
    reproduce.run(name, out, quick=True)
    return json.loads((out / "results.json").read_text())
