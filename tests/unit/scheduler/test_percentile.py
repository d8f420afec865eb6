from __future__ import annotations

import math

import pytest

from scheduler import percentile


def test_percentile_interpolates_linearly_between_ranks_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose

    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile(values, 90) == pytest.approx(3.7)


def test_percentile_of_nothing_is_nan_and_q_is_checked() -> None:
    assert math.isnan(percentile([], 99))
    with pytest.raises(ValueError, match="q must be in"):
        percentile([1.0], 101)
