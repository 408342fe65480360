"""White-box attack on learned aggregators (ours, not in Ji et al. 2019): ``attack.name = "learned_whitebox"``.

The paper evaluates its RNN/ARNN aggregators against fixed attacks only. This attacker crafts the
Byzantine rows by gradient descent THROUGH the defender's meta-trained network.

Threat model (the strongest white-box attacker): it knows the network's weights and card, the
coordinatewise recurrent state the server holds at this round, which rows of the batch it
occupies (``AttackContext.byzantine``; the last ``f`` rows when unknown), the honest gradients of
the round (omniscient, as ALIE/IPM), the model ``theta``, the server's lr and the server's public
data: it evaluates the public loss through ``ctx.aggregation.public_loss``, i.e. it draws its
public batches from the server's own public stream (which advances that stream; the server's next
batch is then a different one, so the attacker knows the public distribution, not the exact batch
the server will probe with). Pre-aggregators of a ``Chain`` (nnm, clipping, bucketing ...) are
differentiated through as well; a randomised one gets a private generator seeded once per round
from the attack's stream, so the attacker models a draw, not the server's own.

Each round, from the aggregator's current state (detached; the server's state is never advanced
or modified), the forged rows ``B`` (one vector ``b`` sent by all Byzantine workers, or ``f``
distinct rows with ``shared = false``) start from the sign-flipped honest mean ``-mu`` (``init =
"sign_flip"``, default) or an ALIE-like ``mu - z sigma`` (``"alie"``) and take ``steps`` steps of Adam (or
sign-gradient descent, ``optimizer = "sign"``) on a damage objective ``J`` (lower = more damage):

- ``objective = "ipm"`` (default): ``J = <F(G(B)), mu> / ||mu||^2``, the aggregate's component along
  the honest mean ``mu`` (1 for the mean of honest rows, < 0: the server steps uphill);
- ``objective = "loss"``: ``J = -L_pub(theta - lr * F(G(B)))``, minus the public loss after the
  server's SGD step (the attacker's estimate of the damage, on one public batch).

For ARNN (``net.loss_info``) the per-worker trial losses on the public batch are part of the graph
(``probe_losses(..., differentiable=True)``); the clipped probe's reference norm (the norm of the
server's public gradient) is a constant. Steps are taken in units of the honest rows' RMS
coordinate, and every row is projected onto ``||b|| <= max_norm_ratio * max_j ||g_j||`` (honest
norms; ``None``: unbounded). The best iterate (lowest ``J``, the initial point included) is sent;
``last_objective`` and ``initial_objective`` keep its value and the initial point's.
"""

# No ``from __future__ import annotations``: the registry checks config values against the real
# annotation objects of the constructor.

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ..aggregators.base import AggregationContext
from ..learned.aggregator import LearnedAggregator, learned_update, probe_losses, reference_norm
from ..registry import ConfigError
from .base import ATTACKS, Attack, AttackContext
from .gradient import require_honest, rows_of
from .omniscient import alie_z, coordinate_std


def learned_defender(aggregator: Any) -> tuple[list[Any], LearnedAggregator]:
    """``(pre-aggregators, learned rule)`` of the defender, or a ``ConfigError`` if it is not a learned aggregator."""
    rule = getattr(aggregator, "rule", aggregator)
    if not isinstance(rule, LearnedAggregator):
        name = getattr(aggregator, "name", type(aggregator).__name__)
        raise ConfigError(
            f"attack 'learned_whitebox' differentiates through a learned aggregator and the defender is {name!r}; "
            "use aggregator.name = 'learned' (optionally after pre-aggregators), or another attack (alie_optimal, ipm_optimal)"
        )
    pre = list(getattr(aggregator, "pre", [])) if rule is not aggregator else []
    return pre, rule


