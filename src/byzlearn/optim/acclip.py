"""ACClip (adaptive coordinate-wise clipping) and two fixed-threshold clipping baselines.

Zhang, Karimireddy, Veit, Kim, Reddi, Kumar, Sra, "Why are Adaptive Methods Good for Attention
Models?", NeurIPS 2020: when the stochastic-gradient noise is heavy-tailed (only a bounded
alpha-moment, alpha in (1, 2], so possibly infinite variance) SGD can fail, and clipping fixes it.

All three are ordinary ``torch.optim.Optimizer`` classes: they work on any module's parameters in
a plain training loop (a worker's optimiser) and, registered in ``OPTIMIZERS``, as the server
optimiser of a run (``optimizer.name = "acclip"``; the engine writes the aggregated gradient into
``theta.grad`` and calls ``step()``).

- ``ACClip`` ("acclip"): per coordinate, with ``g`` the gradient (plus ``weight_decay * x``)::

      m     = b1 * m + (1 - b1) * g                       # momentum (EMA), no bias correction
      t     = b2 * t + (1 - b2) * |g| ** alpha            # running alpha-moment, t = tau ** alpha
      tau   = t ** (1 / alpha)
      x     = x - lr * min(tau / (|m| + eps), 1) * m      # |m| clipped at tau, sign kept

  ``alpha`` defaults to 1: the paper sets alpha = 1 by default, a conservative estimate of the
  alpha-moment bound when the true tail index is unknown (E[|g|^a]^(1/a) grows with a). The
  public PyTorch re-implementation of the ICLR-2020 version uses alpha = 2; both are allowed
  (1 <= alpha <= 2). Not implemented: that re-implementation's optional Adam-style division
  (``mod = 1``) and the MLPerf-BERT variant's bias corrections and decoupled weight decay.
  The step has the units of the gradient (like SGD, unlike Adam), so ``lr`` is on SGD's scale.
- ``ClippedSGD`` ("clipped_sgd", the paper's GClip): ``g <- min(1, max_norm / ||g||) g`` with
  ``||g||`` the global L2 norm over every parameter of the optimiser, then SGD (optional
  heavy-ball momentum, torch's convention ``buf = mu * buf + g``).
- ``CoordClippedSGD`` ("coord_clipped_sgd", CClip with a fixed threshold):
  ``g_i <- min(1, threshold / |g_i|) g_i = clamp(g_i, -threshold, threshold)``, then SGD as above.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .server import OPTIMIZERS

Params = Iterable[Tensor] | Iterable[dict[str, Any]]


def _check_positive(name: str, value: float, allow_zero: bool = True) -> None:
    if not (value >= 0.0 if allow_zero else value > 0.0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


class ACClip(torch.optim.Optimizer):
    """Adaptive coordinate-wise clipping (Zhang et al., NeurIPS 2020): momentum clipped per coordinate at an online
    alpha-moment estimate."""

    def __init__(
        self,
        params: Params,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-5,
        alpha: float = 1.0,
        weight_decay: float = 0.0,
    ):
        _check_positive("lr", lr)
        _check_positive("eps", eps)
        _check_positive("weight_decay", weight_decay)
        betas = tuple(betas)  # type: ignore[assignment]
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not 1.0 <= alpha <= 2.0:
            raise ValueError(f"alpha must be in [1, 2] (the tail index of the moment tracked), got {alpha}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, alpha=alpha, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, alpha, wd = group["lr"], group["eps"], group["alpha"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("ACClip does not support sparse gradients")
                if wd != 0.0:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["tau_alpha"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, t = state["momentum"], state["tau_alpha"]
                m.mul_(b1).add_(g, alpha=1.0 - b1)
                a = g.abs()
                if alpha == 2.0:
                    a.square_()
                elif alpha != 1.0:
                    a.pow_(alpha)
                t.mul_(b2).add_(a, alpha=1.0 - b2)
                tau = t if alpha == 1.0 else (t.sqrt() if alpha == 2.0 else t.pow(1.0 / alpha))
                scale = torch.div(tau, m.abs().add_(eps)).clamp_(max=1.0)
                p.addcmul_(scale, m, value=-lr)
        return loss


class _ClippedSGDBase(torch.optim.Optimizer):
    """SGD on a clipped gradient; subclasses define ``_clipped`` (on fresh gradient copies)."""

    def __init__(self, params: Params, lr: float, momentum: float, weight_decay: float, **clip: float):
        for key, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            _check_positive(key, value)
        for key, value in clip.items():
            _check_positive(key, value, allow_zero=False)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, **clip))

    def _clipped(self) -> dict[Tensor, Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = self._clipped()
        for group in self.param_groups:
            mu = group["momentum"]
            for p in group["params"]:
                if p not in grads:
                    continue
                d = grads[p]
                if mu != 0.0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = d.clone()
                    else:
                        state["momentum_buffer"].mul_(mu).add_(d)
                    d = state["momentum_buffer"]
                p.add_(d, alpha=-group["lr"])
        return loss

    def _raw_grads(self) -> dict[Tensor, Tensor]:
        """Each parameter's gradient plus weight decay (fresh tensors, safe to modify)."""
        out: dict[Tensor, Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                out[p] = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
        return out


class ClippedSGD(_ClippedSGDBase):
    """SGD on the gradient clipped to a global L2 norm ``max_norm`` (GClip), optional heavy-ball momentum."""

    def __init__(self, params: Params, lr: float, max_norm: float = 1.0, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr, momentum, weight_decay, max_norm=max_norm)

    def _clipped(self) -> dict[Tensor, Tensor]:
        grads = self._raw_grads()
        if not grads:
            return grads
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
        for group in self.param_groups:  # the norm is global; each group may have its own threshold
            factor = torch.clamp(group["max_norm"] / norm, max=1.0) if norm > 0 else None
            for p in group["params"]:
                if p in grads and factor is not None:
                    grads[p].mul_(factor.to(grads[p].dtype))
        return grads


class CoordClippedSGD(_ClippedSGDBase):
    """SGD on the gradient clipped coordinate-wise at a fixed ``threshold`` (CClip), optional heavy-ball momentum."""

    def __init__(self, params: Params, lr: float, threshold: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr, momentum, weight_decay, threshold=threshold)

    def _clipped(self) -> dict[Tensor, Tensor]:
        grads = self._raw_grads()
        for group in self.param_groups:
            for p in group["params"]:
                if p in grads:
                    grads[p].clamp_(-group["threshold"], group["threshold"])
        return grads


# -- registered factories (annotated keyword parameters = the [optimizer] config keys) -----------------
@OPTIMIZERS.register("acclip")
def acclip(
    params: list[Tensor],
    lr: float = 0.1,
    betas: list[float] = (0.9, 0.99),
    eps: float = 1e-5,  # type: ignore[assignment]
    alpha: float = 1.0,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """ACClip (Zhang et al. 2020): momentum clipped per coordinate at an online alpha-moment of |g| (alpha = 1 by default)."""
    return ACClip(params, lr=lr, betas=tuple(betas), eps=eps, alpha=alpha, weight_decay=weight_decay)  # type: ignore[arg-type]


@OPTIMIZERS.register("clipped_sgd")
def clipped_sgd(
    params: list[Tensor], lr: float = 0.1, max_norm: float = 1.0, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD on the gradient clipped to global L2 norm max_norm (GClip in Zhang et al. 2020)."""
    return ClippedSGD(params, lr=lr, max_norm=max_norm, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("coord_clipped_sgd")
def coord_clipped_sgd(
    params: list[Tensor], lr: float = 0.1, threshold: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """SGD on the gradient clipped coordinate-wise at a fixed threshold (CClip in Zhang et al. 2020)."""
    return CoordClippedSGD(params, lr=lr, threshold=threshold, momentum=momentum, weight_decay=weight_decay)
