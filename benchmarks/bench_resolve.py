"""Resolve latency and Redis memory per adapter version, at 100,000 versions.

Starts a private redis-server, publishes ``--versions`` versions (``--adapters`` names,
each with an extra ``prod`` alias) through the real publish script (pipelined, 1000 per
round trip), then times
``AdapterStore.resolve`` for a random mix of ``name``, ``name@N`` and ``name:prod``, plus
``record_usage`` and API-key lookups. A bare PING round trip on the same connection is
the baseline, so the figures can be read as "how many round trips"; Redis's own time per
resolve script (INFO commandstats) is reported too, as it does not depend on how busy
the client machine is. The targets are a p99 under 1 ms on loopback and at most 1 KiB of
Redis memory per version.

Prints one JSON object. Run: ``python benchmarks/bench_resolve.py``.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from adapter_store import AdapterStore
from adapter_store import LocalBlobStore
from adapter_store import Publication
from adapter_store import RedisMetadataStore
from adapter_store._metadata import _PUBLISH
from adapter_store._redis_server import RedisServerProcess
from benchmarks._common import int_options
from scheduler import percentile


def _percentiles(fn: Callable[[int], object], n: int) -> dict[str, float]:
    samples = []
    for i in range(n):
        start = time.perf_counter_ns()
        fn(i)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return {
        "p50_us": round(percentile(samples, 50) / 1000, 1),
        "p99_us": round(percentile(samples, 99) / 1000, 1),
        "mean_us": round(statistics.fmean(samples) / 1000, 1),
    }


def _used_memory(store: AdapterStore) -> int:
    return int(store.metadata._redis.info("memory")["used_memory"])


def main() -> None:
    opts = int_options(
        __doc__, versions=100_000, adapters=10_000, resolves=20_000, seed=0
    ).parse_args()
    rng = random.Random(opts.seed)

    with (
        tempfile.TemporaryDirectory() as tmp,
        RedisServerProcess(Path(tmp) / "redis", appendonly=False) as server,
    ):
        store = AdapterStore(
            RedisMetadataStore.from_url(server.url), LocalBlobStore(Path(tmp) / "blobs")
        )
        store.ensure_tenant("bench")
        key = store.issue_key("bench")
        before = _used_memory(store)

        start = time.perf_counter()
        per_adapter = opts.versions // opts.adapters
        metadata = store.metadata
        pipe = metadata._redis.pipeline(transaction=False)
        for i in range(opts.versions):
            name, number = f"adapter-{i % opts.adapters:05d}", i // opts.adapters + 1
            digest = hashlib.sha256(f"{name}@{number}".encode()).hexdigest()
            publication = Publication(
                tenant="bench",
                name=name,
                digest=hashlib.sha256(digest.encode()).hexdigest(),
                config_digest=digest,
                size_bytes=16_000_000,
                rank=16,
                base_model="llama-3-8b",
                created_at=time.time(),
                aliases=("prod",) if number == per_adapter // 2 else (),
            )
            call = metadata._publish_call(publication, token=uuid.uuid4().hex)
            keys, args = _PUBLISH.call_args(*call)
            metadata._publish(keys=keys, args=args, client=pipe)
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.execute()
        publish_s = time.perf_counter() - start
        with_tokens = _used_memory(store) - before
        # Push tokens (which make a retried publish idempotent) expire after 10 minutes;
        # drop them to see the steady-state footprint.
        client = store.metadata._redis
        tokens = list(client.scan_iter("loramux:push:*", count=10_000))
        for chunk in range(0, len(tokens), 10_000):
            client.delete(*tokens[chunk : chunk + 10_000])
        steady = _used_memory(store) - before

        names = [f"adapter-{rng.randrange(opts.adapters):05d}" for _ in range(opts.resolves)]
        refs = [
            rng.choice([name, f"{name}@{rng.randint(1, per_adapter)}", f"{name}:prod"])
            for name in names
        ]
        versions = [store.resolve("bench", ref) for ref in refs[:1000]]
        ping = _percentiles(lambda _i: client.ping(), opts.resolves)
        client.config_resetstat()
        resolve = _percentiles(lambda i: store.resolve("bench", refs[i]), opts.resolves)
        # Redis's own time per resolve script, free of client-side scheduling noise.
        server_us = client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
        usage = _percentiles(
            lambda i: store.record_usage(versions[i % len(versions)]), opts.resolves
        )
        auth = _percentiles(lambda _i: store.tenant_for_key(key), opts.resolves)
        store.close()

    print(
        json.dumps(
            {
                "versions": opts.versions,
                "adapters": opts.adapters,
                "publish_per_s": round(opts.versions / publish_s),
                "resolve": resolve,
                "resolve_server_us_per_call": server_us,
                "ping_baseline": ping,
                "resolve_p99_over_ping_p99": round(resolve["p99_us"] / ping["p99_us"], 2),
                "record_usage": usage,
                "tenant_for_key": auth,
                "redis_bytes_per_version": round(steady / opts.versions),
                "redis_bytes_per_version_with_push_tokens": round(with_tokens / opts.versions),
                "targets": {"resolve_p99_us": 1000, "redis_bytes_per_version": 1024},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
