"""The test services themselves: a real redis-server and an S3 server over HTTP."""

from __future__ import annotations

import boto3


def test_redis_server_answers_and_is_flushed(redis_client) -> None:
    assert redis_client.ping()
    assert redis_client.dbsize() == 0
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"


def test_s3_server_round_trip_over_http(s3_endpoint: str, s3_bucket: str) -> None:
    assert s3_endpoint.startswith("http://127.0.0.1:")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="a/b", Body=b"hello")
    assert s3.get_object(Bucket=s3_bucket, Key="a/b")["Body"].read() == b"hello"
