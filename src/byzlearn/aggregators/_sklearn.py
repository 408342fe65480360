"""scikit-learn on the tiny problems of the clustering rules and attacks (n points, a few features).

On n ~ 10 points scikit-learn's OpenMP neighbour searches are dominated by thread start-up, and on a
machine whose cores torch's OpenMP threads still spin on after a tensor operation, one MeanShift fit
measured 1.6 s instead of 10 ms (2 cores, torch 2.13 and scikit-learn 1.9). ``single_threaded()``
runs the clustering on one thread of every OpenMP/BLAS pool; the controller is built once (building
it scans the loaded libraries, about 3 ms).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

    return ThreadpoolController()


def single_threaded() -> AbstractContextManager[Any]:
    """Context manager: every thread pool the process has loaded limited to one thread."""
    return _controller().limit(limits=1)
