"""Crude gradient-level attacks: constant vector, Gaussian noise, sign flip, zero, dropped
messages, NaN/Inf rows and floating-point bit flips.

Each attack returns ``Tensor[k, d]`` (``k <= f``) with the dtype and device of the honest
gradients. Randomness comes only from ``ctx.generator``.
"""

# No ``from __future__ import annotations`` here on purpose: the registry validates config values
# against the constructors' annotations, which must therefore be real objects, not strings.

from typing import Any, Literal

import torch
from torch import Tensor

from ..registry import ConfigError
from .base import ATTACKS, Attack, AttackContext

# -- helpers shared by the attack modules ---------------------------------------------------------


def dimension(ctx: AttackContext) -> int:
    """Number of coordinates ``d`` of the round's vectors."""
    if ctx.honest is not None and ctx.honest.dim() == 2:
        return int(ctx.honest.shape[1])
    return int(ctx.params.numel())


def reference(ctx: AttackContext) -> Tensor:
    """A tensor whose dtype/device the forged rows must have (the honest batch, else the params)."""
    return ctx.honest if ctx.honest is not None else ctx.params


def rows_of(vector: Tensor, k: int) -> Tensor:
    """``k`` identical rows equal to ``vector`` (a real copy, not a stride-0 view)."""
    return vector.unsqueeze(0).repeat(k, 1)


def require_honest(ctx: AttackContext) -> None:
    """A clear error when an omniscient attack is handed no honest row (no pass over the data)."""
    if ctx.honest is None or ctx.honest.shape[0] == 0:
        raise ValueError("this attack is omniscient and needs at least one honest gradient in ctx.honest")


def honest_mean(ctx: AttackContext) -> Tensor:
    require_honest(ctx)
    return ctx.honest.mean(dim=0)


def own_gradients(ctx: AttackContext, who: str) -> Tensor:
    if ctx.own is None:
        raise ValueError(f"attack {who!r} needs the Byzantine workers' own gradients (ctx.own), got None")
    return ctx.own


def randn(shape: tuple[int, ...], ctx: AttackContext, like: Tensor) -> Tensor:
    """Standard normal draws from ``ctx.generator`` (on the generator's device), moved to ``like``."""
    g = ctx.generator
    out = torch.randn(shape, generator=g, device=g.device, dtype=torch.float32)
    return out.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)


