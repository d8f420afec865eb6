"""Cold fetch of an adapter from S3 into the disk cache vs a plain boto3 download_file.

Starts moto's S3 server over HTTP on a free loopback port, stores one random object
(64 MiB by default) content-addressed, then per repetition, alternating which goes first:

* ``cache``: ``DiskCache.ensure`` into an empty cache directory (parallel ranged GETs,
  sha256 verification, fsync, atomic rename);
* ``baseline``: ``boto3`` ``download_file`` of the same object into a fresh file.

Prints one JSON object with each side's median seconds, the ratio of the medians
(cache/baseline; the goal is at most 1.2) and the median of the per-repetition ratios.

Usage: python benchmarks/bench_fetch.py [--size-mib 64] [--repetitions 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

GOAL_RATIO = 1.2
BUCKET = "loramux-bench"
PREFIX = "loramux"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()

    # moto's server needs credentials but checks none; nothing reaches AWS.
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    import boto3
    from moto.server import ThreadedMotoServer

    from adapter_store import DiskCache
    from adapter_store import S3BlobStore
    from adapter_store import blob_key
    from adapter_store._redis_server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        baseline_client = boto3.client("s3", endpoint_url=endpoint)
        baseline_client.create_bucket(Bucket=BUCKET)
        store = S3BlobStore(BUCKET, PREFIX, endpoint_url=endpoint)
        data = os.urandom(args.size_mib << 20)
        digest = hashlib.sha256(data).hexdigest()
        store.put_bytes(blob_key(digest), data)
        del data
        files = {"adapter_model.safetensors": digest}

        cache_s: list[float] = []
        baseline_s: list[float] = []
        with tempfile.TemporaryDirectory(prefix="bench-fetch-") as tmp:
            work = Path(tmp)
            for rep in range(args.repetitions):

                def fetch_with_cache(rep: int = rep) -> None:
                    cache = DiskCache(work / f"cache-{rep}", store, max_bytes=1 << 40)
                    started = time.perf_counter()
                    cache.ensure("bench/adapter@1", files)
                    cache_s.append(time.perf_counter() - started)

                def fetch_with_boto3(rep: int = rep) -> None:
                    started = time.perf_counter()
                    baseline_client.download_file(
                        BUCKET, f"{PREFIX}/{blob_key(digest)}", str(work / f"plain-{rep}")
                    )
                    baseline_s.append(time.perf_counter() - started)

                order = (
                    (fetch_with_cache, fetch_with_boto3)
                    if rep % 2 == 0
                    else (fetch_with_boto3, fetch_with_cache)
                )
                for fetch in order:
                    fetch()
                # Both copies go before the next repetition, so that write-back of old
                # files does not weigh on later ones.
                shutil.rmtree(work / f"cache-{rep}")
                (work / f"plain-{rep}").unlink()
    finally:
        server.stop()

    cache_median = statistics.median(cache_s)
    baseline_median = statistics.median(baseline_s)
    ratio = cache_median / baseline_median
    print(
        json.dumps(
            {
                "benchmark": "cold fetch S3 -> disk cache vs boto3 download_file",
                "object_mib": args.size_mib,
                "repetitions": args.repetitions,
                "cache_median_s": round(cache_median, 4),
                "baseline_median_s": round(baseline_median, 4),
                "cache_s": [round(s, 4) for s in cache_s],
                "baseline_s": [round(s, 4) for s in baseline_s],
                "ratio": round(ratio, 3),
                # Each repetition's own ratio: robust to load drifting between repetitions.
                "paired_ratio_median": round(
                    statistics.median(c / b for c, b in zip(cache_s, baseline_s, strict=True)), 3
                ),
                "goal_ratio_max": GOAL_RATIO,
                "meets_goal": ratio <= GOAL_RATIO,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
