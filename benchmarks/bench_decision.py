"""Placement decision latency of every registered policy, printed as JSON.

A synthetic cluster of ``--replicas`` replicas and ``--adapters`` adapters (Zipf
popularity) is built once; each policy then ranks ``--decisions`` requests against it.
Between decisions (outside the timed region) the chosen replica's view takes the
router's optimistic update (``ReplicaView.mark_placed``) and the load lands on its GPU,
so holder sets and loads evolve. The timed region is ``rank_replicas`` +
``select_replica`` + ``on_placed`` on prebuilt views: the policy's share of a routing
decision, not all of it. The services router also builds one ``ReplicaView`` per
candidate from its routing stats before ranking (O(candidates x residency) per
decision), which is not timed here; the JSON says so in ``timed``.
``demand_observe_us`` times ``DemandTracker.observe``.

Times are the thread's CPU time (``time.thread_time_ns``), so a descheduled process on
a shared machine does not count; the clock's own cost per reading is measured and
subtracted (``timer_overhead_us``). Every decision counts, including the first ones
for each adapter, which fill the policies' per-key caches. Compare policies by
``ratio_to_round_robin`` from the same run rather than across runs.

    python benchmarks/bench_decision.py [--replicas 64] [--adapters 10000] [--decisions 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from benchmarks._common import int_options
from scheduler import POLICY_NAMES
from scheduler import AdapterDemand
from scheduler import DemandTracker
from scheduler import ReplicaView
from scheduler import make_policy
from scheduler import percentile
from scheduler import select_replica

# What each policy's figures cover; the router's per-candidate view building is not in
# them (see the module docstring).
_TIMED = (
    "policy only: rank_replicas + select_replica + on_placed on prebuilt ReplicaViews; "
    "excludes the router building one ReplicaView per candidate"
)


def build_cluster(replicas: int, adapters: int, rng: random.Random) -> list[ReplicaView]:
    keys = [f"tenant-{i % 97}/adapter-{i}@1" for i in range(adapters)]
    views = []
    for index in range(replicas):
        view = ReplicaView(replica_id=f"replica-{index}", gpu_slots=8)
        view.gpu.update(rng.sample(keys, 8))
        view.host.update(rng.sample(keys, 32))
        view.disk.update(rng.sample(keys, 128))
        view.in_flight = rng.randrange(8)
        view.queued = rng.randrange(4)
        views.append(view)
    return views


def zipf_trace(adapters: int, decisions: int, rng: random.Random) -> list[str]:
    weights = [1.0 / (rank + 1) for rank in range(adapters)]
    keys = [f"tenant-{i % 97}/adapter-{i}@1" for i in range(adapters)]
    return rng.choices(keys, weights, k=decisions)


def bench_policy(name: str, args: argparse.Namespace) -> dict[str, float | None]:
    rng = random.Random(args.seed)
    views = build_cluster(args.replicas, args.adapters, rng)
    trace = zipf_trace(args.adapters, args.decisions, rng)
    policy = make_policy(name, seed=args.seed)
    tracker = DemandTracker(half_life_s=30.0)
    timings: list[int] = []
    observe_total = 0
    clock = time.thread_time_ns
    overhead = timer_overhead_ns()
    for step, key in enumerate(trace):
        now = step * 0.002  # 500 requests/s
        started = clock()
        rate = tracker.observe(key, now)
        observe_total += max(0, clock() - started - overhead)
        demand = AdapterDemand(key=key, size_bytes=4 << 20, rank=8, rate=rate)
        started = clock()
        chosen = select_replica(policy.rank_replicas(demand, views, now))
        policy.on_placed(demand, chosen, now)
        timings.append(max(0, clock() - started - overhead))
        # The router's optimistic update, then the replica's side: the load lands on
        # the GPU (evicting an arbitrary adapter) and pins are not modelled (0, as from a
        # replica that does not report them); some other replica finishes a request,
        # keeping the mean load steady.
        chosen.mark_placed(key)
        if key not in chosen.gpu:
            if len(chosen.gpu) >= chosen.gpu_slots:
                chosen.gpu.pop()
            chosen.gpu.add(key)
        chosen.loading.discard(key)
        chosen.pinned = 0
        finisher = views[rng.randrange(len(views))]
        if finisher.queued:
            finisher.queued -= 1
        elif finisher.in_flight:
            finisher.in_flight -= 1
    timings.sort()
    mean = statistics.fmean(timings)
    return {
        "mean_us": round(mean / 1e3, 2),
        "p50_us": round(percentile(timings, 50) / 1e3, 2),
        "p99_us": round(percentile(timings, 99) / 1e3, 2),
        "decisions_per_s": round(1e9 / mean) if mean else None,
        "demand_observe_us": round(observe_total / len(trace) / 1e3, 2),
    }


def timer_overhead_ns() -> int:
    """The median cost of one back-to-back pair of clock readings."""
    clock = time.thread_time_ns
    samples = []
    for _ in range(2001):
        started = clock()
        samples.append(clock() - started)
    return sorted(samples)[len(samples) // 2]


def main() -> None:
    parser = int_options(__doc__, replicas=64, adapters=10_000, decisions=20_000, seed=0)
    parser.add_argument("--policies", nargs="*", default=list(POLICY_NAMES))
    args = parser.parse_args()
    results = {name: bench_policy(name, args) for name in args.policies}
    if "round_robin" in results:
        baseline = results["round_robin"]["mean_us"]
        for figures in results.values():
            figures["ratio_to_round_robin"] = round(figures["mean_us"] / baseline, 2)
    print(
        json.dumps(
            {
                "replicas": args.replicas,
                "adapters": args.adapters,
                "decisions": args.decisions,
                "timer_overhead_us": round(timer_overhead_ns() / 1e3, 3),
                "timed": _TIMED,
                "policies": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
