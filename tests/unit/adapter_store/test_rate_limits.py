"""The admission policy, as a pure function: buckets, in-flight, refusals that charge nothing."""

from __future__ import annotations

import pytest

from adapter_store import TenantLimits
from adapter_store._rate_limits import Buckets
from adapter_store._rate_limits import admit
from adapter_store._rate_limits import fits


def test_a_request_bucket_allows_one_second_of_burst_then_the_rate() -> None:
    limits = TenantLimits(requests_per_s=4.0)
    buckets = None
    answers = []
    for _ in range(5):
        answer, buckets = admit(limits, buckets, in_flight=0, tokens=0, now=10.0)
        answers.append(answer.admitted)
    assert answers == [True, True, True, True, False]
    refused, _ = admit(limits, buckets, in_flight=0, tokens=0, now=10.0)
    assert (refused.limit, refused.retry_after_s) == ("requests_per_s", pytest.approx(0.25))
    assert admit(limits, buckets, in_flight=0, tokens=0, now=10.25)[0].admitted


def test_a_slow_rate_still_admits_one_request() -> None:
    limits = TenantLimits(requests_per_s=0.5)
    first, buckets = admit(limits, None, in_flight=0, tokens=0, now=0.0)
    second, _ = admit(limits, buckets, in_flight=0, tokens=0, now=1.0)
    assert first.admitted and not second.admitted
    assert second.retry_after_s == pytest.approx(1.0)


def test_tokens_per_minute_charge_the_estimate_and_refill_continuously() -> None:
    limits = TenantLimits(tokens_per_min=600)  # 10 tokens per second
    answer, buckets = admit(limits, None, in_flight=0, tokens=550, now=0.0)
    assert answer.admitted and buckets == Buckets(requests=1.0, tokens=50.0, updated_at=0.0)
    refused, same = admit(limits, buckets, in_flight=0, tokens=100, now=1.0)
    assert (refused.limit, refused.retry_after_s) == ("tokens_per_min", pytest.approx(4.0))
    assert same is buckets  # a refusal charges nothing
    assert admit(limits, buckets, in_flight=0, tokens=100, now=5.0)[0].admitted


def test_in_flight_is_checked_first_and_answers_a_fixed_hint() -> None:
    limits = TenantLimits(requests_per_s=100.0, max_in_flight=2)
    answer, buckets = admit(limits, None, in_flight=2, tokens=0, now=0.0)
    assert (answer.admitted, answer.limit, answer.retry_after_s, buckets) == (
        False,
        "max_in_flight",
        1.0,
        None,
    )
    assert admit(limits, None, in_flight=1, tokens=0, now=0.0)[0].in_flight == 2


def test_a_clock_behind_refills_nothing() -> None:
    limits = TenantLimits(requests_per_s=1.0)
    _, buckets = admit(limits, None, in_flight=0, tokens=0, now=100.0)
    answer, after = admit(limits, buckets, in_flight=0, tokens=0, now=50.0)
    assert not answer.admitted and after is buckets


def test_no_limits_admit_everything() -> None:
    answer, _ = admit(TenantLimits(), None, in_flight=10**6, tokens=10**9, now=0.0)
    assert answer.admitted


def test_overrides_fall_back_to_defaults_and_values_are_checked() -> None:
    defaults = TenantLimits(requests_per_s=10.0, tokens_per_min=1000, max_in_flight=8)
    assert TenantLimits(max_in_flight=2).over(defaults) == TenantLimits(10.0, 1000, 2)
    assert fits(defaults, 1000) and not fits(defaults, 1001) and fits(TenantLimits(), 10**9)
    for bad in ({"requests_per_s": 0}, {"tokens_per_min": -1}, {"max_in_flight": True}):
        with pytest.raises(ValueError, match="must be None or > 0"):
            TenantLimits(**bad)  # type: ignore[arg-type]
