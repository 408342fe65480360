"""Portable floating point for the reproductions: the same CPU code paths on every x86_64 machine.

A learned aggregator's run is chaotic: a last-bit difference in one round grows into points of
accuracy by round 500 (measured on ``l2a-fig7``'s set-RNN, seed 0, one machine: 91.22% as the
libraries choose, 89.86% with oneMKL's conditional-numerical-reproducibility AUTO branch, 86.55%
with its COMPATIBLE branch, 46.52% with ATen's portable kernels instead of AVX2). Two
libraries pick their kernels by the CPU they find:

- ATen's vectorised kernels (``tanh``, ``sigmoid``, ``exp``, reductions) by the instruction set:
  ``ATEN_CPU_CAPABILITY`` pins them (``avx2`` here: every x86_64 CPU of the last decade has it);
- oneMKL's GEMM (every ``Linear`` and LSTM cell on the CPU) by CPU and vendor:
  ``MKL_CBWR=COMPATIBLE`` is its one branch documented to give the same results on Intel and
  non-Intel CPUs (the AVX2 branch is Intel-only; AMD CPUs fall back to AUTO);
- oneDNN (convolutions) by the instruction set: ``ONEDNN_MAX_CPU_ISA=AVX2``.

Thread counts change how reductions split, so a reproduction runs at ``THREADS`` threads unless
it sets its own count (most use one per run). Both libraries read these variables at their first
kernel, so :func:`pin` must run before any tensor operation of the process; it says when it came
too late. :func:`fingerprint` hashes a probe that goes through each of these paths, so two machines
can tell whether they compute alike before their runs are compared. Measured cost: about 10% on
the set-RNN run above. ``BYZLEARN_NATIVE_NUMERICS=1`` leaves the libraries' own choice.
"""

from __future__ import annotations

import hashlib
import os
import platform
from typing import Any

PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}
THREADS = 2
# The probe's hash under the portable kernels (measured on an AMD EPYC with AVX2; the claim is that every
# x86_64 machine with AVX2 gives it): a pinned process that hashes otherwise does not compute alike.
PORTABLE_FINGERPRINT = "2fd5eb3a07d2cc7a"


def pin() -> dict[str, Any]:
    """Set the portable kernels for this process (before its first tensor operation); what was set."""
    import torch

    native = os.environ.get("BYZLEARN_NATIVE_NUMERICS", "") not in ("", "0")
    if not native and platform.machine() in ("x86_64", "AMD64"):
        os.environ.update(PORTABLE)
    torch.set_num_threads(THREADS)
    capability = torch.backends.cpu.get_cpu_capability()
    probe = fingerprint()
    portable = probe == PORTABLE_FINGERPRINT
    return {
        "portable": portable,
        "fingerprint": probe,
        "settings": {k: os.environ.get(k) for k in PORTABLE},
        "threads": THREADS,
        "cpu_capability": capability,
        **({} if portable else {"why_not": _why_not(native, capability)}),
    }


def _why_not(native: bool, capability: str) -> str:
    if native:
        return "BYZLEARN_NATIVE_NUMERICS is set"
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"{platform.machine()} has other kernels than x86_64: its numbers differ in the last bits"
    if capability.lower() != PORTABLE["ATEN_CPU_CAPABILITY"]:
        return f"ATen runs its {capability} kernels (the CPU lacks AVX2, or tensor operations ran before the pin)"
    return "the probe hashes otherwise: tensor operations ran before the pin (start a fresh process), or another oneMKL"


def fingerprint() -> str:
    """A hash of a fixed probe through GEMM, an LSTM cell, the vectorised activations and a long reduction."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(257, 129, generator=g), torch.randn(129, 65, generator=g)
    x = torch.randn(1 << 17, generator=g)
    cell = torch.nn.LSTMCell(7, 20)
    with torch.no_grad():
        for p in cell.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        h, c = cell(torch.randn(3001, 7, generator=g))
    parts = [a @ b, h, c, torch.tanh(x), torch.sigmoid(x), torch.exp(x.clamp(max=20)), x.sum().reshape(1), x.norm().reshape(1)]
    digest = hashlib.sha256()
    for t in parts:
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
