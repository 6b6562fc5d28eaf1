"""A real S3-compatible server on loopback for tests (moto's server mode), reusable.

Use the fixture from any test module::

    from s3server import s3  # noqa: F401  (registers the fixture)

    def test_something(s3, spark):
        bucket = s3.bucket()                  # a fresh, empty bucket
        s3.client().put_object(Bucket=bucket, Key="k", Body=b"...")
        opts = s3.options()                   # sparknet.data.S3Options for this server
        s3.spark_env(spark)                   # credentials for Spark's Python workers

``s3`` is session-scoped: one server on 127.0.0.1 (a free port) for the whole
run. It sets dummy credentials and a region in ``os.environ`` for the
session (restored afterwards) so boto3's standard chain finds them; nothing
in boto3 is mocked, every call goes over HTTP to the server.
"""
from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sparknet-test",
    "AWS_SECRET_ACCESS_KEY": "sparknet-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_ENV_CLEARED = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class S3Server:
    """A running moto server and helpers to use it."""

    def __init__(self, server: Any):
        self._server = server
        host, port = server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self._names = itertools.count()

    def client(self) -> Any:
        """A boto3 S3 client talking to this server."""
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url,
                                              region_name=CREDENTIALS["AWS_DEFAULT_REGION"])

    def options(self, **kwargs: Any) -> Any:
        """``sparknet.data.S3Options`` for this server (short timeouts for tests)."""
        from sparknet.data.s3 import S3Options

        kwargs.setdefault("read_timeout", 20.0)
        kwargs.setdefault("max_attempts", 3)
        return S3Options(endpoint_url=self.endpoint_url, **kwargs)

    def bucket(self, name: str | None = None) -> str:
        """Create a new bucket (a unique name unless given) and return its name."""
        name = name or f"test-bucket-{os.getpid()}-{next(self._names)}"
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", ())]

    @staticmethod
    def spark_env(spark: Any) -> None:
        """Give Spark's Python workers the test credentials (for RDDs created after this)."""
        sc = getattr(spark, "sparkContext", spark)
        sc.environment.update(CREDENTIALS)

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the whole test session."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in (*CREDENTIALS, *_ENV_CLEARED)}
    for k in _ENV_CLEARED:
        os.environ.pop(k, None)
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    s = S3Server(server)
    try:
        yield s
    finally:
        s.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
