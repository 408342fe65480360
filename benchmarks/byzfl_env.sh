#!/usr/bin/env bash
# Creates (or checks and reuses) the side environment in which ByzFL 0.0.11 runs for the
# `byzfl-benchmark` reproduction (benchmarks/byzfl_side.py). byzlearn's own .venv is not touched.
#
#   bash benchmarks/byzfl_env.sh            # once; BYZFL_VENV=/path overrides /work/byzfl-venv
#
# What it installs, and why only that:
#   * torch==2.13.0 -- this exact pin: on this machine it resolves to a local CPU wheel (any other
#     version may pull a multi-GB CUDA build).
#   * byzfl==0.0.11 with --no-deps: its metadata requires torchvision, whose wheel does not import
#     beside this torch; byzfl_side.py puts a stub torchvision in sys.modules instead (see its
#     docstring).
#   * the dependencies ByzFL's code imports when `import byzfl` runs: numpy (everywhere), scipy
#     (byzfl/utils/misc.py: scipy.spatial.distance), matplotlib and seaborn
#     (byzfl/benchmark/evaluate_results.py, imported by byzfl/benchmark/__init__.py); pip brings
#     their own dependencies (pandas, pillow, ...). Nothing else.
set -euo pipefail

VENV="${BYZFL_VENV:-/work/byzfl-venv}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

check() {
    "$VENV/bin/python" - <<'EOF' || return 1
import sys
from importlib.metadata import version
ok = version("torch").startswith("2.13.0") and version("byzfl") == "0.0.11"
print(f"torch {version('torch')}, byzfl {version('byzfl')}")
sys.exit(0 if ok else 1)
EOF
    "$VENV/bin/python" "$HERE/byzfl_side.py" --check
}

if [ -x "$VENV/bin/python" ]; then
    if check; then
        echo "$VENV exists and works: reused"
        exit 0
    fi
    echo "$VENV exists but fails the check: (re)installing into it"
else
    python3 -m venv "$VENV"
fi

"$VENV/bin/pip" install torch==2.13.0
"$VENV/bin/pip" install --no-deps byzfl==0.0.11
"$VENV/bin/pip" install numpy scipy matplotlib seaborn
check
echo "$VENV ready"
