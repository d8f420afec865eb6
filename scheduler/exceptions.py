"""Errors raised by the scheduler.

::

    SchedulerError              base class
    ├── UnknownPolicyError      a policy name not in the registry (lists the known ones)
    ├── TraceFormatError        a trace CSV is missing columns or has bad values
    └── NoReplicasError         a placement was asked for with no replicas in view
"""

from __future__ import annotations

__all__ = ["NoReplicasError", "SchedulerError", "TraceFormatError", "UnknownPolicyError"]


class SchedulerError(Exception):
    """Base class of every scheduler error."""


class UnknownPolicyError(SchedulerError, KeyError):
    """The policy name is not registered; the message lists the registered names."""


class TraceFormatError(SchedulerError, ValueError):
    """A trace file is missing a column or holds a value that does not parse."""


class NoReplicasError(SchedulerError):
    """No replica is in view, so nothing can be ranked."""
