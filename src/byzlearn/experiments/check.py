"""``byzlearn reproduce NAME --check``: re-run a reproduction and compare it with its committed ``results.json``.

Rows are matched by ``method`` and ``setting``. A row is exact unless it carries ``"check": "spread"``
(a learned aggregator's chaotic run, see ``numerics``): an exact row's final and best test accuracy
must equal the committed ones; a spread row is judged per (method, setting without its seed): the
re-run's mean final accuracy over the seeds must lie within the committed seeds' [min, max] widened by
``margin`` (accuracy points) on each side. A row present on one side only is a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARGIN = 1.0  # accuracy points beyond the committed seeds' range that a spread row may fall
EXACT_FIELDS = ("final_test_accuracy", "best_test_accuracy")


def _key(row: dict[str, Any], drop_seed: bool) -> str:
    setting = {k: v for k, v in row["setting"].items() if not (drop_seed and k == "seed")}
    return json.dumps([row["method"], setting], sort_keys=True)


def _label(key: str) -> str:
    method, setting = json.loads(key)
    wanted = ("byzantine", "attack", "model", "data", "system", "s", "workers", "seed")
    parts = [f"{k}={setting[k]}" for k in wanted if k in setting]
    return f"{method} ({', '.join(parts)})" if parts else method


def compare(committed: list[dict[str, Any]], fresh: list[dict[str, Any]], margin: float = MARGIN) -> tuple[list[str], int]:
    """Lines of the comparison and the number of mismatches."""
    old = {_key(r, False): r for r in committed}
    new = {_key(r, False): r for r in fresh}
    lines, bad = [], 0
    for k in sorted(set(old) ^ set(new)):
        bad += 1
        lines.append(f"MISMATCH {_label(k)}: only in the {'committed results' if k in old else 're-run'}")
    exact = [k for k in old if k in new and old[k].get("check") != "spread"]
    same = 0
    for k in exact:
        diffs = [f"{f} {old[k][f]} -> {new[k].get(f)}" for f in EXACT_FIELDS if f in old[k] and old[k][f] != new[k].get(f)]
        if diffs:
            bad += 1
            lines.append(f"MISMATCH {_label(k)}: " + "; ".join(diffs))
        else:
            same += 1
    lines.append(f"exact rows: {same} of {len(exact)} identical")
    groups: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for k in old:
        if k in new and old[k].get("check") == "spread":
            g = groups.setdefault(_key(old[k], True), ([], []))
            g[0].append(old[k])
            g[1].append(new[k])
    inside = 0
    for g, (o, n) in groups.items():
        lo = min(r["final_test_accuracy"] for r in o) * 100
        hi = max(r["final_test_accuracy"] for r in o) * 100
        mean = sum(r["final_test_accuracy"] for r in n) * 100 / len(n)
        bits = sum(a["final_test_accuracy"] == b["final_test_accuracy"] and a.get("curve") == b.get("curve") for a, b in zip(o, n))
        ok = lo - margin <= mean <= hi + margin
        inside += ok
        bad += not ok
        lines.append(
            f"{'ok      ' if ok else 'MISMATCH'} {_label(g)}: re-run mean {mean:.2f}% against the committed "
            f"{len(o)} seeds' range {lo:.2f}-{hi:.2f}% (+-{margin:g}); {bits} of {len(o)} seeds bit-identical"
        )
    lines.append(f"spread rows: {inside} of {len(groups)} within the committed range +- {margin:g} points")
    return lines, bad


def numerics_line(committed_dir: Path, fresh_dir: Path) -> str:
    """Whether this machine computed the numerics probe as the committing machine did."""
    try:
        old = json.loads((committed_dir / "numerics.json").read_text())
        new = json.loads((fresh_dir / "numerics.json").read_text())
    except (OSError, ValueError):
        return "numerics: the committed results record no numerics probe (made before the portable kernels)"
    same = old.get("fingerprint") == new.get("fingerprint")
    return (
        f"numerics: probe {new.get('fingerprint')} here, {old.get('fingerprint')} on the committing machine "
        f"({'alike: exact rows and seeds should match bit for bit' if same else 'unlike: only the spread rows can be expected to hold'})"
    )
