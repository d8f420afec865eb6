"""How fast the simulator replays 100,000 requests (goal: under 60 s with cache_aware).

Synthesises Zipf 1.0 over 5,000 adapters with bursty arrivals (CV 3) at 4 req/s per
replica for 32 replicas with 16 GPU slots each, then times ``simulate`` for
``cache_aware`` and, as the baseline in the same run, ``round_robin`` (the cheapest
policy to rank). Prints one JSON object per policy::

    python -m benchmarks.sim_speed [--requests 100000]
"""

from __future__ import annotations

import argparse
import json
import time

from scheduler import SimConfig
from scheduler import SynthSpec
from scheduler import cost_profile
from scheduler import make_policy
from scheduler import simulate
from scheduler import synthesize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--replicas", type=int, default=32)
    args = parser.parse_args()
    rate = 4.0 * args.replicas
    trace = synthesize(
        SynthSpec(
            adapters=5000, tenants=500, zipf_alpha=1.0, arrival_cv=3.0, rate_rps=rate,
            duration_s=args.requests / rate, seed=1,
        )
    )  # fmt: skip
    config = SimConfig(
        replicas=args.replicas, gpu_slots=16, profile=cost_profile("a100-7b"), bound=True
    )
    baseline = None
    for name in ("round_robin", "cache_aware"):
        started = time.perf_counter()
        result = simulate(trace, make_policy(name, seed=1), config)
        wall = time.perf_counter() - started
        baseline = baseline or wall
        print(
            json.dumps(
                {
                    "policy": name,
                    "requests": result.requests,
                    "replicas": args.replicas,
                    "wall_s": round(wall, 2),
                    "requests_per_s": round(result.requests / wall),
                    "ratio_to_round_robin": round(wall / baseline, 2),
                    "under_60_s": wall < 60,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
