"""The parameter-server protocol: tags, frame layouts and what a worker's message holds.

Per round ``r`` (``server.ServerEngine.step`` and ``worker.WorkerProcess``):

1. the server posts ``PARAMS(r, theta)`` to every live worker (tag ``PARAMS``; a worker still busy
   with an older round gets only the newest parameters: latest-wins sender);
2. worker ``i`` replays the shared random streams up to round ``r`` (its own minibatch, the round's
   Byzantine set), computes its message and sends ``GRAD(r, [message, loss, compute seconds])``
   (tag ``GRAD``); a DRACO worker's message is its code word (repetition: the group sum; cyclic: the
   float64 ``[Re, Im]`` encoding) followed, when a fallback rule is set, by its own partition gradient;
3. the Byzantine workers of the round agree on their rows through the collusion channel (tag
   ``COLLUDE``, ``collusion``) and send them as their ``GRAD``;
4. the server takes the first ``q`` messages of round ``r`` that arrive before the deadline, in
   worker order, and applies the rule (or decodes) and the optimiser; ``STOP`` ends the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .frames import Kind, Layout

TAG_PARAMS, TAG_GRAD, TAG_COLLUDE, TAG_PEER, TAG_REPORT = 1, 2, 3, 4, 5
TAG_STATE = 6  # server -> worker after a resume: the worker's momentum row (a PARAMS frame of length d)


@dataclass(frozen=True)
class MessageSpec:
    """Sizes of a worker's message: ``D`` values of code word (``d`` for a plain gradient), in ``dtype``."""

    d: int
    D: int
    dtype: torch.dtype
    fallback: bool = False  # DRACO with a fallback rule: the own partition gradient follows the code word

    @classmethod
    def of(cls, sim) -> "MessageSpec":
        cyclic = getattr(sim, "cyclic", None)
        if cyclic is not None:
            fb = sim.fallback_rule is not None
            return cls(sim.d, 2 * sim.d, torch.float64, fb)
        if hasattr(sim, "groups"):
            return cls(sim.d, sim.d, torch.float32, sim.fallback_rule is not None)
        return cls(sim.d, sim.d, torch.float32)

    @property
    def length(self) -> int:
        """Payload of GRAD/TAP/OWN/FORGED: code word, (own gradient), loss, compute seconds."""
        return self.D + (self.d if self.fallback else 0) + 2

    def params_layout(self) -> Layout:
        return Layout(torch.float32, {Kind.PARAMS: self.d, Kind.STOP: 0})

    def grad_layout(self) -> Layout:
        return Layout(self.dtype, {Kind.GRAD: self.length})

    def collude_layout(self) -> Layout:
        return Layout(self.dtype, {Kind.TAP: self.length, Kind.OWN: self.length, Kind.FORGED: self.length, Kind.DROP: 0})
