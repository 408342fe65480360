"""Byzantine peers in averaging agreement: what each Byzantine node sends to each honest node.

A behaviour returns a :class:`Forged`: ``values: Tensor[f, V, d]`` (up to V distinct vectors per
Byzantine node) and ``assign: LongTensor[f, h]`` (which of its values Byzantine node b sends honest
node j; -1 = nothing). Vectors are referenced by index, so an equivocating node sending h different
messages costs no h copies of a d-vector.

Behaviours (``Adversary(kind, **params)``):

- ``"silent"``: never sends anything.
- ``"equivocate"``: splits the honest nodes along their principal direction ``u`` (the top
  eigenvector of the centred honest vectors): nodes on the + side receive
  ``mean + scale * (x_+ - mean)`` and nodes on the - side ``mean + scale * (x_- - mean)``, where
  ``x_+``/``x_-`` are the honest vectors furthest along ``+u``/``-u``. ``scale = 1`` stays inside the
  honest cloud (invisible to distance filters), larger values push outside it.
- ``"constant"``: ``vector`` (a list of numbers, or a scalar repeated) to everybody.
- any name of the catalogue ``byzlearn.attacks.ATTACKS`` (``alie``, ``ipm``, ``sign_flip``,
  ``gaussian``, ``nan``, ...): the attack's ``forge`` on the honest vectors of the round, the same
  rows to every honest node (``own`` = the honest mean for attacks that want their own vector;
  data-level attacks (label flipping) are refused here, they need data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..attacks import ATTACKS, AttackContext
from ..engine.round import forge
from ..registry import ConfigError

BEHAVIOURS = ("silent", "equivocate", "constant")


@dataclass
class Forged:
    values: Tensor  # [f, V, d]
    assign: Tensor  # LongTensor [f, h]


def upper_side(proj: Tensor) -> Tensor:
    """Bool ``[h]``: the nodes above the midrange of the projections (the + side of the split)."""
    mid = 0.5 * (proj.max() + proj.min())
    return proj > mid


def principal_projection(Z: Tensor) -> Tensor:
    """Projections ``<z_j - mean, u>`` of the rows on their top principal direction (``[h]``; zeros if all equal)."""
    Zc = Z - Z.mean(dim=0, keepdim=True)
    K = Zc @ Zc.T
    if not bool(torch.isfinite(K).all()) or float(K.abs().max()) == 0.0:
        return torch.zeros(Z.shape[0], dtype=Z.dtype)
    w, vecs = torch.linalg.eigh(K.double())
    # u = Zc^T e / sqrt(w): the projections Zc u = K e / sqrt(w) = sqrt(w) e
    return (vecs[:, -1] * torch.sqrt(torch.clamp(w[-1], min=0.0))).to(Z.dtype)


class Adversary:
    """One Byzantine behaviour (see the module docstring)."""

    def __init__(self, kind: str = "silent", **params: Any):
        self.kind = kind
        self.params = params
        self.attack = None
        if kind == "equivocate":
            unknown = set(params) - {"scale"}
            if unknown:
                raise ConfigError(f"adversary 'equivocate' has the key scale only, got {sorted(unknown)}")
            self.scale = float(params.get("scale", 1.0))
        elif kind == "constant":
            if set(params) - {"vector"}:
                raise ConfigError("adversary 'constant' has the key vector only")
            self.vector = params.get("vector", 0.0)
        elif kind == "silent":
            if params:
                raise ConfigError("adversary 'silent' has no keys")
        else:
            if kind not in ATTACKS:
                raise ConfigError(
                    f"unknown Byzantine behaviour {kind!r}; known: {', '.join(BEHAVIOURS)} and the attacks {', '.join(ATTACKS.names())}"
                )
            self.attack = ATTACKS.build(kind, dict(params), "attack")
            if getattr(self.attack, "poisons_data", False):
                raise ConfigError(f"attack {kind!r} poisons data; averaging agreement sees vectors only")

    @property
    def equivocates(self) -> bool:
        return self.kind == "equivocate"

    def __repr__(self) -> str:
        return f"Adversary({self.kind!r}, {self.params})"

    def forge(self, Z: Tensor, n: int, f: int, round: int, generator: torch.Generator, proj: Tensor | None = None) -> Forged:
        """What the ``f`` Byzantine nodes send the ``h = Z.shape[0]`` honest nodes this round."""
        h, d = Z.shape
        if f == 0 or self.kind == "silent":
            return Forged(Z.new_zeros(f, 0, d), torch.full((f, h), -1, dtype=torch.long))
        if self.kind == "equivocate":
            p = principal_projection(Z) if proj is None else proj
            mean = Z.mean(dim=0)
            hi, lo = Z[int(p.argmax())], Z[int(p.argmin())]
            vals = torch.stack([mean + self.scale * (hi - mean), mean + self.scale * (lo - mean)])
            side = (~upper_side(p)).long()  # 0: + side (gets the + value), 1: - side
            return Forged(vals.unsqueeze(0).expand(f, 2, d), side.unsqueeze(0).expand(f, h).clone())
        if self.kind == "constant":
            v = torch.as_tensor(self.vector, dtype=Z.dtype)
            v = v.expand(d) if v.dim() == 0 else v
            if v.shape != (d,):
                raise ConfigError(f"adversary 'constant': vector has {v.numel()} entries, the vectors have {d}")
            return Forged(v.view(1, 1, d).expand(f, 1, d), torch.zeros(f, h, dtype=torch.long))
        assert self.attack is not None
        own = Z.mean(dim=0, keepdim=True).expand(f, d) if getattr(self.attack, "needs_own_gradients", False) else None
        ctx = AttackContext(n=n, f=f, round=round, honest=Z, own=own, params=Z.mean(dim=0), aggregator=None, generator=generator)
        try:
            rows = forge(self.attack, ctx, d)  # the attack contract, as in every engine
        except (AttributeError, TypeError) as e:  # adaptive attacks probe a server rule
            raise ConfigError(f"attack {self.kind!r} needs a server-side rule to probe; not available in averaging agreement ({e})") from e
        k = rows.shape[0]
        assign = torch.full((f, h), -1, dtype=torch.long)
        assign[:k] = 0
        vals = Z.new_zeros(f, 1, d)
        vals[:k, 0] = rows
        return Forged(vals, assign)
