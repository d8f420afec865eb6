"""DemandTracker: decayed rates, total rate, bounded memory."""

from __future__ import annotations

import math

import pytest

from scheduler import AdapterDemand
from scheduler import DemandTracker
from scheduler import PolicyOptionError


def test_steady_stream_rate_converges_to_arrival_rate() -> None:
    tracker = DemandTracker(half_life_s=5.0)
    for step in range(2000):  # 10 requests/s for 200 s, 40 half-lives
        tracker.observe("a", step * 0.1)
    assert tracker.rate("a", 199.9) == pytest.approx(10.0, rel=0.05)


def test_rate_halves_every_half_life_without_requests() -> None:
    tracker = DemandTracker(half_life_s=10.0)
    tracker.observe("a", 0.0)
    start = tracker.rate("a", 0.0)
    assert tracker.rate("a", 10.0) == pytest.approx(start / 2)
    assert tracker.rate("a", 30.0) == pytest.approx(start / 8)


def test_unseen_key_has_zero_rate_and_time_never_decays_backwards() -> None:
    tracker = DemandTracker(half_life_s=10.0)
    assert tracker.rate("nobody", 5.0) == 0.0
    tracker.observe("a", 10.0)
    tracker.observe("a", 5.0)  # out of order: counted at the latest time
    assert tracker.rate("a", 10.0) == pytest.approx(2 * math.log(2) / 10.0)


def test_total_rate_sums_all_keys() -> None:
    tracker = DemandTracker(half_life_s=10.0)
    for step in range(100):
        tracker.observe("a", step * 0.1)
        tracker.observe("b", step * 0.1)
        tracker.observe("b", step * 0.1)
    now = 9.9
    assert tracker.total_rate(now) == pytest.approx(tracker.rate("a", now) + tracker.rate("b", now))
    assert tracker.rate("b", now) == pytest.approx(2 * tracker.rate("a", now))


def test_memory_is_bounded_and_the_coldest_keys_are_forgotten() -> None:
    tracker = DemandTracker(half_life_s=1.0, max_keys=10)
    for _ in range(5):
        tracker.observe("hot", 100.0)
    for index in range(40):
        tracker.observe(f"cold-{index}", 100.0 + index)
        tracker.observe("hot", 100.0 + index)
        assert len(tracker) <= 10
    assert "hot" in tracker
    assert "cold-0" not in tracker


def test_demand_builds_the_policy_input() -> None:
    tracker = DemandTracker(half_life_s=10.0)
    tracker.observe("t/a@1", 0.0)
    demand = tracker.demand("t/a@1", 0.0, size_bytes=100, rank=8)
    assert demand == AdapterDemand("t/a@1", size_bytes=100, rank=8, rate=tracker.rate("t/a@1", 0.0))


@pytest.mark.parametrize(("half_life", "max_keys"), [(0.0, 10), (-1.0, 10), (1.0, 1)])
def test_bad_settings_are_rejected(half_life: float, max_keys: int) -> None:
    with pytest.raises(PolicyOptionError):
        DemandTracker(half_life, max_keys=max_keys)
