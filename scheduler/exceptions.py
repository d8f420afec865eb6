"""Errors raised by the scheduler.

::

    SchedulerError              base class
    ├── UnknownPolicyError      a policy name not in the registry (lists the known ones)
    ├── PolicyOptionError       an option a policy does not take, or a bad option value
    ├── TraceFormatError        a trace CSV is missing columns or has bad values
    ├── SynthSpecError          a trace generator or converter parameter out of range
    ├── ViewEventError          a cluster-view event that does not decode (bad wire data)
    ├── UnknownReplicaError     a cluster-view call names a replica not in view
    ├── UnknownProfileError     a simulator cost profile name not registered (lists them)
    └── NoReplicasError         a placement was asked for with no replicas in view

The "unknown name" errors are also ``KeyError`` (a failed lookup) but print their message
as given, not quoted the way ``str()`` of a ``KeyError`` is.
"""

from __future__ import annotations

__all__ = [
    "NoReplicasError",
    "PolicyOptionError",
    "SchedulerError",
    "SynthSpecError",
    "TraceFormatError",
    "UnknownPolicyError",
    "UnknownProfileError",
    "UnknownReplicaError",
    "ViewEventError",
]


class SchedulerError(Exception):
    """Base class of every scheduler error."""


class _LookupFailed(SchedulerError, KeyError):
    """A lookup by name failed; ``str()`` is the message itself.

    ``KeyError.__str__`` returns the repr of its argument (meant for a bare key), which
    would wrap a sentence in quotes in logs and CLI output.
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class UnknownPolicyError(_LookupFailed):
    """The policy name is not registered; the message lists the registered names."""


class PolicyOptionError(SchedulerError, TypeError):
    """``make_policy`` got an option the policy does not take, or a value out of range."""


class TraceFormatError(SchedulerError, ValueError):
    """A trace file is missing a column or holds a value that does not parse."""


class SynthSpecError(SchedulerError, ValueError):
    """A synthetic-trace spec or converter parameter (rate, rank mix, speedup) is out of
    range; the message names the parameter and the valid range."""


class UnknownProfileError(_LookupFailed):
    """The simulator cost profile name is not registered; the message lists the names."""


class ViewEventError(SchedulerError, ValueError):
    """A residency/load event is not valid JSON of the documented schema."""


class UnknownReplicaError(_LookupFailed):
    """The cluster view has no replica of that id (never seen, or removed)."""


class NoReplicasError(SchedulerError):
    """No replica is in view, so nothing can be ranked."""
