"""Record ByzFL 0.0.11's outputs of some aggregation rules on fixed inputs, for byzlearn's agreement tests.

Runs under the ByzFL side environment (``benchmarks/byzfl_env.sh`` creates ``/work/byzfl-venv``); it
does NOT import byzlearn. ByzFL is imported through ``byzfl_side.import_byzfl`` (a stub
``torchvision`` is put in ``sys.modules`` first; see that module's docstring). Usage::

    bash benchmarks/byzfl_env.sh                                   # once
    /work/byzfl-venv/bin/python benchmarks/record_byzfl_rules.py   # every rule below
    /work/byzfl-venv/bin/python benchmarks/record_byzfl_rules.py --rules meamed

It rewrites ``tests/data/byzfl_rules.json`` (``--out``), replacing the entries of the rules it
records and keeping the others: ``{"recorded_with": {...}, "<rule>": [case, ...], ...}``. A case is
``{"seed", "n", "d", "shift", <the rule's parameters>, "checksum", "output"}``: the input batch is
:func:`make_batch` ``(seed, n, d, shift)`` (pure Python ``random.Random(seed).random()``, whose
sequence Python guarantees across versions, so byzlearn's tests rebuild the same float64 batch and
check ``checksum`` = its exact sum before comparing); ``output`` is ByzFL's result as a list of
floats (exact float64 ``repr``). Inputs are random doubles, so no two rows tie in distance and no
two values tie around a median (ByzFL's ``argpartition`` order among ties is unspecified).

Adding a rule: write ``record_<rule>(byzfl) -> list[dict]`` next to the others (cases built with
:func:`case`) and add it to ``RECORDERS``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "tests" / "data" / "byzfl_rules.json"
SHAPES = [(n, d) for n in (5, 10, 13) for d in (1, 7, 100)]


def make_batch(seed: int, n: int, d: int, shift: int = 0) -> list[list[float]]:
    """``n`` rows of ``d`` doubles uniform in [-1, 1) from ``random.Random(seed)`` (row-major); the
    first ``shift`` rows get ``+3`` on every coordinate (a cluster of outliers), so that the
    rules' selections are not trivial."""
    rng = random.Random(seed)
    rows = [[2.0 * rng.random() - 1.0 for _ in range(d)] for _ in range(n)]
    for i in range(shift):
        rows[i] = [x + 3.0 for x in rows[i]]
    return rows


def checksum(rows: list[list[float]]) -> float:
    return float(sum(sum(r) for r in rows))


def case(seed: int, n: int, d: int, shift: int, output, **params) -> dict:
    """One recorded case: the input's recipe and checksum, the rule's parameters, ByzFL's output."""
    rows = make_batch(seed, n, d, shift)
    return {"seed": seed, "n": n, "d": d, "shift": shift, **params, "checksum": checksum(rows), "output": [float(x) for x in output]}


# ------------------------------------------------------------------------------------------- rules
def record_monna(byzfl) -> list[dict]:
    """ByzFL ``MoNNA(f, idx)`` on numpy float64 batches: several f (including 0) and idx (an outlier row too)."""
    import numpy as np

    out = []
    for k, (n, d) in enumerate(SHAPES):
        for j, (f, idx) in enumerate([(0, 0), ((n - 1) // 2, n - 1), (n // 3, 1), (1, n // 2)]):
            seed, shift = 1000 + 10 * k + j, min(f, 2)
            X = np.array(make_batch(seed, n, d, shift), dtype=np.float64)
            out.append(case(seed, n, d, shift, byzfl.MoNNA(f=f, idx=idx)(X), f=f, idx=idx))
    return out


def record_meamed(byzfl) -> list[dict]:
    """ByzFL ``Meamed(f)`` on numpy float64 batches (numpy median: the mean of the middle pair for even n)."""
    import numpy as np

    out = []
    for k, (n, d) in enumerate(SHAPES):
        for j, f in enumerate(sorted({0, 1, n // 4, (n - 1) // 2})):
            seed, shift = 2000 + 10 * k + j, min(f, 2)
            X = np.array(make_batch(seed, n, d, shift), dtype=np.float64)
            out.append(case(seed, n, d, shift, byzfl.Meamed(f=f)(X), f=f))
    return out


def _spectral_cases(byzfl, rule: str, fs, base_seed: int) -> list[dict]:
    """ByzFL ``CAF(f)`` / ``SMEA(f)``: at ``d = 1`` on numpy float64 batches (its power step from
    ``v0 = +-1`` is then exact, so no seed matters); at ``d > 1`` on torch float32 batches right after
    ``torch.manual_seed(torch_seed)`` (ByzFL draws ``torch.randn(d)`` from torch's global generator,
    which byzlearn's ``power="byzfl"`` reproduces with a generator seeded alike)."""
    import numpy as np
    import torch

    cls = {"caf": byzfl.CAF, "smea": byzfl.SMEA}[rule]
    out = []
    for k, (n, d) in enumerate(SHAPES):
        for j, f in enumerate(sorted(set(fs(n)))):
            seed, shift = base_seed + 10 * k + j, min(f, 2)
            rows = make_batch(seed, n, d, shift)
            if d == 1:
                result = cls(f=f)(np.array(rows, dtype=np.float64))
                out.append(case(seed, n, d, shift, result, f=f, input="numpy-float64"))
            else:
                torch.manual_seed(seed)
                result = cls(f=f)(torch.tensor(rows, dtype=torch.float32))
                out.append(case(seed, n, d, shift, result.double().tolist(), f=f, input="torch-float32", torch_seed=seed))
    return out


def record_caf(byzfl) -> list[dict]:
    """ByzFL ``CAF(f)`` (f >= 1: for f = 0 it returns None); see :func:`_spectral_cases`."""
    return _spectral_cases(byzfl, "caf", lambda n: [1, n // 4, (n - 1) // 2], 3000)


def record_smea(byzfl) -> list[dict]:
    """ByzFL ``SMEA(f)``, f = 0 included; see :func:`_spectral_cases`."""
    return _spectral_cases(byzfl, "smea", lambda n: [0, 1, n // 4, (n - 1) // 2], 4000)


RECORDERS = {"monna": record_monna, "meamed": record_meamed, "caf": record_caf, "smea": record_smea}


def dump(doc: dict) -> str:
    """JSON with one case per line (compact, diff-friendly); floats as exact ``repr``."""
    parts = []
    for key, value in doc.items():
        if isinstance(value, list):
            body = ",\n".join("  " + json.dumps(c) for c in value)
            parts.append(f" {json.dumps(key)}: [\n{body}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", nargs="+", choices=sorted(RECORDERS), default=sorted(RECORDERS))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE))
    import byzfl_side  # noqa: E402  (sets thread counts, installs the torchvision stub on import_byzfl)

    byzfl, _, _, version = byzfl_side.import_byzfl()
    if version != byzfl_side.BYZFL_VERSION_EXPECTED:
        raise SystemExit(f"expected byzfl {byzfl_side.BYZFL_VERSION_EXPECTED}, found {version}")
    import numpy as np

    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc["recorded_with"] = {
        "byzfl": version,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "script": "benchmarks/record_byzfl_rules.py",
    }
    for rule in args.rules:
        doc[rule] = RECORDERS[rule](byzfl)
        print(f"{rule}: {len(doc[rule])} cases")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(dump(doc))
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
