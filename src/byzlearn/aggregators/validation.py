"""Validation-based rules: Zeno (Xie, Koyejo, Gupta, ICML 2019, "Zeno: Distributed stochastic
gradient descent with suspicion-based fault-tolerance").

The server holds a small public batch and scores every candidate update ``u`` by its *stochastic
descendant score*

    Score(u) = f_r(θ) - f_r(θ - γ u) - ρ ||u||²,

then averages the ``n - b`` candidates with the highest scores (``b >= f``: at least one honest
candidate suffices).

Penalty convention. The paper writes ``ρ ||u||²``; the official code (``xcgoner/icml2019_zeno``)
applies ρ to the MEAN of the squared entries (``||u||² / d``) and sets ``ρ = γ / rho_ratio`` with
``rho_ratio = 200`` (``--rho 200``) and ``γ`` = the SGD learning rate. The default here follows the
official code (``penalty = "mean_square"``, ``rho = lr / 200``), because its published ρ values were
tuned for that scale; ``penalty = "squared_norm"`` gives the paper's literal formula.
"""

import math
from typing import Literal

import torch
from torch import Tensor

from ..registry import ConfigError
from ._finite import big_row_parts, check_batch, finite_rows, mean_rows
from .base import AGGREGATORS, AggregationContext, Aggregator

__all__ = ["zeno", "zeno_scores", "Zeno"]

Penalty = Literal["mean_square", "squared_norm"]


def zeno_scores(G: Tensor, loss_before: Tensor | float, losses_after: Tensor, rho: float, penalty: Penalty = "mean_square") -> Tensor:
    """Stochastic descendant scores ``Tensor[n]``: ``loss_before - losses_after[i] - rho * pen(G[i])``.

    ``pen(u) = mean(u**2)`` (official code) or ``sum(u**2)`` (paper), see the module docstring.
    A candidate with a NaN/±inf entry, or whose loss after the step is not finite, scores ``-inf``
    (so it is dropped first); the scores never contain NaN. Computed in float64; a valid candidate
    whose score overflows (a penalty beyond float64) scores ``-max``, above every invalid one.
    """
    check_batch(G, "zeno")
    n = G.shape[0]
    losses_after = torch.as_tensor(losses_after).to(device=G.device, dtype=torch.float64).reshape(-1)
    if losses_after.numel() != n:
        raise ValueError(f"zeno: losses_after must hold one loss per candidate ({n}), got {losses_after.numel()}")
    loss_before = torch.as_tensor(loss_before).to(device=G.device, dtype=torch.float64).reshape(())
    if penalty == "mean_square":
        pen = G.double().pow(2).mean(dim=1)
    elif penalty == "squared_norm":
        pen = G.double().pow(2).sum(dim=1)
    else:
        raise ValueError(f"zeno: penalty must be 'mean_square' or 'squared_norm', got {penalty!r}")
    finite = finite_rows(G)
    term = float(rho) * pen
    big = finite & ~torch.isfinite(pen)  # finite rows whose squares overflow float64
    if bool(big.any()):
        idx = torch.nonzero(big).flatten()
        m, nu = big_row_parts(G[idx])  # ||u||^2 = m^2 nu^2: rho * m^2 * q without forming m^2 (may still overflow)
        q = nu.square() / (G.shape[1] if penalty == "mean_square" else 1)
        term = term.clone()
        term[idx] = (math.sqrt(float(rho)) * m).square() * q
    scores = loss_before - losses_after - term
    ok = finite & torch.isfinite(losses_after) & ~torch.isnan(scores)
    # a valid candidate whose score overflows (a huge penalty) still ranks above every invalid one
    scores = torch.where(ok & (scores == -math.inf), torch.full_like(scores, -torch.finfo(scores.dtype).max), scores)
    return torch.where(ok, scores, torch.full_like(scores, -math.inf))


