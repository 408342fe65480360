"""Pre-aggregators ``Tensor[n, d] -> Tensor[m, d]`` applied before a rule: bucketing, static
norm clipping and ARC (adaptive robust clipping).

Functions hold the maths (re-exported by ``aggregators.functional``); the registered objects
(``PREAGGREGATORS``: "bucketing", "clipping", "arc") wrap them for ``build_aggregator``'s
``pre = [...]`` lists.

Non-finite rows: the clipping pre-aggregators turn a row with a NaN/±inf entry into a zero row
(its direction is undefined, so it cannot be rescaled); bucketing leaves such a row in its bucket,
whose mean becomes non-finite, and the base rule must then survive it (one poisoned bucket per
poisoned row at most). Finite rows are handled whatever their size (norms and means that would
overflow the dtype are computed in float64), float16/bfloat16 in float32, and a batch handed over
(``ctx.owns_batch``) is overwritten only if it owns its memory.
"""

import math

import torch
from torch import Tensor

from ..registry import ConfigError
from ._finite import LOW_PRECISION, all_finite, big_row_parts, check_batch, check_f, finite_rows, mean_rows, row_norms
from ._pairwise import mix_rows
from .base import PREAGGREGATORS, AggregationContext, PreAggregator
from .requirements import MAJORITY

__all__ = ["bucketing", "static_clip", "arc", "arc_clipped_count", "Bucketing", "Clipping", "ARC"]


