"""The placement policies, one module each; :mod:`scheduler._registry` names them."""

from scheduler._policies._common import select_replica
from scheduler._policies.cache_aware import AdaptivePolicy
from scheduler._policies.cache_aware import CacheAwarePolicy
from scheduler._policies.consistent_hash import ConsistentHashPolicy
from scheduler._policies.least_loaded import LeastLoadedPolicy
from scheduler._policies.ray_multiplex import RayMultiplexPolicy
from scheduler._policies.round_robin import RoundRobinPolicy

__all__ = [
    "AdaptivePolicy",
    "CacheAwarePolicy",
    "ConsistentHashPolicy",
    "LeastLoadedPolicy",
    "RayMultiplexPolicy",
    "RoundRobinPolicy",
    "select_replica",
]
