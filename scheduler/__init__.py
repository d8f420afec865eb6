"""Cache-aware placement of tenant requests on replicas, and the simulator that tests it."""

from scheduler._eviction import *  # noqa: F403
from scheduler._eviction import __all__ as _eviction_all
from scheduler._types import *  # noqa: F403
from scheduler._types import __all__ as _types_all
from scheduler.exceptions import *  # noqa: F403
from scheduler.exceptions import __all__ as _exceptions_all

__all__ = [*_types_all, *_eviction_all, *_exceptions_all]
