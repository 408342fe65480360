"""A meta-trained aggregator as a rule of the catalogue: ``aggregator.name = "learned"``, ``path = DIR``.

The folder is what ``byzlearn meta-train`` writes: ``aggregator.safetensors`` (the network's
weights) and ``card.json`` (architecture, pre-processing, output convention, training settings,
validation score). The recurrent state of every coordinate persists across rounds and is saved in
the run's checkpoint (``state_dict``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..aggregators._finite import all_finite, pow2_scale
from ..aggregators.base import AGGREGATORS, AggregationContext, Aggregator
from ..registry import ConfigError
from .card import check_card, check_weights, read_card
from .network import CoordinatewiseRNN, State
from .preprocess import MAX_RATIO, bound_rows, cap_step, clip_rows, loss_features, normalise, public_grad_norm, screen_rows, trial_points

WEIGHTS, CARD = "aggregator.safetensors", "card.json"
FORMAT = "byzlearn-learned-aggregator/1"


def save_aggregator(net: CoordinatewiseRNN, card: dict[str, Any], out: str | Path) -> Path:
    """Write the network's weights (safetensors) and its card (JSON) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(out / WEIGHTS))
    full = {"format": FORMAT, "network": net.hyperparameters(), **card}
    (out / CARD).write_text(json.dumps(full, indent=1) + "\n")
    return out


def load_aggregator(path: str | Path) -> tuple[CoordinatewiseRNN, dict[str, Any]]:
    """The network and card saved in ``path`` (raises ``ConfigError`` naming what is missing)."""
    path = Path(path)
    missing = [name for name in (WEIGHTS, CARD) if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"aggregator.path = {str(path)!r} holds no trained aggregator (missing {', '.join(missing)}); "
            "train one with: byzlearn meta-train CONFIG --out DIR"
        )
    card = read_card(path)
    if card.get("format") != FORMAT:
        raise ConfigError(f"{str(path / CARD)!r} is not a byzlearn learned-aggregator card (format {card.get('format')!r})")
    check_card(card, repr(str(path / CARD)))
    net = CoordinatewiseRNN(**card["network"])
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ConfigError(
            f"{str(path / WEIGHTS)!r} is not a readable safetensors file ({e}); restore it or train again with byzlearn meta-train"
        ) from None
    check_weights(net, weights, repr(str(path / WEIGHTS)))
    net.load_state_dict(weights)
    net.eval()
    return net, card


def learned_update(
    net: CoordinatewiseRNN,
    G: Tensor,
    state: State,
    card: dict[str, Any],
    losses: Tensor | None = None,
    ref_norm: float | None = None,
    max_ratio: float = MAX_RATIO,
) -> tuple[Tensor, State]:
    """The aggregated vector ``A * o`` (``Tensor[d]``) for ``G: Tensor[n, d]``, and the new state.

    Differentiable in the network's weights (meta-training calls it with autograd on). ``losses``
    are ``[base, l_1..l_n]`` public-batch losses for ARNN. With the paper's fixed-order encoder,
    fewer than M rows (dropped messages) are padded with zero rows, as a lost message counts as a
    zero gradient (paper, footnote 1). A card with ``input_clip`` (ours) first clips every row to
    ``ref_norm``, the norm of the server's public-batch gradient (``reference_norm``).

    Hostile values (ours): rows longer than ``max_ratio`` times the median row norm are shortened to
    that length (``bound_rows``; ``inf``: off), per-coordinate norms that overflow the dtype are
    taken in float64, float16/bfloat16 batches are read in float32, and the result is finite and
    in ``G``'s dtype (an aggregate beyond the dtype's range is scaled down to fit it).
    """
    dtype = G.dtype
    if dtype in (torch.float16, torch.bfloat16):
        G = G.float()
    if card.get("input_clip"):
        if ref_norm is None:
            raise ValueError("this aggregator clips the workers' vectors to the public gradient's norm: pass ref_norm")
        G = clip_rows(screen_rows(G), ref_norm)
    G = bound_rows(G, max_ratio)
    M = net.workers
    if net.encoder == "concat" and G.shape[0] < M:
        G = torch.cat([G, G.new_zeros(M - G.shape[0], G.shape[1])], dim=0)
        if losses is not None:
            losses = torch.cat([losses, losses[:1].expand(M + 1 - losses.shape[0])])
    X, A = normalise(G, card["p"], card["preprocess"])
    s = 1.0
    if not all_finite(A):  # a coordinate's norm over the workers overflows: normalise s * G in float64 (s = 2^-k)
        s = pow2_scale(float(G.detach().abs().max()))
        X, A = normalise(G.double() * s, card["p"], card["preprocess"])
    net_dtype = next(net.parameters()).dtype
    lf = loss_features(losses, card["loss_scale"]).to(net_dtype) if net.loss_info else None
    k = net.recurrent_tensors
    extra: State = []
    if net.loss_memory:  # the running mean of each worker's loss feature rides at the end of the state
        assert lf is not None
        old = state[k] if len(state) > k and state[k].shape == lf.shape else torch.zeros_like(lf)
        memory = net.memory_decay * old + (1 - net.memory_decay) * lf
        lf, extra = torch.stack([lf, memory], dim=1), [memory]
    o, rnn_state = net(X.to(net_dtype), lf, state[:k])
    u = A * o.to(A.dtype)
    if s != 1.0 or u.dtype != dtype or not all_finite(u.detach()):
        u = A.double() * o.double()  # the aggregate of s * G
        top = float(u.detach().abs().max()) if u.numel() else 0.0
        limit = float(torch.finfo(dtype).max) * s  # beyond the dtype's range once divided by s: scaled to fit
        u = ((u * (limit / top) if top > limit else u) / s).to(dtype)
    return u, rnn_state + extra


