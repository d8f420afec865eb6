"""Bounded retries with exponential backoff and jitter, for calls to Redis and S3.

Policy: a call is tried at most ``attempts`` times. Only the exception types in
``retry_on`` (connection refused, timeouts: the backend did not answer) are retried; any
other exception propagates unchanged at once, because retrying a rejected request cannot
help. Between tries the caller sleeps ``min(max_delay_s, base_delay_s * 2**n)`` scaled by
a random factor in [0.5, 1.0) so that many replicas retrying together do not stampede.
After the last failed try :class:`BackendUnavailableError` is raised, naming what was
called and the last error, chained to it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from adapter_store.exceptions import BackendUnavailableError

__all__ = ["call_with_retries"]

_log = logging.getLogger(__name__)
T = TypeVar("T")


def call_with_retries(
    fn: Callable[[], T],
    *,
    what: str,
    retry_on: tuple[type[BaseException], ...],
    attempts: int = 4,
    base_delay_s: float = 0.05,
    max_delay_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Return ``fn()``, retrying it when it raises one of ``retry_on``.

    Args:
        fn: the call; it must be safe to repeat (idempotent).
        what: the backend and the operation, for the error message, e.g.
            ``"S3 s3://bucket/prefix: GET blobs/sha256/ab/ab12..."``.
        retry_on: exception types that mean "the backend did not answer".
        attempts: total tries, at least 1.
        base_delay_s: the first backoff delay; it doubles after each failure.
        max_delay_s: the cap on one backoff delay.
        sleep: injected so tests run without waiting.
        jitter: a source of floats in [0, 1); injected for deterministic tests.

    Raises:
        BackendUnavailableError: every try raised one of ``retry_on``.
        ValueError: ``attempts`` is below 1.
        Exception: whatever ``fn`` raised that is not in ``retry_on``, unchanged.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts - 1:
                raise BackendUnavailableError(
                    f"{what} failed after {attempts} attempts; last error: "
                    f"{type(exc).__name__}: {exc}. Check that the backend is running and "
                    "reachable at the configured address."
                ) from exc
            delay = min(max_delay_s, base_delay_s * 2**attempt) * (0.5 + jitter() / 2)
            _log.warning(
                "%s failed (attempt %d/%d, %s: %s); retrying in %.3fs",
                what,
                attempt + 1,
                attempts,
                type(exc).__name__,
                exc,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
