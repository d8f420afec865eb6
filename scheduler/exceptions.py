"""Errors raised by the scheduler.

::

    SchedulerError              base class
    ├── UnknownPolicyError      a policy name not in the registry (lists the known ones)
    ├── PolicyOptionError       an option a policy does not take, or a bad option value
    ├── TraceFormatError        a trace CSV is missing columns or has bad values
    ├── UnknownProfileError     a simulator cost profile name not registered (lists them)
    └── NoReplicasError         a placement was asked for with no replicas in view
"""

from __future__ import annotations

__all__ = [
    "NoReplicasError",
    "PolicyOptionError",
    "SchedulerError",
    "TraceFormatError",
    "UnknownPolicyError",
    "UnknownProfileError",
]


class SchedulerError(Exception):
    """Base class of every scheduler error."""


class UnknownPolicyError(SchedulerError, KeyError):
    """The policy name is not registered; the message lists the registered names."""


class PolicyOptionError(SchedulerError, TypeError):
    """``make_policy`` got an option the policy does not take, or a value out of range."""


class TraceFormatError(SchedulerError, ValueError):
    """A trace file is missing a column or holds a value that does not parse."""


class UnknownProfileError(SchedulerError, KeyError):
    """The simulator cost profile name is not registered; the message lists the names."""


class NoReplicasError(SchedulerError):
    """No replica is in view, so nothing can be ranked."""
