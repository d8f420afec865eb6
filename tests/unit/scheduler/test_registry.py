"""The policy registry: names to policies, and the options each takes."""

from __future__ import annotations

import pytest

from scheduler import HOLDER_FLOOR_CAP
from scheduler import POLICY_NAMES
from scheduler import PolicyOptionError
from scheduler import UnknownPolicyError
from scheduler import batch_options
from scheduler import make_policy
from scheduler import policy_options


def test_policy_options_are_exactly_what_make_policy_accepts() -> None:
    for name in POLICY_NAMES:
        options = policy_options(name)
        assert "seed" not in options
        with pytest.raises(PolicyOptionError, match="takes no option"):
            make_policy(name, not_an_option=1)
    # adaptive passes cache_aware's options on through **options.
    assert {"holder_floor", "epsilon", "victim_aware"} <= policy_options("adaptive")
    assert policy_options("cache_aware") <= policy_options("adaptive")
    assert "holder_floor" not in policy_options("round_robin")
    assert make_policy("adaptive", holder_floor=8).holder_floor == 8  # type: ignore[attr-defined]


def test_an_unknown_policy_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPolicyError, match="known policies: adaptive"):
        policy_options("fastest")


def test_batch_options_size_the_policies_that_take_them() -> None:
    assert batch_options("adaptive", 8) == {"holder_floor": 8}
    assert batch_options("cache_aware", 16) == {"holder_floor": 16}
    # A large batch is capped: past the cap every sequence on the holder slows.
    assert batch_options("adaptive", 256) == {"holder_floor": HOLDER_FLOOR_CAP}
    assert batch_options("round_robin", 48) == {}
    assert batch_options("ray_multiplex", 48) == {}
    sized = make_policy("adaptive", **batch_options("adaptive", 8))
    assert sized.holder_floor == 8  # type: ignore[attr-defined]
    with pytest.raises(PolicyOptionError, match="batch_size=0 must be >= 1"):
        batch_options("adaptive", 0)
    with pytest.raises(UnknownPolicyError, match="known policies"):
        batch_options("fastest", 8)
