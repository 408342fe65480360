"""The honest workers' computation, the pluggable phase of the round: a gradient, a momentum, or K local steps.

- D-SGD (``train.algorithm = "dsgd"``) with ``workers.momentum = 0``: a worker sends its stochastic
  gradient (the classic synchronous protocol).
- D-SGD with worker momentum ``beta > 0`` (Karimireddy, He & Jaggi, ICML 2021; Farhadkhani et al., ICML
  2022; ByzFL's ``DSGD``): every worker keeps a momentum of its own gradients and sends it.
  ``workers.momentum_form = "ema"`` (ByzFL ``Client``): ``m <- beta m + (1 - beta) g`` from ``m = 0``;
  ``"sum"`` (the reference code of Karimireddy et al., ``WorkerWithMomentum``): ``m <- beta m + g`` with
  ``m_0 = g``, which is the same recursion from ``m = 0``. With g = 1, 1, 1 and beta = 0.9: ema 0.1, 0.19,
  0.271; sum 1, 1.9, 2.71. One ``[n, d]`` buffer holds every worker's momentum (checkpointed); a worker's
  row changes only in rounds in which it computes its honest message.
- Robust FedAvg (``train.algorithm = "fedavg"``, ByzFL's ``FedAvg``, Blades, Flower): a sampled client
  runs K local SGD steps from the global model and sends ``w_start - w_end`` (``fedavg.aggregate =
  "update"``, the pseudo-gradient of FedOpt, Reddi et al., ICLR 2021) or ``w_end`` (``"weights"``).
  ``local_sgd`` runs every sampled client's K steps batched: one ``vmap`` pass over the clients'
  parameter batch per local step.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..config import Config


class Momentum:
    """Every worker's momentum, ``Tensor[n, d]`` (allocated at the first update), and its recursion."""

    def __init__(self, n: int, d: int, beta: float, form: str):
        self.n, self.d, self.beta, self.form = n, d, float(beta), form
        self.buffer: Tensor | None = None

    def _buf(self, like: Tensor) -> Tensor:
        if self.buffer is None:
            self.buffer = like.new_zeros(self.n, self.d)
        return self.buffer

    def step(self, G: Tensor, workers: Tensor) -> Tensor:
        """The new momenta of ``workers`` (sorted, distinct ids; rows of ``G`` are their gradients), stored
        and returned as a tensor of their own (pre-aggregators may overwrite the round's messages).

        When every worker computes, the update runs in place on the buffer and its copy is written over
        ``G`` (no allocation per round); otherwise the rows are gathered, updated and scattered back."""
        buf = self._buf(G)
        G = G.to(buf.dtype)
        alpha = 1.0 - self.beta if self.form == "ema" else 1.0
        if workers.numel() == self.n:  # every worker, in order: in place, no gather
            buf.mul_(self.beta).add_(G, alpha=alpha)
            return G.copy_(buf)
        workers = workers.to(buf.device)
        m = buf.index_select(0, workers).mul_(self.beta)
        m.add_(G, alpha=alpha)
        buf.index_copy_(0, workers, m)
        return m

    def observe(self, rows: Tensor, workers: Tensor) -> None:
        """Record messages received from honest ``workers`` (the distributed server keeps the buffer in step)."""
        if workers.numel():
            self._buf(rows).index_copy_(0, workers.to(self._buf(rows).device), rows.to(self._buf(rows).dtype))

    def row(self, w: int) -> Tensor | None:
        return None if self.buffer is None else self.buffer[w]

    def set_row(self, w: int, value: Tensor) -> None:
        self._buf(value)[w] = value.to(self._buf(value).dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": None if self.buffer is None else self.buffer.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        buf = state.get("buffer")
        self.buffer = None if buf is None else buf.to(device).clone()


def make_momentum(cfg: Config, d: int) -> Momentum | None:
    w = cfg.workers
    return Momentum(w.n, d, w.momentum, w.momentum_form) if w.momentum > 0 else None


def local_sgd(
    grads: Callable[[tuple[Tensor, ...], Tensor, Tensor], tuple[tuple[Tensor, ...], Tensor]],
    params: tuple[Tensor, ...],
    x: Tensor,
    y: Tensor,
    lr: float,
    weight_decay: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """K local SGD steps of k clients from the global model, batched: ``x: [K, k, B, ...]``, ``y: [K, k, B]``.

    ``params``: the global model's parameter tensors (one per layer); ``grads(P, x_s, y_s)`` is
    ``vmap(grad_and_value(loss))`` over the clients' parameter batches ``P`` (each ``[k, *shape]``), kept
    per layer across the K steps (contiguous, which ``bmm`` runs fastest on), flattened once at the end. Each step is ``torch.optim.SGD(lr,
    weight_decay)`` without momentum (ByzFL's local optimiser): ``w <- w - lr (g + weight_decay w)``.
    Returns the final weights as one flat batch ``[k, d]`` and the clients' losses at the global model
    (their first step), ``[k]``.
    """
    K, k = y.shape[0], y.shape[1]
    P = tuple(p.detach().unsqueeze(0).expand(k, *p.shape).clone() for p in params)  # contiguous per layer (bmm)
    first = None
    for s in range(K):  # a loop over local steps; the clients are the batch (and over the few layers)
        g, loss = grads(P, x[s], y[s])
        if first is None:
            first = loss
        for p, gp in zip(P, g):
            if weight_decay:
                gp = gp.add(p, alpha=weight_decay)
            p.sub_(gp, alpha=lr)
    assert first is not None
    return torch.cat([p.reshape(k, -1) for p in P], dim=1), first


def client_count(cfg: Config) -> int:
    """Clients sampled per FedAvg round: ``max(1, int(fraction * n))`` (ByzFL takes ``int(fraction * h)``)."""
    return max(1, int(cfg.fedavg.fraction * cfg.workers.n))
