"""The one percentile definition of the project (simulator, engine stats, benchmarks)."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (``q`` in [0, 100]) of ``values`` by linear interpolation
    between the two nearest ranks: numpy's default (``method="linear"``), so p50 of an
    even count is the mean of the middle two. ``values`` need not be sorted.

    Returns nan for no values. Raises ValueError for ``q`` outside [0, 100].
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