def reference_norm(card: dict[str, Any], public_loss: Callable[[Tensor], Tensor], theta: Tensor) -> float | None:
    """The norm of the server's public-batch gradient when the card uses it (clipped probe or
    ``input_clip``), else ``None``; one value per round, shared by the probe and the input clipping."""
    if card.get("probe", "step") == "clipped" or card.get("input_clip"):
        return public_grad_norm(public_loss, theta.detach())
    return None


def probe_losses(
    public_loss: Callable[[Tensor], Tensor],
    theta: Tensor,
    G: Tensor,
    probe_lr: float,
    probe: str,
    differentiable: bool = False,
    ref_norm: float | None = None,
) -> Tensor:
    """ARNN's additional loss information: ``[base, l_1..l_M]`` on one public batch.

    Constants (no graph) by default. ``differentiable=True`` (the white-box attack) keeps the graph
    from ``G`` to the trial losses; ``theta`` and the clipped probe's reference norm stay constants.
    ``ref_norm``: that norm when already known (else one extra public-batch gradient computes it).
    """
    ref = (ref_norm if ref_norm is not None else public_grad_norm(public_loss, theta)) if probe == "clipped" else None
    with torch.set_grad_enabled(differentiable):
        return torch.as_tensor(public_loss(trial_points(theta.detach(), G, probe_lr, probe, ref))).reshape(-1)


@AGGREGATORS.register("learned")
class LearnedAggregator(Aggregator):
    """Learned RNN/ARNN aggregator (Ji et al., IJCAI 2019), meta-trained by ``byzlearn meta-train``; path = its folder.

    ``input_clip`` (ours, ARNN only): bound every worker's vector by the norm of the server's public-batch
    gradient before the network reads it; ``None`` keeps the card's setting (how it was meta-trained).
    ``max_ratio`` (ours): rows longer than this multiple of the median row norm are shortened to it
    (``preprocess.bound_rows``; ``inf`` turns it off), so the aggregate stops following a forged row's scale.
    ``step_cap`` (ours, a guard against late collapses): the aggregate is shortened to this multiple of the
    median row norm when longer (``preprocess.cap_step``; default ``inf``: off, the network as meta-trained).
    """

    def __init__(
        self,
        path: str,
        f: int = 0,
        probe_lr: float | None = None,
        input_clip: bool | None = None,
        max_ratio: float = MAX_RATIO,
        step_cap: float = float("inf"),
    ):
        super().__init__(f)
        for key, v in (("max_ratio", max_ratio), ("step_cap", step_cap)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"aggregator.{key} must be a positive number (inf: no bound), got {v!r}")
        self.max_ratio, self.step_cap = float(max_ratio), float(step_cap)
        self.path = path
        self.net, self.card = load_aggregator(path)
        self.name = self.card.get("method", "learned")
        self.probe_lr = float(probe_lr if probe_lr is not None else self.card["probe_lr"])
        if input_clip is not None:
            if input_clip and not self.net.loss_info:
                raise ConfigError(
                    f"aggregator.input_clip = true needs the public batch an ARNN reads; {path!r} holds an RNN "
                    "(loss_info = false): drop input_clip or use an ARNN"
                )
            self.card = {**self.card, "input_clip": bool(input_clip)}
        self.needs_public_batch = self.net.loss_info
        self.state: State | None = None

    def requirement(self, n: int) -> str | None:
        if self.net.encoder == "concat" and n > self.net.workers:
            return f"at most the {self.net.workers} workers it was trained for (its input is one slot per worker)"
        return None

    def public_losses(self, G: Tensor, ctx: AggregationContext) -> tuple[Tensor | None, float | None]:
        """ARNN's ``[base, l_1..l_n]`` and the public gradient's norm (``None``, ``None`` for an RNN)."""
        if not self.net.loss_info:
            return None, None
        if ctx.public_loss is None or ctx.params is None:
            raise ConfigError(f"{self.name} reads each worker's loss on the server's public batch: set data.public_size > 0")
        ref = reference_norm(self.card, ctx.public_loss, ctx.params)
        with torch.no_grad():
            return probe_losses(ctx.public_loss, ctx.params, G, self.probe_lr, self.card.get("probe", "step"), ref_norm=ref), ref

    @torch.no_grad()
    def aggregate(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        net = self.net
        dtype = next(net.parameters()).dtype
        if next(net.parameters()).device != G.device:
            net.to(G.device)
        if self.state is None or self.state[0].shape[0] != G.shape[1]:
            self.state = net.initial_state(G.shape[1], G.device, dtype)
        losses, ref = self.public_losses(G, ctx)
        u, self.state = learned_update(net, G, self.state, self.card, losses, ref, self.max_ratio)
        u = cap_step(u, G, self.step_cap)
        if self.card["output"] == "step":  # the network's output is the step itself: undo the server's SGD lr
            if not ctx.lr:
                raise ConfigError(f"{self.name} outputs the step itself; it needs the server optimiser's lr (optimizer.name = 'sgd')")
            return -self.card["step_scale"] * u / ctx.lr
        return u

    def state_dict(self) -> dict[str, Any]:
        return {"state": None if self.state is None else [s.detach().cpu().clone() for s in self.state]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = state.get("state")
        self.state = None if s is None else [t.clone() for t in s]

    def __repr__(self) -> str:
        return f"LearnedAggregator({self.path!r}, {self.name})"
