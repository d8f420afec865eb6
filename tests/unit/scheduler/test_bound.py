"""Belady's MIN over a pooled cache: the offline bound on GPU hit rate."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from scheduler import belady_bound


def _optimal_hits(keys: tuple[str, ...], capacity: int) -> int:
    """The most hits any demand-paging cache of ``capacity`` gets, by exhaustive search."""

    @cache
    def best(i: int, cached: frozenset[str]) -> int:
        if i == len(keys):
            return 0
        key = keys[i]
        if key in cached:
            return 1 + best(i + 1, cached)
        if len(cached) < capacity:
            return best(i + 1, cached | {key})
        return max(best(i + 1, (cached - {victim}) | {key}) for victim in cached)

    return best(0, frozenset())


def test_min_on_a_hand_worked_sequence() -> None:
    # a b c a b d a with two slots: misses a, b, c (evicts b: next use 4 > a's 3),
    # hit a, miss b (evicts c: never used again), miss d (evicts b), hit a.
    bound = belady_bound(list("abcabda"), 2)
    assert (bound.hits, bound.requests) == (2, 7)
    assert bound.hit_rate == pytest.approx(2 / 7)


def test_base_model_requests_are_not_counted() -> None:
    bound = belady_bound(["", "a", "", "a", ""], 1)
    assert (bound.hits, bound.requests) == (1, 2)


def test_enough_capacity_misses_only_first_uses() -> None:
    keys = list("abcabcabcd")
    assert belady_bound(keys, 4).hits == len(keys) - 4


def test_zero_capacity_never_hits_and_negative_is_rejected() -> None:
    assert belady_bound(list("aaaa"), 0).hits == 0
    with pytest.raises(ValueError, match="capacity"):
        belady_bound(["a"], -1)


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.sampled_from("abcde"), min_size=0, max_size=11),
    capacity=st.integers(min_value=1, max_value=3),
)
def test_min_equals_the_exhaustive_optimum(keys: list[str], capacity: int) -> None:
    assert belady_bound(keys, capacity).hits == _optimal_hits(tuple(keys), capacity)
