"""DRACO's cyclic code: DFT-based encoding, syndrome decoding with an error-locator polynomial.

Construction (Chen, Wang, Charles, Papailiopoulos, ICML 2018; notation of specs/draco.md):
``n`` workers, ``n`` partitions, ``s`` adversaries, ``r = 2s + 1``, ``k = n - 2s``.

- ``C[p, q] = exp(-2 pi i p q / n) / sqrt(n)`` (unitary DFT), ``C1 = C[:, :k]``, ``C2 = C[:, k:]``;
  ``C2^H C1 = 0``.
- ``Q in C^{k x n}``: ``Q[0, j] = 1``; for partition ``j`` let ``Z_j`` be the ``k - 1`` workers that do
  not hold it and solve ``C1[Z_j, 1:] q_j = -C1[Z_j, 0]``; ``Q[1:, j] = q_j``.
- Encoding matrix ``W = C1 Q`` (``n x n``): ``W[i, j] = 0`` whenever worker ``i`` does not hold
  partition ``j`` (cyclic window ``i .. i+2s mod n``), so worker ``i`` can send
  ``r_i = sum_j W[i, j] g_j`` from its own ``r`` partition gradients. Honest messages ``R = W G``
  lie in ``span(C1)``; ``1^T Q = e_1^T``-style identity: ``v^T C1[H] = e_1^T`` gives ``v^T R_H = 1^T G``.

Decoding (server), for messages ``R = W G + E`` with at most ``s`` nonzero error rows:

1. random projections ``f ~ N(1, 1)^d`` (two of them, drawn once): ``e = R f`` (``O(n d)``); a
   message whose projection is not finite has a non-finite entry and is erased;
2. syndromes ``sigma = C2^H e`` (``2s`` values per projection; they depend on the errors only);
3. smallest ``t`` (``0..s``) for which the Hankel systems ``sigma_{m+t} = sum_l a_l sigma_{m+l}`` of
   both projections have a common solution: the locator ``P(z) = z^t - sum_l a_l z^l`` vanishes at
   ``omega_p = exp(2 pi i p / n)`` for the erroneous workers ``p``; the ``t`` workers with the
   smallest ``|P(omega_q)|`` are the errors, accepted only if ``sigma`` is explained by errors at
   exactly those workers (least-squares residual below ``tol``) for both projections;
4. the other workers ``H`` (``|H| >= k``): the minimum-norm solution of ``C1[H, :]^T v = e_1`` (a
   ``k x k`` Hermitian solve; with all ``n`` rows ``v = 1/sqrt(n)``; the paper's code uses the first
   ``k`` rows only, which is worse conditioned: 1e-6 instead of 1e-12 relative error at n=45, s=10)
   and output ``Re(v^T R_H) = sum_j g_j`` (``O(n d)``).

``correct`` (default ``s``) is the most errors the decoder corrects. The code's distance is
``2s + 1``, so any error pattern of ``w`` messages with ``correct < w <= 2s - correct`` is
DETECTED whatever its values (``correct = 0``: pure detection of up to ``2s`` errors). With
``correct = s``, patterns of ``s < w <= 2s`` errors are detected unless the adversaries make their
errors look like at most ``s`` errors in both random projections (e.g. ``w >= n - s`` workers
sending the same vector, which is itself a codeword); generic errors are always caught. The
decoder then returns status ``detected`` instead of a wrong sum. Messages with
non-finite entries are erased (set to zero and counted as errors). All arithmetic is
complex128/float64; a message is sent as the float64 vector ``[Re r_i, Im r_i]`` of length ``2d``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .assignment import check_code, cyclic_support, redundancy
from .status import CORRECTED, DETECTED, OK, DecodeStatus


class CyclicCode:
    """The matrices of DRACO's cyclic code for ``n`` workers and ``s`` adversaries (built once)."""

    def __init__(self, n: int, s: int, tol: float = 1e-9, correct: int | None = None):
        problem = check_code(n, s)
        if problem:
            raise ValueError(f"cyclic code needs {problem}")
        self.n, self.s, self.r, self.k = n, s, redundancy(s), n - 2 * s
        self.tol = tol
        self.correct = s if correct is None else correct
        if not 0 <= self.correct <= s:
            raise ValueError(f"cyclic code: correct must be in [0, s={s}], got {correct}")
        k = self.k
        p = torch.arange(n, dtype=torch.float64)
        ang = -2 * math.pi * torch.outer(p, p) / n
        C = torch.polar(torch.full_like(ang, 1 / math.sqrt(n)), ang)  # complex128
        self.C1, self.C2 = C[:, :k], C[:, k:]
        self.C2H = self.C2.conj().T.contiguous()  # [2s, n]
        self.support = cyclic_support(n, s)
        Q = torch.zeros(k, n, dtype=torch.complex128)
        Q[0] = 1
        if k > 1:
            for j in range(n):
                Z = (~self.support[:, j]).nonzero().squeeze(1)
                Q[1:, j] = torch.linalg.solve(self.C1[Z][:, 1:], -self.C1[Z][:, 0])
        W = self.C1 @ Q
        W[~self.support] = 0  # exact zeros (they are ~1e-16 after the product)
        self.W = W
        self.omega = torch.polar(torch.ones(n, dtype=torch.float64), 2 * math.pi * p / n)
        # per-worker weights over its window, ordered like assignment.assignment("cyclic")
        self.window = [self.support[i].nonzero().squeeze(1) for i in range(n)]
        self.window_weights = torch.stack([W[i, self.window[i]] for i in range(n)])  # [n, r]

    # -- workers ---------------------------------------------------------------------------------
    def encode(self, G: Tensor) -> Tensor:
        """Honest messages ``Tensor[n, 2d]`` (float64, ``[Re, Im]``) from the partition gradients ``G: Tensor[n, d]``."""
        G = G.to(torch.float64)
        W = self.W.to(G.device)
        return torch.cat([W.real @ G, W.imag @ G], dim=1)

    def encode_windows(self, copies: Tensor) -> Tensor:
        """Messages from each worker's own gradients ``copies: Tensor[n, r, d]`` (its window, in order)."""
        copies = copies.to(torch.float64)
        w = self.window_weights.to(copies.device)
        return torch.cat([torch.einsum("ir,ird->id", w.real, copies), torch.einsum("ir,ird->id", w.imag, copies)], dim=1)

    # -- server ----------------------------------------------------------------------------------
    def _explains(self, sig: Tensor, where: Tensor, bound: float) -> bool:
        """Whether the syndromes ``sig: [2s, p]`` are those of errors at workers ``where`` only."""
        if where.numel() == 0:
            return bool(sig.abs().amax() <= bound)
        A = self.C2H[:, where]  # [2s, t], full column rank for t <= 2s
        X = torch.linalg.lstsq(A, sig).solution
        return bool((A @ X - sig).abs().amax() <= bound)

    def locate(self, sig: Tensor, bound: float, erased: Tensor) -> Tensor | None:
        """Erroneous workers (a LongTensor) from the syndromes ``sig: [2s, p]``, or ``None`` if more than ``s``."""
        s = self.s
        if erased.numel() > self.correct:
            return None
        if self._explains(sig, erased, bound):
            return erased
        for t in range(1, self.correct + 1):
            # rows m = 0..2s-t-1 of the Hankel systems of every projection: [sigma_{m..m+t}] a' = 0
            rows = torch.cat([torch.stack([sig[m : m + t + 1, a] for m in range(2 * s - t)]) for a in range(sig.shape[1])])
            coef = torch.linalg.svd(rows).Vh[-1].conj()  # kernel vector: locator coefficients, degree t
            P = (coef.unsqueeze(0) * self.omega.unsqueeze(1) ** torch.arange(t + 1)).sum(1)  # P(omega_q)
            score = P.abs()
            score[erased] = -1.0  # erased messages are errors for sure
            where = score.argsort()[: max(t, erased.numel())].sort().values
            if where.numel() <= self.correct and self._explains(sig, where, bound):
                return where
        return None

    def _projections(self, d: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """The two projection vectors ``f ~ N(1, 1)^d`` (``Tensor[d, 2]`` float64), drawn once per ``d``
        from ``generator`` and kept (the server's secret; the DRACO code also draws them once)."""
        F = getattr(self, "_F", None)
        if F is None or F.shape[0] != d or F.device != device:
            dev = generator.device if generator is not None else torch.device("cpu")
            F = (torch.randn(d, 2, generator=generator, dtype=torch.float64, device=dev) + 1).to(device)
            self._F = F
        return F

    def decode(self, M: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, DecodeStatus, Tensor]:
        """Sum of the partition gradients ``Tensor[d]`` (float64) from the messages ``M: Tensor[n, 2d]``.

        Returns ``(total, status, errors)``; ``errors`` are the located workers. With status
        ``detected`` the total is zeros and must not be used.
        """
        n, s, k = self.n, self.s, self.k
        if M.dim() != 2 or M.shape[0] != n or M.shape[1] % 2:
            raise ValueError(f"cyclic decode: expected messages Tensor[{n}, 2d], got {tuple(M.shape)}")
        d = M.shape[1] // 2
        M = M.to(torch.float64)
        Re, Im = M[:, :d], M[:, d:]
        F = self._projections(d, generator, M.device)
        E = torch.complex(Re @ F, Im @ F).cpu()  # [n, 2]: e = R f for two projections, one pass over M
        # a message with a non-finite entry has a non-finite projection: erase it (known error location)
        finite = torch.isfinite(E).all(dim=1)
        erased = (~finite).nonzero().squeeze(1)
        if erased.numel():
            E[erased] = 0
        if s > 0:
            sig = self.C2H @ E  # [2s, 2]
            bound = self.tol * max(float(E.abs().amax()), torch.finfo(torch.float64).tiny)
            errors = self.locate(sig, bound, erased)
        else:
            errors = erased if erased.numel() == 0 else None
        if errors is None:
            return torch.zeros(d, dtype=torch.float64, device=M.device), DecodeStatus(DETECTED, 0), erased
        keep = torch.ones(n, dtype=torch.bool)
        keep[errors] = False
        H = keep.nonzero().squeeze(1)  # >= n - s >= k rows: min-norm v over all of them (better conditioned than k rows)
        A = self.C1[H].T  # [k, |H|]
        e1 = torch.zeros(k, dtype=torch.complex128)
        e1[0] = 1
        v = A.conj().T @ torch.linalg.solve(A @ A.conj().T, e1)
        if erased.numel():  # 0 * NaN is NaN: leave the erased rows out of the product
            Hd = H.to(M.device)
            v = v.to(M.device)
            total = v.real @ Re.index_select(0, Hd) - v.imag @ Im.index_select(0, Hd)
        else:
            u = torch.zeros(n, dtype=torch.complex128)
            u[H] = v
            u = u.to(M.device)
            total = u.real @ Re - u.imag @ Im
        status = CORRECTED if errors.numel() else OK
        return total, DecodeStatus(status, int(errors.numel())), errors
