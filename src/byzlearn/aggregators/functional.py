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


from .coordinatewise import median, trimmed_mean  # noqa: E402,F401
from .distance import bulyan, krum, krum_scores, mda, mda_subset, multi_krum, nnm, nnm_mixing_matrix, pairwise_sq_distances  # noqa: E402,F401
from .iterative import centered_clipping, geometric_median  # noqa: E402,F401
from .preaggregation import arc, bucketing, static_clip  # noqa: E402,F401
from .validation import zeno, zeno_scores  # noqa: E402,F401
