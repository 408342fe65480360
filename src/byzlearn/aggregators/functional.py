"""The maths of the aggregation rules: pure functions ``Tensor[n, d] -> Tensor[d]``.

Every function takes the gradient batch ``G`` (one row per worker) and, where the rule needs it,
the number ``f`` of Byzantine rows to tolerate. No Python loops over workers or coordinates.
"""

from __future__ import annotations

from torch import Tensor

from ._finite import check_batch, mean_rows


def mean(G: Tensor) -> Tensor:
    """Arithmetic mean of the rows (the non-robust baseline); a sum that overflows the dtype although
    the rows are finite is recomputed without overflow (``_finite.mean_rows``)."""
    check_batch(G, "mean")
    return mean_rows(G)


from .distance import pairwise_sq_distances, krum, krum_scores, multi_krum, bulyan, mda, mda_subset, nnm, nnm_mixing_matrix  # noqa: E402,F401
from .iterative import geometric_median, centered_clipping  # noqa: E402,F401
from .coordinatewise import median, trimmed_mean  # noqa: E402,F401
from .preaggregation import bucketing, static_clip, arc  # noqa: E402,F401
from .validation import zeno, zeno_scores  # noqa: E402,F401