def zeno(G: Tensor, b: int, loss_before: Tensor | float, losses_after: Tensor, rho: float, penalty: Penalty = "mean_square") -> Tensor:
    """Zeno: mean of the ``n - b`` candidates (rows of ``G``) with the highest ``zeno_scores``.

    Ties are broken towards the lower row index (stable sort). Requires ``0 <= b < n``.
    """
    check_batch(G, "zeno")
    n = G.shape[0]
    if not isinstance(b, int) or isinstance(b, bool) or b < 0:
        raise ValueError(f"zeno: b (candidates dropped) must be a non-negative integer, got {b!r}")
    if not b < n:
        raise ValueError(f"zeno needs b < n (keep at least one candidate), got n={n}, b={b}")
    scores = zeno_scores(G, loss_before, losses_after, rho, penalty)
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = order[: n - b]
    return mean_rows(G.index_select(0, keep))


@AGGREGATORS.register("zeno")
class Zeno(Aggregator):
    """Zeno (Xie et al. 2019): average the n-b candidates with the best loss decrease on the public batch; b >= f, b < n.

    ``b`` defaults to ``f``; ``lr`` (the step γ in the score) defaults to the engine's ``ctx.lr``;
    ``rho`` defaults to ``γ / rho_ratio`` (official code: rho_ratio = 200). Each round makes ONE call
    ``ctx.public_loss(P)`` with ``P = [θ, θ - γ g_1, ..., θ - γ g_n]`` (``Tensor[n+1, d]``); rows
    of non-finite candidates are replaced by θ in ``P`` (so the loss function never sees NaN) and
    scored ``-inf``.
    """

    needs_public_batch = True

    name = "zeno"

    def __init__(
        self,
        f: int = 0,
        b: int | None = None,
        rho: float | None = None,
        rho_ratio: float = 200.0,
        lr: float | None = None,
        penalty: Penalty = "mean_square",
    ):
        super().__init__(f)
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 0):
            raise ConfigError(f"aggregator.b must be a non-negative integer (candidates dropped), got {b!r}")
        if rho is not None and not (isinstance(rho, (int, float)) and rho >= 0):
            raise ConfigError(f"aggregator.rho must be a non-negative number, got {rho!r}")
        if not (isinstance(rho_ratio, (int, float)) and rho_ratio > 0):
            raise ConfigError(f"aggregator.rho_ratio must be a positive number, got {rho_ratio!r}")
        if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(f"aggregator.lr must be a positive number, got {lr!r}")
        if penalty not in ("mean_square", "squared_norm"):
            raise ConfigError(f"aggregator.penalty must be 'mean_square' or 'squared_norm', got {penalty!r}")
        self.b = f if b is None else b
        self.rho, self.rho_ratio, self.lr, self.penalty = rho, float(rho_ratio), lr, penalty

    def requirement(self, n: int) -> str | None:
        if self.b < self.f:
            return f"b >= f (drop at least f candidates; b={self.b})"
        if not self.b < n:
            return f"b < n (keep at least one candidate; b={self.b})"
        return None

    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        if ctx.public_loss is None:
            raise ValueError("zeno needs the engine's public batch: set data.public_size > 0")
        if ctx.params is None:
            raise ValueError("zeno needs the current parameters (AggregationContext.params)")
        lr = self.lr if self.lr is not None else ctx.lr
        if lr is None:
            raise ValueError("zeno needs a step size: set aggregator.lr or let the engine pass its learning rate")
        rho = self.rho if self.rho is not None else lr / self.rho_ratio
        params = ctx.params.detach().to(device=G.device, dtype=G.dtype).reshape(1, -1)
        if params.shape[1] != G.shape[1]:
            raise ValueError(f"zeno: params have {params.shape[1]} entries but the gradients have {G.shape[1]}")
        finite = finite_rows(G)
        steps = torch.where(finite.unsqueeze(1), params - lr * G, params)
        with torch.no_grad():
            losses = torch.as_tensor(ctx.public_loss(torch.cat([params, steps], dim=0))).reshape(-1)
        if losses.numel() != G.shape[0] + 1:
            raise ValueError(f"zeno: public_loss returned {losses.numel()} losses for {G.shape[0] + 1} parameter rows")
        losses = losses.to(G.device)
        losses_after = torch.where(finite, losses[1:].double(), torch.full_like(losses[1:], math.inf, dtype=torch.float64))
        return zeno(G, self.b, losses[0], losses_after, rho, self.penalty)

    def __repr__(self) -> str:
        return f"Zeno(f={self.f}, b={self.b}, rho={self.rho}, lr={self.lr}, penalty={self.penalty!r})"
