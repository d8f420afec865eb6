"""Bounded retries: how many tries, which errors, which delays, what is raised."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from adapter_store._retry import call_with_retries
from adapter_store.exceptions import BackendUnavailableError


def _failing(times: int, exc: BaseException, result: str = "ok") -> Callable[[], str]:
    """A call that raises ``exc`` for its first ``times`` calls, then returns ``result``."""
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return result

    fn.calls = calls  # type: ignore[attr-defined]
    return fn


def test_success_after_transient_failures_returns_result_and_sleeps_between() -> None:
    sleeps: list[float] = []
    fn = _failing(2, ConnectionError("refused"))
    out = call_with_retries(
        fn, what="S3 GET x", retry_on=(ConnectionError,), sleep=sleeps.append, jitter=lambda: 1.0
    )
    assert out == "ok"
    assert fn.calls["n"] == 3  # type: ignore[attr-defined]
    # base 0.05 doubling, jitter factor 0.5 + 1.0/2 = 1.0
    assert sleeps == pytest.approx([0.05, 0.1])


def test_exhausted_retries_raise_backend_unavailable_naming_call_and_last_error() -> None:
    sleeps: list[float] = []
    fn = _failing(10, TimeoutError("read timed out"))
    with pytest.raises(BackendUnavailableError) as info:
        call_with_retries(
            fn, what="Redis HGET tenants", retry_on=(TimeoutError,), attempts=3, sleep=sleeps.append
        )
    message = str(info.value)
    assert "Redis HGET tenants" in message
    assert "3 attempts" in message
    assert "TimeoutError: read timed out" in message
    assert isinstance(info.value.__cause__, TimeoutError)
    assert fn.calls["n"] == 3  # type: ignore[attr-defined]
    assert len(sleeps) == 2  # no sleep after the last try


def test_delays_are_capped_and_jittered_down_to_half() -> None:
    sleeps: list[float] = []
    fn = _failing(10, ConnectionError())
    with pytest.raises(BackendUnavailableError):
        call_with_retries(
            fn,
            what="x",
            retry_on=(ConnectionError,),
            attempts=6,
            base_delay_s=0.1,
            max_delay_s=0.3,
            sleep=sleeps.append,
            jitter=lambda: 0.0,
        )
    assert sleeps == pytest.approx([0.05, 0.1, 0.15, 0.15, 0.15])


def test_errors_not_listed_propagate_at_once_without_retry() -> None:
    fn = _failing(10, KeyError("no such key"))
    with pytest.raises(KeyError):
        call_with_retries(fn, what="x", retry_on=(ConnectionError,), sleep=lambda _: None)
    assert fn.calls["n"] == 1  # type: ignore[attr-defined]


def test_attempts_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        call_with_retries(lambda: 1, what="x", retry_on=(OSError,), attempts=0)