class WhiteBoxModel:
    """The attacker's differentiable copy of this round's server: ``aggregate(B)`` and ``objective(B)``.

    ``B: Tensor[k, d]`` with ``k`` = 1 (broadcast to the ``f`` Byzantine rows) or ``f``.
    """

    def __init__(self, ctx: AttackContext, objective: str = "ipm", seed: int | None = None):
        self.pre, self.rule = learned_defender(ctx.aggregator)
        self.net, self.card = self.rule.net, self.rule.card
        honest = ctx.honest.detach()
        self.honest, self.f, self.objective_name = honest, ctx.f, objective
        h, d = honest.shape
        dtype = next(self.net.parameters()).dtype
        if next(self.net.parameters()).device != honest.device:
            self.net.to(honest.device)
        state = self.rule.state
        if state is None or state[0].shape[0] != d:
            self.state = self.net.initial_state(d, honest.device, dtype)
        else:
            self.state = [s.detach() for s in state]
        n_rows = h + ctx.f
        if ctx.byzantine is not None:
            byz = torch.as_tensor(ctx.byzantine, device=honest.device).reshape(-1)[: ctx.f]
        else:
            byz = torch.arange(h, n_rows, device=honest.device)
        mask = torch.ones(n_rows, dtype=torch.bool, device=honest.device)
        mask[byz] = False
        self.byz, self.honest_ids = byz, mask.nonzero().squeeze(1)
        agg = ctx.aggregation if ctx.aggregation is not None else AggregationContext(round=ctx.round, params=ctx.params)
        self.params = ctx.params if agg.params is None else agg.params
        self.lr, self.public_loss = agg.lr, agg.public_loss
        self.gen = None
        if self.pre and seed is not None:
            self.gen, self.seed = torch.Generator(device=honest.device), seed
        self.pre_ctx = AggregationContext(
            round=ctx.round,
            params=self.params,
            lr=self.lr,
            public_loss=self.public_loss,
            generator=self.gen,
            owns_batch=False,
            extras=dict(agg.extras),
        )
        needs_public = self.net.loss_info or objective == "loss"
        if needs_public and (self.public_loss is None or self.params is None):
            raise ConfigError(
                "attack 'learned_whitebox' evaluates the server's public loss (ARNN probe or objective = 'loss'): set data.public_size > 0"
            )
        if (self.card["output"] == "step" or objective == "loss") and not self.lr:
            raise ConfigError("attack 'learned_whitebox' needs the server's lr (optimizer.name = 'sgd')")
        # the public gradient's norm (clipped probe, input clipping): a constant for the whole round
        self.ref = reference_norm(self.card, self.public_loss, self.params) if self.net.loss_info else None
        self.mu = honest.mean(dim=0)
        self.mu_sq = (self.mu @ self.mu).clamp_min(torch.finfo(self.mu.dtype).tiny)

    def batch(self, B: Tensor) -> Tensor:
        h, d = self.honest.shape
        G = self.honest.new_zeros(h + self.f, d).index_copy(0, self.honest_ids, self.honest)
        return G.index_copy(0, self.byz, B.expand(self.f, d).to(G.dtype))

    def aggregate(self, B: Tensor) -> Tensor:
        G = self.batch(B)
        if self.gen is not None:
            self.gen.manual_seed(self.seed)
        for p in self.pre:
            G = p(G, self.pre_ctx)
        losses = None
        if self.net.loss_info:
            losses = probe_losses(
                self.public_loss, self.params, G, self.rule.probe_lr, self.card.get("probe", "step"), differentiable=True, ref_norm=self.ref
            )
        u, _ = learned_update(self.net, G, self.state, self.card, losses, self.ref)
        if self.card["output"] == "step":  # as LearnedAggregator.aggregate: the server's SGD then applies +step_scale * u
            return -self.card["step_scale"] * u / self.lr
        return u

    def objective(self, B: Tensor) -> Tensor:
        out = self.aggregate(B)
        if self.objective_name == "loss":
            theta = self.params.detach() - self.lr * out.to(self.params.dtype)
            return -torch.as_tensor(self.public_loss(theta.unsqueeze(0))).mean()
        return (out @ self.mu.to(out.dtype)) / self.mu_sq


