"""Helpers shared by the placement policies: argument checks, pow-2 sampling, hashing.

Key and replica hashes must be the same in every process and host (every router must
agree on a cold adapter's home), so strings are hashed with seeded blake2b, never with
Python's per-process salted ``hash()`` of a str.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from scheduler._types import ReplicaView
from scheduler.exceptions import NoReplicasError
from scheduler.exceptions import PolicyOptionError


def require_replicas(replicas: Sequence[ReplicaView], policy: str) -> None:
    """Raise :class:`NoReplicasError` when there is nothing to rank."""
    if not replicas:
        raise NoReplicasError(
            f"policy {policy!r} was asked to rank an empty replica list; "
            "wait until at least one replica is in the cluster view"
        )


def require_positive(name: str, value: float, *, policy: str) -> None:
    """Raise :class:`PolicyOptionError` unless ``value`` is a positive number."""
    if not value > 0:
        raise PolicyOptionError(f"policy {policy!r}: option {name}={value!r} must be > 0")


def stable_hash64(text: str, seed: int) -> int:
    """A 64-bit hash of ``text`` that is the same in every process for the same seed."""
    digest = hashlib.blake2b(
        text.encode(), digest_size=8, key=seed.to_bytes(8, "little", signed=True)
    ).digest()
    return int.from_bytes(digest, "little")


def pow2_pair(rng: random.Random, replicas: Sequence[ReplicaView]) -> list[ReplicaView]:
    """Two distinct replicas drawn uniformly, lower load first (ties keep the draw order).

    The draw is the one of Ray Serve's ``PowerOfTwoChoicesRequestRouter.choose_replicas``
    (``i = randrange(n); j = randrange(n - 1); j += j >= i``); ordering the pair by load
    is what Ray's base router does next when it probes the pair's queue lengths.
    """
    count = len(replicas)
    if count == 1:
        return [replicas[0]]
    first = rng.randrange(count)
    second = rng.randrange(count - 1)
    if second >= first:
        second += 1
    a, b = replicas[first], replicas[second]
    if b.in_flight + b.queued < a.in_flight + a.queued:
        return [b, a]
    return [a, b]


def select_replica(groups: Sequence[Sequence[ReplicaView]]) -> ReplicaView:
    """The replica a consumer without queue probing should use: the first of the first
    non-empty group.

    Every policy lists each group best first (lowest load first where load decides), so
    this agrees with Ray's router, which takes the lowest probed queue length in the first
    group that has a replica accepting the request.

    Raises:
        NoReplicasError: every group is empty.
    """
    for group in groups:
        if group:
            return group[0]
    raise NoReplicasError("the ranking holds no replica; is the cluster view empty?")
