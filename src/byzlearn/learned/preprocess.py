"""Coordinatewise pre- and post-processing of the learned aggregators' inputs and outputs.

Ji, Chen, Wang, Yu, Li, "Learning to Learn Gradient Aggregation by Gradient Descent", IJCAI 2019,
§4.2: for every coordinate i the M workers' values ``g_{*,i}`` are divided by their L2 norm
``A_i = ||g_{*,i}||_2``; normalised entries with ``|x| < e^{-p}`` are replaced by ``e^{-p}`` ("to
disregard very small gradients"); the network's output for coordinate i is multiplied back by
``A_i``. Options: ``"floor"`` clamps ``A_i`` from below at ``e^{-p}`` instead of replacing small
entries, and ``"log_sign"`` adds the L2L encoding of each normalised entry (Andrychowicz et al.
2016, appendix A: ``(log|x|/p, sign x)`` when ``|x| >= e^{-p}``, else ``(-1, e^p x)``).

The additional loss information of ARNN (§4.3) is one loss per worker on a small public batch
after a trial step along that worker's gradient; ``loss_features`` turns it into the network's input.

Hostile magnitudes (ours): ``bound_rows`` shortens rows longer than ``MAX_RATIO`` times the median
row norm before anything else reads them, so beyond that the aggregate no longer grows with an
attacker's scale; norms that overflow the dtype are computed in float64 (``aggregators._finite``).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor

from ..aggregators._finite import big_row_parts, finite_rows
from ..aggregators.preaggregation import static_clip

Preprocess = Literal["seed", "floor", "log_sign"]
PREPROCESS_FEATURES = {"seed": 1, "floor": 1, "log_sign": 2}
# Rows longer than MAX_RATIO x the median row norm are shortened to that length (bound_rows). In the
# committed l2a-fig6 runs the largest row reaches 9.6e4 x the median (Gaussian std 200, constant 100 at
# 3 of 10), so this default leaves every reproduction unchanged, bit for bit.
MAX_RATIO = 1e6


def screen_rows(G: Tensor) -> Tensor:
    """``G`` with every non-finite entry set to 0 (a lost or corrupt value counts as a zero gradient,
    as in the paper's footnote on unreliable communication); no copy when all are finite."""
    ok = torch.isfinite(G)
    return G if bool(ok.all()) else torch.where(ok, G, torch.zeros((), dtype=G.dtype, device=G.device))


def bound_rows(G: Tensor, ratio: float = MAX_RATIO) -> Tensor:
    """``G`` (screened: non-finite entries 0) with rows longer than ``ratio`` times the lower median row
    norm shortened to that length, the bound capped at the dtype's maximum (ours, the median-based
    counterpart of ``clip_rows``: with fewer than half the rows forged, the median norm is an honest
    one). No copy when no row exceeds it; ``ratio = inf`` or a zero median: no bound."""
    G = screen_rows(G)
    if G.shape[0] == 0 or not math.isfinite(ratio):
        return G
    norms = torch.linalg.vector_norm(G.detach(), dim=1)
    bound = min(ratio * median_row_norm(G, norms), float(torch.finfo(G.dtype).max))
    if not bound > 0 or not bool((norms > bound).any()):
        return G
    return static_clip(G, bound)


def median_row_norm(G: Tensor, norms: Tensor | None = None) -> float:
    """The lower median of the (screened) rows' norms, exact where a norm overflows the dtype (an honest
    row's norm while fewer than half the rows are forged)."""
    G = G.detach()
    n = G.shape[0]
    norms = torch.linalg.vector_norm(G, dim=1) if norms is None else norms
    med = float(torch.sort(norms).values[(n - 1) // 2])
    if not math.isfinite(med):  # more than half the rows overflow the dtype's norm: their true norms
        m, nu = big_row_parts(G)
        med = float(torch.sort(m * nu).values[(n - 1) // 2])
    return med


def cap_step(u: Tensor, G: Tensor, cap: float) -> Tensor:
    """``u`` shortened to ``cap`` times the median row norm of ``G`` when longer (ours: the step-size guard
    of a learned aggregator, ``aggregator.step_cap``; ``inf``: off)."""
    if not math.isfinite(cap) or G.shape[0] == 0:
        return u
    bound = min(cap * median_row_norm(screen_rows(G)), float(torch.finfo(u.dtype).max))
    return static_clip(u[None], bound)[0] if bound > 0 else u


def normalise(G: Tensor, p: float = 10.0, mode: Preprocess = "seed") -> tuple[Tensor, Tensor]:
    """Inputs ``X: Tensor[d, M, k]`` and scales ``A: Tensor[d]`` from a gradient batch ``G: Tensor[M, d]``.

    ``k`` is 1 (``seed``, ``floor``) or 3 (``log_sign``: the normalised value plus its L2L encoding).
    A coordinate where every worker sent 0 has ``A_i = 0``: its inputs are the constant ``e^{-p}``
    (the seed's replacement rule) and its output, multiplied by ``A_i``, is 0. With ``floor`` the
    scale is ``A_i = max(||g_{*,i}||, e^{-p})`` for both the division and the multiplication, and no
    entry is replaced (so an attention-weighted average of the inputs, times ``A_i``, is exactly
    that average of the gradients).
    """
    if G.dim() != 2:
        raise ValueError(f"expected a gradient batch Tensor[M, d], got shape {tuple(G.shape)}")
    G = screen_rows(G)
    eps = math.exp(-p)
    A = torch.linalg.vector_norm(G, dim=0)  # [d]
    if mode == "floor":
        A = A.clamp_min(eps)
        X = G / A
    elif mode in ("seed", "log_sign"):
        X = G / torch.where(A > 0, A, torch.ones_like(A))
        X = torch.where(X.abs() < eps, torch.full_like(X, eps), X)
    else:
        raise ValueError(f"preprocess must be one of {sorted(PREPROCESS_FEATURES)}, got {mode!r}")
    X = X.t().unsqueeze(-1)  # [d, M, 1]
    if mode == "log_sign":
        X = torch.cat([X, log_sign(X, p)], dim=-1)
    return X, A


def log_sign(x: Tensor, p: float = 10.0) -> Tensor:
    """L2L's encoding ``[..., 2]``: ``(log|x|/p, sign x)`` if ``|x| >= e^{-p}`` else ``(-1, e^p x)``."""
    big = x.abs() >= math.exp(-p)
    u = torch.where(big, torch.log(x.abs().clamp_min(math.exp(-p))) / p, torch.full_like(x, -1.0))
    v = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.cat([u, v], dim=-1)


def trial_points(theta: Tensor, G: Tensor, probe_lr: float, probe: str = "step", ref_norm: float | None = None) -> Tensor:
    """``Tensor[M + 1, d]``: the current model, then one trial point per worker m.

    ``probe = "step"``: ``theta - probe_lr * g_m``, a plain trial SGD step along the worker's vector.
    ``probe = "clipped"``: the same step with ``g_m`` clipped to the norm ``ref_norm`` of the
    server's own gradient on the public batch (``public_grad_norm``), so that a forged vector's
    magnitude cannot throw the model into saturation, where every trial loss looks alike (ours; the
    paper does not say how the trial point is taken). Evaluating the public loss on all rows at once
    gives the base loss and the M trial losses on the SAME public batch. Non-finite gradients are
    screened first.
    """
    G = screen_rows(G)
    if probe == "clipped":
        if ref_norm is None:
            raise ValueError("probe 'clipped' needs ref_norm, the norm of the server's public-batch gradient")
        G = clip_rows(G, ref_norm)
    elif probe != "step":
        raise ValueError(f"probe must be 'step' or 'clipped', got {probe!r}")
    return torch.cat([theta.unsqueeze(0), theta.unsqueeze(0) - probe_lr * G], dim=0)


def clip_rows(G: Tensor, ref_norm: float) -> Tensor:
    """Every row of ``G`` scaled down to L2 norm at most ``ref_norm`` (rows already shorter unchanged).

    With ``ref_norm`` the norm of the server's own public-batch gradient this is the norm bound of
    FLTrust (Cao et al., NDSS 2021, which rescales every update to that norm; here only longer ones
    are shortened). A finite row whose norm overflows the dtype is shortened in float64.
    """
    norms = torch.linalg.vector_norm(G, dim=1, keepdim=True)
    out = G * (ref_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    big = torch.isinf(norms[:, 0])
    if bool(big.any()):
        big = big & finite_rows(G)
        if bool(big.any()):
            m, nu = big_row_parts(G[big])
            out[big] = ((G[big].to(torch.float64) / m[:, None]) * (ref_norm / nu)[:, None]).to(G.dtype)
    return out


def public_grad_norm(public_loss: Callable[[Tensor], Tensor], theta: Tensor) -> float:
    """Norm of the gradient of the public-batch loss at ``theta`` (one small extra backward pass)."""
    with torch.enable_grad():
        p = theta.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.as_tensor(public_loss(p.unsqueeze(0))).sum(), p)
    return float(torch.linalg.vector_norm(g))


def loss_features(losses: Tensor, scale: float = 10.0) -> Tensor:
    """Per-worker loss features ``Tensor[M]`` in (-1, 1) from ``losses = [base, l_1..l_M]``.

    ``tanh(scale * (l_m - base) / base)``: the relative change of the public loss after the trial
    step along worker m's gradient (negative: the step helps). The paper feeds "the additional loss
    information f_r^m" without saying how it is scaled; this relative, squashed form is our choice
    (a diverging or NaN trial loss maps to +1, the worst score).
    """
    base, trial = losses[0], losses[1:]
    rel = (trial - base) / base.abs().clamp_min(1e-8)
    rel = torch.nan_to_num(rel, nan=1e6, posinf=1e6, neginf=-1e6)
    return torch.tanh(scale * rel)
