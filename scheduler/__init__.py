"""Cache-aware placement of tenant requests on replicas, and the simulator that tests it."""

from scheduler._bound import *  # noqa: F403
from scheduler._bound import __all__ as _bound_all
from scheduler._cost import *  # noqa: F403
from scheduler._cost import __all__ as _cost_all
from scheduler._demand import *  # noqa: F403
from scheduler._demand import __all__ as _demand_all
from scheduler._eviction import *  # noqa: F403
from scheduler._eviction import __all__ as _eviction_all
from scheduler._percentile import percentile
from scheduler._policies import select_replica
from scheduler._registry import *  # noqa: F403
from scheduler._registry import __all__ as _registry_all
from scheduler._sim import *  # noqa: F403
from scheduler._sim import __all__ as _sim_all
from scheduler._trace import *  # noqa: F403
from scheduler._trace import __all__ as _trace_all
from scheduler._types import *  # noqa: F403
from scheduler._types import __all__ as _types_all
from scheduler._view import *  # noqa: F403
from scheduler._view import __all__ as _view_all
from scheduler.exceptions import *  # noqa: F403
from scheduler.exceptions import __all__ as _exceptions_all

__all__ = [
    *_types_all,
    *_demand_all,
    *_eviction_all,
    *_registry_all,
    "select_replica",
    "percentile",
    *_view_all,
    *_trace_all,
    *_cost_all,
    *_sim_all,
    *_bound_all,
    *_exceptions_all,
]