def positive_float(value: float, key: str, allow_zero: bool = True) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise ConfigError(f"attack.{key} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"attack.{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


# -- constant, noise, sign flip -------------------------------------------------------------------


@ATTACKS.register("constant")
class ConstantAttack(Attack):
    """Constant vector: every Byzantine worker sends ``magnitude * 1_d``.

    Used in DRACO (Chen et al., ICML 2018): their code uses ``-100``; the seed text quotes 240 for
    DRACO's experiments (that value is not in the DRACO code). The default 100 is the DRACO
    magnitude with a positive sign; set ``magnitude = -100`` or ``240`` to reproduce those setups.
    """

    name = "constant"

    def __init__(self, magnitude: float = 100.0):
        if not isinstance(magnitude, (int, float)) or isinstance(magnitude, bool):
            raise ConfigError(f"attack.magnitude must be a number, got {magnitude!r}")
        self.magnitude = float(magnitude)

    def forge(self, ctx: AttackContext) -> Tensor:
        ref = reference(ctx)
        return torch.full((ctx.f, dimension(ctx)), self.magnitude, dtype=ref.dtype, device=ref.device)

    def __repr__(self) -> str:
        return f"ConstantAttack(magnitude={self.magnitude})"


@ATTACKS.register("gaussian")
class GaussianAttack(Attack):
    """Gaussian noise: each Byzantine worker sends a fresh draw of ``N(mean, std^2 I_d)`` every round.

    Defaults follow Zeno (Xie et al., ICML 2019, ``byzantine.py``: mean 0, std 200); ByzFL's
    ``Gaussian`` uses std 1. ``center = "honest_mean"`` is the variant ``mu_honest + N(mean, std^2 I)``
    (noise around the honest mean; omniscient).
    """

    name = "gaussian"

    def __init__(self, mean: float = 0.0, std: float = 200.0, center: Literal["zero", "honest_mean"] = "zero"):
        if not isinstance(mean, (int, float)) or isinstance(mean, bool):
            raise ConfigError(f"attack.mean must be a number, got {mean!r}")
        self.mean = float(mean)
        self.std = positive_float(std, "std")
        if center not in ("zero", "honest_mean"):
            raise ConfigError(f"attack.center must be 'zero' or 'honest_mean', got {center!r}")
        self.center = center
        self.omniscient = center == "honest_mean"

    def forge(self, ctx: AttackContext) -> Tensor:
        ref = reference(ctx)
        out = randn((ctx.f, dimension(ctx)), ctx, ref).mul_(self.std).add_(self.mean)  # in place: the same values
        if self.center == "honest_mean":
            out = out.add_(honest_mean(ctx))
        return out

    def __repr__(self) -> str:
        return f"GaussianAttack(mean={self.mean}, std={self.std}, center={self.center!r})"


@ATTACKS.register("sign_flip")
class SignFlipAttack(Attack):
    """Sign flip / reversed gradient: ``b = -scale * g_own`` or ``b = -scale * mu_honest``.

    ``reference = "own"``: each Byzantine worker sends its own true gradient reversed, as the
    "bit-flipping" attack of Karimireddy, He & Jaggi (ICML 2021 / ICLR 2022; epfml
    ``BitFlippingWorker``, scale 1); DRACO's "reversed gradient" uses ``scale = 100``.
    ``reference = "mean"``: all send the reversed honest mean, ByzFL ``SignFlipping`` (omniscient;
    equal to IPM with epsilon = scale).
    """

    name = "sign_flip"

    def __init__(self, scale: float = 1.0, reference: Literal["own", "mean"] = "own"):
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise ConfigError(f"attack.scale must be a number, got {scale!r}")
        if reference not in ("own", "mean"):
            raise ConfigError(f"attack.reference must be 'own' or 'mean', got {reference!r}")
        self.scale = float(scale)
        self.reference = reference
        self.needs_own_gradients = reference == "own"
        self.omniscient = reference == "mean"

    def forge(self, ctx: AttackContext) -> Tensor:
        if self.reference == "own":
            return -self.scale * own_gradients(ctx, self.name)[: ctx.f]
        return rows_of(-self.scale * honest_mean(ctx), ctx.f)

    def __repr__(self) -> str:
        return f"SignFlipAttack(scale={self.scale}, reference={self.reference!r})"


# -- degenerate messages --------------------------------------------------------------------------


@ATTACKS.register("zero")
class ZeroAttack(Attack):
    """Zero vector: every Byzantine worker sends ``0_d`` (drags the mean toward 0; median-type rules ignore it)."""

    name = "zero"

    def forge(self, ctx: AttackContext) -> Tensor:
        ref = reference(ctx)
        return torch.zeros((ctx.f, dimension(ctx)), dtype=ref.dtype, device=ref.device)


@ATTACKS.register("dropped")
class DroppedAttack(Attack):
    """Dropped messages: the Byzantine workers send nothing (``forge`` returns 0 rows; the rule sees n - f inputs)."""

    name = "dropped"

    def forge(self, ctx: AttackContext) -> Tensor:
        ref = reference(ctx)
        return torch.empty((0, dimension(ctx)), dtype=ref.dtype, device=ref.device)


class _FilledRows(Attack):
    """Every Byzantine message is ``value * 1_d`` for the subclass's non-finite ``value``."""

    value = float("nan")

    def forge(self, ctx: AttackContext) -> Tensor:
        ref = reference(ctx)
        return torch.full((ctx.f, dimension(ctx)), self.value, dtype=ref.dtype, device=ref.device)


@ATTACKS.register("nan")
class NaNAttack(_FilledRows):
    """NaN rows: every coordinate of every Byzantine message is NaN (robust rules must survive it)."""

    name = "nan"
    value = float("nan")


@ATTACKS.register("inf")
class InfAttack(_FilledRows):
    """Infinite rows: every Byzantine message is ``+inf * 1_d`` (ByzFL ``Inf``)."""

    name = "inf"
    value = float("inf")


# -- floating-point bit flips ---------------------------------------------------------------------

_INT_VIEW: dict[torch.dtype, tuple[torch.dtype, int]] = {
    torch.float32: (torch.int32, 32),
    torch.float64: (torch.int64, 64),
    torch.float16: (torch.int16, 16),
    torch.bfloat16: (torch.int16, 16),
}


def bit_mask(bits: Any, nbits: int) -> int:
    """The XOR mask, as a signed integer of width ``nbits``, for a ``bits`` setting of ``bit_flip``."""
    sign, top_exponent = 1 << (nbits - 1), 1 << (nbits - 2)
    if bits == "sign":
        mask = sign
    elif bits == "exponent":
        mask = top_exponent
    elif bits == "sign+exponent":
        mask = sign | top_exponent
    elif isinstance(bits, int) and not isinstance(bits, bool) and 0 < bits < (1 << nbits):
        mask = bits
    else:
        raise ConfigError(f"attack.bits must be 'sign', 'exponent', 'sign+exponent' or an integer mask in [1, 2^{nbits}), got {bits!r}")
    return mask - (1 << nbits) if mask >= sign else mask  # two's-complement value of the signed view


def flip_bits(X: Tensor, mask: Tensor, bits: Any) -> Tensor:
    """``X`` with ``bit_mask(bits)`` XOR-ed into the stored representation where ``mask`` is True."""
    if X.dtype not in _INT_VIEW:
        raise TypeError(f"bit_flip needs a floating-point gradient (float16/bfloat16/float32/float64), got {X.dtype}")
    int_dtype, nbits = _INT_VIEW[X.dtype]
    m = bit_mask(bits, nbits)
    ints = X.contiguous().view(int_dtype)
    flipped = torch.where(mask, torch.bitwise_xor(ints, torch.tensor(m, dtype=int_dtype, device=X.device)), ints)
    return flipped.view(X.dtype)


@ATTACKS.register("bit_flip")
class BitFlipAttack(Attack):
    """Floating-point bit flips on a random fraction of the coordinates of each worker's own gradient.

    This is the hardware-fault model (stored bits corrupted), not the "bit-flipping" attack of
    Karimireddy et al., which is a sign flip of the whole gradient (use ``sign_flip``). Each
    Byzantine worker takes its true gradient, picks ``round(fraction * d)`` distinct coordinates
    uniformly at random (fresh each round, from ``ctx.generator``), views their IEEE-754 storage as
    a signed integer of the same width and XORs a mask:

    - ``"sign"``: the sign bit (bit 31 of float32): those coordinates change sign;
    - ``"exponent"`` (default): the most significant exponent bit (bit 30 of float32): a value with
      ``|x| < 2`` is multiplied by ``2^128`` (a gradient entry becomes ~1e38 or inf/NaN), one with
      ``|x| >= 2`` becomes tiny;
    - ``"sign+exponent"``: both;
    - an integer: that raw mask (bit ``i`` = ``1 << i``), for float32 in ``[1, 2^32)``.

    The same bit positions (sign = top bit, exponent MSB = next bit) are used for float16,
    bfloat16 and float64. No reference code fixes the defaults (fraction 0.1, top exponent bit);
    they are this library's choice.
    """

    name = "bit_flip"
    needs_own_gradients = True

    def __init__(self, fraction: float = 0.1, bits: Literal["sign", "exponent", "sign+exponent"] | int = "exponent"):
        fraction = positive_float(fraction, "fraction")
        if fraction > 1:
            raise ConfigError(f"attack.fraction must be in [0, 1], got {fraction!r}")
        bit_mask(bits, 32)  # validate now, before training
        self.fraction = fraction
        self.bits = bits

    def forge(self, ctx: AttackContext) -> Tensor:
        own = own_gradients(ctx, self.name)[: ctx.f]
        k, d = own.shape
        m = int(round(self.fraction * d))
        if k == 0 or m == 0:
            return own.clone()
        g = ctx.generator
        scores = torch.rand((k, d), generator=g, device=g.device)
        chosen = scores.topk(m, dim=1).indices.to(own.device)
        mask = torch.zeros((k, d), dtype=torch.bool, device=own.device)
        mask.scatter_(1, chosen, True)
        return flip_bits(own, mask, self.bits)

    def __repr__(self) -> str:
        return f"BitFlipAttack(fraction={self.fraction}, bits={self.bits!r})"
