"""Placement policies by name: the one place that maps a name to a policy class."""

from __future__ import annotations

import inspect
from typing import Any

from scheduler._policies import AdaptivePolicy
from scheduler._policies import CacheAwarePolicy
from scheduler._policies import ConsistentHashPolicy
from scheduler._policies import LeastLoadedPolicy
from scheduler._policies import RayMultiplexPolicy
from scheduler._policies import RoundRobinPolicy
from scheduler._types import PlacementPolicy
from scheduler.exceptions import PolicyOptionError
from scheduler.exceptions import UnknownPolicyError

__all__ = ["HOLDER_FLOOR_CAP", "POLICY_NAMES", "batch_options", "make_policy", "policy_options"]

_POLICIES: dict[str, type] = {
    policy.name: policy
    for policy in (
        AdaptivePolicy,
        CacheAwarePolicy,
        RoundRobinPolicy,
        LeastLoadedPolicy,
        ConsistentHashPolicy,
        RayMultiplexPolicy,
    )
}

POLICY_NAMES: tuple[str, ...] = tuple(_POLICIES)
"""Registered names, the default (``cache_aware``) first, then the baselines."""


def _options_of(policy_class: type) -> set[str]:
    """The keyword-only constructor options, with those a subclass passes on to its base
    through ``**options``."""
    accepted: set[str] = set()
    for cls in policy_class.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        accepted |= {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            break
    accepted.discard("seed")
    return accepted


def policy_options(name: str) -> frozenset[str]:
    """The options :func:`make_policy` accepts for the policy ``name``.

    Raises:
        UnknownPolicyError: ``name`` is not registered (the message lists the names).
    """
    return frozenset(_options_of(_policy_class(name)))


# The most sequences a holder takes before a copy is made, whatever the batch: on the
# a100-7b profile a decode step costs twice a lone sequence's at 30 (step_base_s /
# step_per_seq_s), and in the simulator's stationary grid a floor of the full batch (64)
# instead of 32 gained no GPU hits (within 0.005) but raised latency p99 by up to 25% and
# the busiest replica's batch occupancy to 2.1x the mean.
HOLDER_FLOOR_CAP = 32


def batch_options(name: str, batch_size: int) -> dict[str, int]:
    """The options that size the policy ``name`` to replicas batching ``batch_size``
    sequences: ``holder_floor = min(batch_size, HOLDER_FLOOR_CAP)`` (a replica holding
    the adapter takes its requests while its batch has room, up to the point where
    bigger batches slow every sequence on it) for the policies that take it, nothing for
    the others.

    The services router, the simulator's CLI and the benchmarks all build policies
    through this, so a simulated policy is the one a deployment of that batch size runs.
    Options given explicitly to :func:`make_policy` override these (merge them last).

    Raises:
        UnknownPolicyError: ``name`` is not registered.
        PolicyOptionError: ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise PolicyOptionError(f"batch_size={batch_size!r} must be >= 1 (sequences per batch)")
    if "holder_floor" not in policy_options(name):
        return {}
    return {"holder_floor": min(batch_size, HOLDER_FLOOR_CAP)}


def _policy_class(name: str) -> type:
    try:
        return _POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown placement policy {name!r}; known policies: {', '.join(POLICY_NAMES)}"
        ) from None


def make_policy(name: str, *, seed: int = 0, **options: Any) -> PlacementPolicy:
    """A fresh policy instance by registered name.

    ``seed`` fixes every random choice the policy makes; ``options`` are the policy's
    keyword-only constructor parameters (for example ``epsilon`` of ``cache_aware``).

    Raises:
        UnknownPolicyError: ``name`` is not registered (the message lists the names).
        PolicyOptionError: an option the policy does not take, or a bad value.
    """
    policy_class = _policy_class(name)
    accepted = _options_of(policy_class)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise PolicyOptionError(
            f"policy {name!r} takes no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(accepted)) or '(none)'}"
        )
    return policy_class(seed=seed, **options)
