"""Ingress overhead of the request limits and the per-tenant rate limiter.

Times, per request, in one run on one private redis-server (appendonly, fsync every
second, as a deployed Redis runs; ``--fsync always`` as the embedded one):

- ``baseline``: parsing the JSON body into the wire model, what the ingress does anyway;
- ``limits``: the same plus the request checks (``check_generation``), one admission
  (the ``_ADMIT`` script, one round trip) and the lease's release (one more).

Reports p50/p99 of each, the added milliseconds and the ratio; the goal is under 1 ms
added at p99 on loopback. (The admission and release replace nothing the ingress did
before, so they are all added.) The tenant's limits are high enough that every request
is admitted, the common case; a refusal runs the same script and writes less.

Prints one JSON object. Run: ``python benchmarks/bench_limits.py``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from adapter_store import Lease
from adapter_store import RedisMetadataStore
from adapter_store import TenantLimits
from adapter_store._redis_server import RedisServerProcess
from services._settings import LimitSettings
from services.api._request_limits import check_generation
from services.client._models import CompletionRequest

BODY = json.dumps(
    {"model": "chat:prod", "prompt": "Tell me about LoRA adapters. " * 20, "max_tokens": 128}
)


def _percentiles(fn: Callable[[], object], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "p50_ms": samples[len(samples) // 2] / 1e6,
        "p99_ms": samples[int(len(samples) * 0.99)] / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--fsync", choices=["everysec", "always"], default="everysec")
    args = parser.parse_args()
    limits = LimitSettings()
    tenant_limits = TenantLimits(requests_per_s=1e9, tokens_per_min=10**15, max_in_flight=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServerProcess(Path(tmp), appendonly=True, fsync=args.fsync)
        server.start()
        meta = RedisMetadataStore.from_url(server.url)
        try:

            def baseline() -> None:
                CompletionRequest.model_validate_json(BODY)

            def limited() -> None:
                body = CompletionRequest.model_validate_json(BODY)
                tokens = check_generation(body, body.max_tokens or 16, limits)
                now = time.time()
                lease = Lease("acme", uuid.uuid4().hex, now + 60.0)
                answer = meta.admit(lease, tenant_limits, tokens=tokens, now=now)
                assert answer.admitted
                meta.release("acme", lease.id)

            for fn in (baseline, limited):  # warm up: connections, scripts, caches
                _percentiles(fn, 200)
            base = _percentiles(baseline, args.requests)
            with_limits = _percentiles(limited, args.requests)
        finally:
            meta.close()
            server.stop()
    print(
        json.dumps(
            {
                "requests": args.requests,
                "fsync": args.fsync,
                "baseline": base,
                "with_limits": with_limits,
                "added_p50_ms": with_limits["p50_ms"] - base["p50_ms"],
                "added_p99_ms": with_limits["p99_ms"] - base["p99_ms"],
                "ratio_p50": with_limits["p50_ms"] / base["p50_ms"],
                "ratio_p99": with_limits["p99_ms"] / base["p99_ms"],
                "goal_added_p99_ms": 1.0,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
