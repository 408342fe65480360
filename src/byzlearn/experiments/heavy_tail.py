"""Injected heavy-tailed gradient noise, for the ACClip study (``repro_acclip``).

``stable_noise`` draws symmetric alpha-stable variables (Chambers-Mallows-Stuck); alpha = 2 is the
Gaussian N(0, 2 scale^2), alpha < 2 has infinite variance (tail P(|X| > x) ~ x^-alpha), alpha = 1
is Cauchy. ``NoisySimulator`` is the ordinary ``Simulator`` whose workers each add i.i.d. noise of
one such law to every coordinate of the gradient they compute, before the attack sees the honest
rows; the noise has its own seeded generator, saved in ``state_dict`` (exact resume). It hooks the
round's compute phase (``Simulator.worker_gradients``, which names the computing workers) instead of
changing the engine: the engine itself has no noise option.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..config import Config
from ..data import Dataset
from ..engine import Simulator


def stable_noise(
    shape: tuple[int, ...], alpha: float, scale: float, generator: torch.Generator, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Symmetric alpha-stable samples (0 < alpha <= 2) with scale parameter ``scale``, on the CPU."""
    if not 0.0 < alpha <= 2.0:
        raise ValueError(f"alpha must be in (0, 2], got {alpha}")
    v = (torch.rand(shape, generator=generator) - 0.5) * math.pi  # U(-pi/2, pi/2), float32 (2x faster than float64)
    w = -torch.log1p(-torch.rand(shape, generator=generator))  # Exp(1)
    return chambers_mallows_stuck(v, w, alpha).mul_(scale).to(dtype)


def chambers_mallows_stuck(v: Tensor, w: Tensor, alpha: float) -> Tensor:
    """Standard symmetric alpha-stable values from ``v ~ U(-pi/2, pi/2)`` and ``w ~ Exp(1)``."""
    if alpha == 1.0:
        return torch.tan(v)
    # float32 pi/2 rounds up: cos(-pi/2) would be -4e-8 and its fractional power NaN, hence the clamps
    tiny = torch.finfo(v.dtype).tiny
    cos_v, cos_rest = torch.cos(v).clamp_min(tiny), torch.cos(v - alpha * v).clamp_min(tiny)
    return torch.sin(alpha * v) / cos_v.pow(1.0 / alpha) * (cos_rest / w).pow((1.0 - alpha) / alpha)


class NoisySimulator(Simulator):
    """A ``Simulator`` whose workers add i.i.d. symmetric ``noise_alpha``-stable noise of scale ``noise_scale`` to their gradients.

    Every round draws one noise row per worker (``Tensor[n, d]``) whatever the attack, and worker i
    adds row i, so runs that differ only by optimiser, rule or attack see the same noise.
    ``noise_scale = 0`` is the plain simulator.
    """

    def __init__(self, cfg: Config, dataset: Dataset | None = None, noise_alpha: float = 2.0, noise_scale: float = 0.0):
        super().__init__(cfg, dataset=dataset)
        self.noise_alpha, self.noise_scale = noise_alpha, noise_scale
        self.noise_gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + 999)

    def worker_gradients(self, idx: Tensor, poison: Tensor | None = None, workers: Tensor | None = None) -> tuple[Tensor, Tensor]:
        G, losses = super().worker_gradients(idx, poison, workers)
        if self.noise_scale == 0.0:
            return G, losses
        noise = stable_noise((self.n, self.d), self.noise_alpha, self.noise_scale, self.noise_gen, G.dtype).to(G.device)
        if workers is not None:  # only these workers computed (the honest ones, in the round's compute phase)
            noise = noise.index_select(0, workers.to(noise.device))
        return G + noise, losses

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "noise_generator": self.noise_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.noise_gen.set_state(state["noise_generator"])