@ATTACKS.register("learned_whitebox")
class LearnedWhiteBoxAttack(Attack):
    """White-box attack on learned aggregators (ours): forged rows optimised through the defender's network.

    Options: ``steps`` (10) optimiser steps; ``objective`` ``"ipm"`` (minimise the aggregate's
    component along the honest mean) or ``"loss"`` (maximise the public loss after the server's
    step); ``shared`` (all Byzantine workers send one vector) or ``f`` distinct rows;
    ``optimizer`` ``"adam"`` or ``"sign"``; ``step_size`` (1.0) in units of the honest RMS coordinate;
    ``init`` ``"sign_flip"`` (``-mu``) or ``"alie"``; ``max_norm_ratio`` (10; None: unbounded) bounds each
    forged row's norm by that multiple of the largest honest norm. See the module docstring.
    """

    name = "learned_whitebox"
    omniscient = True

    def __init__(
        self,
        steps: int = 10,
        objective: Literal["ipm", "loss"] = "ipm",
        shared: bool = True,
        optimizer: Literal["adam", "sign"] = "adam",
        step_size: float = 1.0,
        init: Literal["sign_flip", "alie"] = "sign_flip",
        max_norm_ratio: float | None = 10.0,
    ):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ConfigError(f"attack.steps must be a non-negative integer, got {steps!r}")
        if objective not in ("ipm", "loss"):
            raise ConfigError(f"attack.objective must be 'ipm' or 'loss', got {objective!r}")
        if optimizer not in ("adam", "sign"):
            raise ConfigError(f"attack.optimizer must be 'adam' or 'sign', got {optimizer!r}")
        if init not in ("alie", "sign_flip"):
            raise ConfigError(f"attack.init must be 'alie' or 'sign_flip', got {init!r}")
        if not isinstance(shared, bool):
            raise ConfigError(f"attack.shared must be true or false, got {shared!r}")
        for key, value in (("step_size", step_size), ("max_norm_ratio", max_norm_ratio)):
            if value is None and key == "max_norm_ratio":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"attack.{key} must be a positive finite number, got {value!r}")
        self.steps, self.objective, self.shared, self.optimizer = steps, objective, shared, optimizer
        self.step_size, self.init = float(step_size), init
        self.max_norm_ratio = None if max_norm_ratio is None else float(max_norm_ratio)
        self.last_objective: float | None = None  # J of the rows sent in the latest round (logging, tests)
        self.initial_objective: float | None = None  # J of the initial point in the latest round

    # -- pieces ------------------------------------------------------------------------------------
    def initial_rows(self, ctx: AttackContext) -> Tensor:
        honest = ctx.honest.detach()
        mu = honest.mean(dim=0)
        if self.init == "sign_flip":
            b = -mu
        else:
            try:
                z = alie_z(ctx.n, ctx.f)
            except ConfigError:  # ALIE's z is undefined for this (n, f): a unit-strength ALIE
                z = 1.0
            b = mu - z * coordinate_std(honest)
        return b.unsqueeze(0).repeat(1 if self.shared else ctx.f, 1)

    def radius(self, honest: Tensor) -> float:
        if self.max_norm_ratio is None:
            return math.inf
        return self.max_norm_ratio * float(torch.linalg.vector_norm(honest, dim=1).max())

    @staticmethod
    def project(B: Tensor, radius: float) -> Tensor:
        if math.isinf(radius):
            return B
        norms = torch.linalg.vector_norm(B, dim=1, keepdim=True)
        return B * (radius / norms.clamp_min(1e-30)).clamp(max=1.0)

    def model(self, ctx: AttackContext) -> WhiteBoxModel:
        seed = None
        pre, _ = learned_defender(ctx.aggregator)
        if pre:  # one draw from the attack's stream: the private generator of randomised pre-aggregators
            seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator, device=ctx.generator.device))
        return WhiteBoxModel(ctx, self.objective, seed)

    def objective_value(self, ctx: AttackContext, rows: Tensor, model: WhiteBoxModel | None = None) -> float:
        """``J`` of given forged rows (``Tensor[f, d]`` or ``[1, d]``) at the aggregator's current state (no state change)."""
        model = model if model is not None else self.model(ctx)
        with torch.no_grad():
            return float(model.objective(rows.to(ctx.honest.dtype)))

    # -- the attack --------------------------------------------------------------------------------
    def forge(self, ctx: AttackContext) -> Tensor:
        require_honest(ctx)  # clear error when there is no honest row
        learned_defender(ctx.aggregator)
        if ctx.f == 0:
            return ctx.honest[:0]
        model = self.model(ctx)
        honest = ctx.honest.detach()
        d = honest.shape[1]
        scale = float(torch.linalg.vector_norm(honest, dim=1).max()) / math.sqrt(d)
        scale = scale if scale > 0 and math.isfinite(scale) else 1.0
        radius = self.radius(honest) / scale
        Z = self.project(self.initial_rows(ctx) / scale, radius).requires_grad_(True)
        opt = torch.optim.Adam([Z], lr=self.step_size) if self.optimizer == "adam" else None
        best_J, best_Z, first = math.inf, Z.detach().clone(), None
        with torch.enable_grad():
            for _ in range(self.steps):
                J = model.objective(Z * scale)
                value = float(J.detach())
                first = value if first is None else first
                if math.isfinite(value) and value < best_J:
                    best_J, best_Z = value, Z.detach().clone()
                (grad,) = torch.autograd.grad(J, Z) if J.requires_grad else (torch.zeros_like(Z),)
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                with torch.no_grad():
                    if opt is not None:
                        Z.grad = grad
                        opt.step()
                    else:
                        Z -= self.step_size * grad.sign()
                    Z.copy_(self.project(Z, radius))
        with torch.no_grad():  # the last iterate
            value = float(model.objective(Z * scale))
        first = value if first is None else first
        if math.isfinite(value) and value < best_J:
            best_J, best_Z = value, Z.detach().clone()
        self.initial_objective, self.last_objective = first, (best_J if math.isfinite(best_J) else None)
        B = (best_Z * scale).to(dtype=honest.dtype)
        return rows_of(B[0], ctx.f) if self.shared else B

    def __repr__(self) -> str:
        return (
            f"LearnedWhiteBoxAttack(steps={self.steps}, objective={self.objective!r}, shared={self.shared}, "
            f"optimizer={self.optimizer!r}, step_size={self.step_size}, init={self.init!r}, max_norm_ratio={self.max_norm_ratio})"
        )


__all__ = ["LearnedWhiteBoxAttack", "WhiteBoxModel", "learned_defender"]
