"""Fuzz byzlearn's command line with bad inputs: each must end in one ``byzlearn: error: ...`` line (exit 2)
before anything is written, or run normally.

Usage (from the repository root)::

    .venv/bin/python benchmarks/fuzz_cli.py                  # every case (~10 minutes on 2 cores)
    .venv/bin/python benchmarks/fuzz_cli.py --area resume -v # one area, every case's outcome
    .venv/bin/python benchmarks/fuzz_cli.py --list           # the cases, without running them

Every case runs ``byzlearn.cli.main(argv)`` in a forked child (torch and byzlearn are imported once) in a
scratch folder of its own, with ``BYZLEARN_DATA`` pointing to an empty folder and downloads off. Outcomes:

- **error**: exit 2, a line ``byzlearn: error: ...`` (or argparse's usage error) on stderr and no traceback,
  with no file in the scratch folder created or changed;
- **late**: such an error after a file was created or changed (a run folder, logs);
- **accepted**: exit 0 (for a case marked ``must fail``, e.g. ``optimizer.lr=nan``, it counts as *bad*);
- **traceback**: anything else (an exception escaping ``main``, another exit code, a crash, a hang).

The table gives cases, errors, accepted, bad accepted, late errors and tracebacks per area (target for the
last three: 0); the exit code is 1 when any of those is non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import shlex
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
try:
    import byzlearn  # noqa: F401
except ImportError:  # a checkout without the package installed
    sys.path.insert(0, str(ROOT / "src"))
from fuzz_cases import AREAS, Case, all_cases  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

TIMEOUT = 120.0  # seconds per case (an accepted case trains 2 rounds)
MEMORY = 6 << 30  # bytes of address space per case
PRELOAD = (
    "byzlearn.cli",
    "byzlearn.engine",
    "byzlearn.experiments.runner",
    "byzlearn.plots",
    "byzlearn.experiments.matrix",
    "byzlearn.experiments.tune",
    "byzlearn.experiments.demo",
    "byzlearn.distributed.launcher",
    "byzlearn.distributed.runtime",
    "byzlearn.learned.meta_train",
    "byzlearn.coding.simulator",
    "safetensors.torch",
    "matplotlib.pyplot",
)


class Outcome(NamedTuple):
    kind: str  # error | late | accepted | bad | traceback
    rc: int | None
    tail: str


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            is_dir = name in dirnames  # a folder's mtime changes when a file is made and removed again: not compared
            out[str(p.relative_to(root))] = (0, 0) if is_dir else (st.st_size, st.st_mtime_ns)
    return out


def _child(case: Case, work: Path) -> None:
    """Run the case in this (forked) process and end it with the exit code (99: an exception escaped)."""
    os.chdir(work)
    fd_out = os.open(work.parent / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    fd_err = os.open(work.parent / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd_out, 1)
    os.dup2(fd_err, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    from byzlearn.cli import main

    try:
        rc = main(list(case.argv))
    except SystemExit as e:  # argparse's usage errors
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - what the fuzzer looks for
        traceback.print_exc()
        rc = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc if isinstance(rc, int) else 1)


def _in_child(fn: Callable[[], None]) -> int:
    """Run ``fn`` in a forked child (the fuzzer's own process never computes with torch); its exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
            code = 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def run_case(case: Case, scratch: Path) -> Outcome:
    base = Path(tempfile.mkdtemp(prefix="case-", dir=scratch))
    work = base / "work"
    work.mkdir()
    (work / "nodata").mkdir()
    if case.setup is not None and _in_child(lambda: case.setup(work)) != 0:
        return Outcome("traceback", None, f"the case's set-up failed in {work}")
    before = _snapshot(work)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))  # a huge allocation fails instead of swapping the machine
            os.environ["BYZLEARN_DATA"] = str(work / "nodata")
            _child(case, work)
        finally:
            os._exit(98)
    end = time.monotonic() + TIMEOUT
    status = None
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return Outcome("traceback", None, f"hung for more than {TIMEOUT:.0f} s")
    rc = os.waitstatus_to_exitcode(status)
    err = (base / "stderr").read_text(errors="replace").strip()
    last = err.splitlines()[-1] if err else ""
    if rc == 0:
        bad = case.must_fail or (case.unchanged and _snapshot(work) != before)
        return Outcome("bad" if bad else "accepted", rc, last)
    lines = err.splitlines()
    said = [x for x in lines if x.startswith("byzlearn: error: ") or (x.startswith("byzlearn") and ": error: " in x)]
    clean = rc == 2 and bool(said) and "Traceback (most recent call last)" not in err
    last = said[0] if said else last
    if not clean:
        return Outcome("traceback", rc, err[-1500:])
    if _snapshot(work) != before:
        return Outcome("late", rc, last)
    return Outcome("error", rc, last)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--area", action="append", choices=AREAS, help="only these areas (repeatable)")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case's outcome")
    args = ap.parse_args()
    cases = [c for c in all_cases() if not args.area or c.area in args.area]
    for name in PRELOAD:  # imported once here, not in every case's child (nothing computes with torch in this process)
        importlib.import_module(name)
    __import__("byzlearn.experiments.reproduce", fromlist=["load_all"]).load_all()
    if args.list:
        for c in cases:
            print(f"{c.area:<14} {'must fail ' if c.must_fail else ''}{c.command()}")
        return 0
    counts: dict[str, dict[str, int]] = {}
    problems: list[tuple[Case, Outcome]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="byzlearn-fuzz-") as scratch:
        for i, case in enumerate(cases, 1):
            out = run_case(case, Path(scratch))
            row = counts.setdefault(case.area, {k: 0 for k in ("cases", "error", "accepted", "bad", "late", "traceback")})
            row["cases"] += 1
            row[out.kind] += 1
            if out.kind in ("bad", "late", "traceback"):
                problems.append((case, out))
            if args.verbose or out.kind in ("bad", "late", "traceback"):
                print(f"[{i}/{len(cases)}] {out.kind:<9} {case.command()}\n    {out.tail.splitlines()[-1] if out.tail else ''}", flush=True)
    wall = time.perf_counter() - t0
    cols = ("cases", "error", "accepted", "bad", "late", "traceback")
    heads = ("cases tried", "clean errors", "accepted", "bad accepted", "late errors", "tracebacks (target 0)")
    print("\n| area | " + " | ".join(heads) + " |\n|---|" + "---:|" * len(cols))
    total = {k: 0 for k in cols}
    for area in AREAS:
        if area in counts:
            print(f"| {area} | " + " | ".join(str(counts[area][k]) for k in cols) + " |")
            for k in cols:
                total[k] += counts[area][k]
    print("| **all** | " + " | ".join(f"**{total[k]}**" for k in cols) + " |")
    rerun = ".venv/bin/python benchmarks/fuzz_cli.py" + "".join(f" --area={shlex.quote(a)}" for a in args.area or [])
    print(f"\n{len(cases)} cases in {wall:.0f} s; rerun: {rerun}")
    for case, out in problems:
        print(f"\n{out.kind}: {case.command()}\n{out.tail}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