# ------------------------------------------------------------------------------------------------
# maths
# ------------------------------------------------------------------------------------------------
def bucketing(G: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Bucketing (Karimireddy, He, Jaggi, ICLR 2022): ``Tensor[n, d] -> Tensor[ceil(n/s), d]``.

    Draw a fresh random permutation of the ``n`` rows (from ``generator``, or torch's default
    CPU generator when None), cut it into consecutive buckets of ``s`` rows (the last bucket holds
    the remaining ``n mod s`` rows when ``s`` does not divide ``n``) and return the mean of each
    bucket. The permutation is drawn on the generator's device (CPU when None) and moved to ``G``'s.
    float16/bfloat16 are averaged in float32; means of finite rows never overflow.
    """
    check_batch(G, "bucketing")
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
        raise ValueError(f"bucketing: the bucket size s must be a positive integer, got {s!r}")
    if G.dtype in LOW_PRECISION:
        return bucketing(G.float(), s, generator).to(G.dtype)
    n, d = G.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gen_device).to(G.device)
    # bucket means as one product B @ G (B: m x n averaging matrix), no permuted copy of G
    bucket = torch.empty(n, dtype=torch.long, device=G.device)
    bucket[perm] = torch.arange(n, device=G.device) // s
    m = -(-n // s)
    size = torch.bincount(bucket, minlength=m).to(G.dtype)
    B = torch.zeros(m, n, dtype=G.dtype, device=G.device)
    B[bucket, torch.arange(n, device=G.device)] = 1.0 / size[bucket]
    out = B @ G
    if not all_finite(out):
        # 0 * NaN spreads a bad row to every bucket: redo without them (and without overflow, mix_rows)
        finite = finite_rows(G)
        out = mix_rows(G, B, finite)
        for b in torch.unique(bucket[~finite]).tolist():  # the few buckets holding a bad row (at most f)
            out[b] = mean_rows(G[bucket == b])
    return out


def _writable(G: Tensor) -> bool:
    """Whether ``G`` may be overwritten in place: it owns its memory (not a view such as an expanded
    row, whose elements share storage) and needs no autograd history."""
    return G._base is None and G.is_contiguous() and not (G.requires_grad and torch.is_grad_enabled())


def _big_rows(G: Tensor, norms: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(idx, m, nu)`` for the finite rows whose norm overflowed the dtype (``row_norms`` gave +inf):
    their norm is ``m * nu`` in float64 (``_finite.big_row_parts``); ``None`` when there are none."""
    inf = torch.isinf(norms)
    if not bool(inf.any()):
        return None
    idx = torch.nonzero(inf & finite_rows(G)).flatten()
    if idx.numel() == 0:
        return None
    m, nu = big_row_parts(G[idx])
    return idx, m, nu


def _clip_to(
    G: Tensor,
    norms: Tensor,
    threshold: Tensor | float,
    inplace: bool = False,
    big: tuple[Tensor, Tensor, Tensor] | None = None,
    big_threshold: float | None = None,
) -> Tensor:
    """Rescale rows with norm above ``threshold`` to norm ``threshold``; non-finite rows -> zero rows.

    ``inplace``: overwrite ``G`` (only the rows that change) instead of allocating the result.
    ``big`` (``_big_rows``): finite rows whose norm overflows the dtype, clipped in float64 as
    ``(x / m) * (t / nu)`` to ``big_threshold`` (default ``threshold``; ``inf``: left unchanged).
    """
    replace = None
    if big is not None:
        idx, m, nu = big
        t = float(threshold) if big_threshold is None else big_threshold
        X = G[idx].to(torch.float64)
        if math.isfinite(t):  # x * t / ||x|| as (x / m) * (t / nu): no factor overflows
            X = torch.where((m * nu > t)[:, None], (X / m[:, None]) * (t / nu)[:, None], X)
        replace = (idx, X.to(G.dtype))
    threshold = torch.as_tensor(threshold, dtype=norms.dtype, device=norms.device)
    # norms > threshold is False for norm 0 and for NaN; inf norms (non-finite rows) are zeroed below.
    scale = torch.where(norms > threshold, threshold / norms, torch.ones_like(norms))
    scale = torch.where(torch.isinf(norms), torch.zeros_like(scale), scale)
    if not inplace:
        out = G * scale.unsqueeze(1)
        if bool(torch.isinf(norms).any()):  # 0 * NaN = NaN: set those rows to zero explicitly
            out[torch.isinf(norms)] = 0.0
    else:
        G.mul_(scale.unsqueeze(1))  # x * 1.0 == x exactly: unclipped rows stay bit for bit
        if bool(torch.isinf(norms).any()):
            G[torch.isinf(norms)] = 0.0
        out = G
    if replace is not None:
        out[replace[0]] = replace[1]
    return out


def static_clip(G: Tensor, c: float = 2.0, inplace: bool = False) -> Tensor:
    """Static norm clipping: ``x_i * min(1, c / ||x_i||_2)`` for every row (ByzFL ``Clipping``, c = 2.0).

    Rows with norm <= ``c`` are returned unchanged (bit for bit); a row containing a NaN or ±inf
    entry becomes a zero row. Norms are overflow-safe (see ``_finite.row_norms``); a finite row
    whose norm overflows the dtype is clipped in float64. ``inplace`` overwrites ``G`` and returns
    it (what the objects do when ``ctx.owns_batch``) unless ``G`` does not own its memory (a view,
    e.g. an expanded row); float16/bfloat16 are clipped in float32.
    """
    check_batch(G, "static_clip")
    if not (isinstance(c, (int, float)) and not isinstance(c, bool) and c > 0 and math.isfinite(c)):
        raise ValueError(f"static_clip: the clipping threshold c must be a positive finite number, got {c!r}")
    inplace = inplace and _writable(G)
    if G.dtype in LOW_PRECISION:
        out = static_clip(G.float(), c).to(G.dtype)
        return G.copy_(out) if inplace else out
    norms = row_norms(G)
    return _clip_to(G, norms, float(c), inplace, _big_rows(G, norms))


def arc_clipped_count(n: int, f: int) -> int:
    """ARC's number of clipped vectors ``k = floor(2 (f/n) (n - f))`` (exact integer arithmetic)."""
    return (2 * f * (n - f)) // n


def arc(G: Tensor, f: int, inplace: bool = False) -> Tensor:
    """Adaptive robust clipping (Allouah et al. 2024, "The vital role of gradient clipping in
    Byzantine-resilient distributed learning"): ``Tensor[n, d] -> Tensor[n, d]``.

    With ``k = floor(2 (f/n) (n - f))``, the ``k`` rows of largest L2 norm are clipped to the norm of
    the ``(k+1)``-th largest (= the ``(n-k)``-th smallest) row norm; the other rows are unchanged.
    Clipping every row whose norm exceeds that threshold is the same map (rows tied with the
    threshold are unchanged by clipping either way). Requires ``n > 2f``. Rows with NaN/±inf
    entries count as having norm ``+inf`` (so they are among the clipped ones) and become zero rows.
    Finite rows whose norm overflows the dtype keep their true (float64) norm and are clipped in
    float64. ``inplace``, float16/bfloat16: as :func:`static_clip`.
    """
    check_batch(G, "arc")
    check_f(f, "arc")
    n = G.shape[0]
    MAJORITY.check("arc", n, f)
    inplace = inplace and _writable(G)
    if G.dtype in LOW_PRECISION:
        out = arc(G.float(), f).to(G.dtype)
        return G.copy_(out) if inplace else out
    k = arc_clipped_count(n, f)
    norms = row_norms(G)
    big = _big_rows(G, norms)
    if k == 0:
        return _clip_to(G, norms, math.inf, inplace, big)
    if big is None:
        threshold = torch.sort(norms).values[n - k - 1]
        return _clip_to(G, norms, threshold, inplace)
    key = norms.to(torch.float64)  # the big rows' true norms (float64, possibly inf for float64 input)
    key[big[0]] = big[1] * big[2]
    t = float(torch.sort(key).values[n - k - 1])
    return _clip_to(G, norms, torch.tensor(t, dtype=torch.float64).to(G.dtype), inplace, big, t)


# ------------------------------------------------------------------------------------------------
# registered objects
# ------------------------------------------------------------------------------------------------
@PREAGGREGATORS.register("bucketing")
class Bucketing(PreAggregator):
    """Random buckets of s rows, averaged (Karimireddy et al. ICLR 2022); n inputs -> ceil(n/s) outputs.

    The permutation comes from ``ctx.generator`` (fresh every round). The base rule's ``f`` is NOT
    rescaled: as in the epfml reference code, the chain passes the rule the same ``f`` (each
    Byzantine row can poison at most one bucket, so at most ``f`` of the ``ceil(n/s)`` bucket means
    are Byzantine), and the rule's requirement is checked with ``ceil(n/s)`` inputs (e.g. median
    after bucketing with s = 2 needs ``ceil(n/2) > 2f``).
    """

    name = "bucketing"

    def __init__(self, s: int = 2):
        super().__init__(0)
        if not isinstance(s, int) or isinstance(s, bool) or s < 1:
            raise ConfigError(f"pre-aggregator bucketing: s (bucket size) must be a positive integer, got {s!r}")
        self.s = s

    def output_count(self, n: int) -> int:
        return -(-n // self.s)

    def __call__(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return bucketing(G, self.s, ctx.generator if ctx is not None else None)

    def __repr__(self) -> str:
        return f"Bucketing(s={self.s})"


@PREAGGREGATORS.register("clipping")
class Clipping(PreAggregator):
    """Static norm clipping of every row to norm at most c (ByzFL Clipping, default c = 2.0)."""

    name = "clipping"

    def __init__(self, c: float = 2.0):
        super().__init__(0)
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (c > 0 and math.isfinite(c)):
            raise ConfigError(f"pre-aggregator clipping: c must be a positive finite number, got {c!r}")
        self.c = float(c)

    def __call__(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return static_clip(G, self.c, inplace=ctx is not None and ctx.owns_batch)

    def __repr__(self) -> str:
        return f"Clipping(c={self.c})"


@PREAGGREGATORS.register("arc")
class ARC(PreAggregator):
    """Adaptive robust clipping (Allouah et al. 2024): clip the floor(2(f/n)(n-f)) largest-norm rows; needs n > 2f."""

    name = "arc"
    requires = MAJORITY

    def __init__(self, f: int = 0):
        if not isinstance(f, int) or isinstance(f, bool) or f < 0:
            raise ConfigError(f"pre-aggregator arc: f must be a non-negative integer, got {f!r}")
        super().__init__(f)

    def __call__(self, G: Tensor, ctx: AggregationContext) -> Tensor:
        return arc(G, self.f, inplace=ctx is not None and ctx.owns_batch)
