"""One rate-limited failure log for the background and routing paths of the service.

A failure that repeats every period or every request (an unreachable Redis, a bug in a
policy) would flood the log. :class:`FailureLog` logs each kind of failure with its
traceback at most once per interval; the ones in between are dropped (callers count
them where they matter).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from collections.abc import Iterator

__all__ = ["FailureLog"]


class FailureLog:
    """Logs failures to ``logger``, each ``kind`` at most once per ``interval_s`` of
    ``clock`` (monotonic seconds). The message says how often it is logged."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._logged_at: dict[str, float] = {}

    def warning(self, message: str, *args: object, kind: str | None = None) -> bool:
        """Log ``message % args`` with the current exception's traceback, unless the
        same ``kind`` (default: ``message``) was logged within the interval. Returns
        whether it was logged."""
        kind = message if kind is None else kind
        now = self._clock()
        if now - self._logged_at.get(kind, -math.inf) < self._interval_s:
            return False
        self._logged_at[kind] = now
        self._logger.warning(
            f"{message} (logged at most every {self._interval_s:.0f} s)", *args, exc_info=True
        )
        return True

    @contextlib.contextmanager
    def suppressed(self, step: str) -> Iterator[None]:
        """Run the block; an ``Exception`` from it is logged as ``step`` failing, not
        raised (cancellation still propagates)."""
        try:
            yield
        except Exception:
            self.warning("%s failed; retried every period", step, kind=step)
