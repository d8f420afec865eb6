"""Errors raised while fine-tuning an adapter.

The HTTP layer answers each class with the status on the right::

    TrainingError                 500  base class; the training run itself failed
    ├── TrainingDataError         400  a data line is not JSON or not one of the three
    │                                  formats; the message names the line and the fix
    └── TrainingOptionsError      400  an option is out of range or does not fit the
                                       base model (an unknown target module, ...)

Every one is raised before anything is published: a failed run leaves the store as it was.
"""

from __future__ import annotations

__all__ = ["TrainingDataError", "TrainingError", "TrainingOptionsError"]


class TrainingError(Exception):
    """Base class of every training error."""


class TrainingDataError(TrainingError):
    """A line of the training data cannot be used; the message names it."""


class TrainingOptionsError(TrainingError):
    """An option is out of range or does not fit the base model."""
