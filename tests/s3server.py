"""A real S3-compatible server on loopback for tests (moto's server mode), reusable.

Every test module has the fixture (``conftest.py`` imports it)::

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

import contextlib
import http.client
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sparknet-test",
    "AWS_SECRET_ACCESS_KEY": "sparknet-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_ENV_CLEARED = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


_BUCKET_NUMBERS = itertools.count()


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
        from sparknet.io.s3 import S3Options

        kwargs.setdefault("read_timeout", 20.0)
        kwargs.setdefault("max_attempts", 3)
        return S3Options(endpoint_url=self.endpoint_url, **kwargs)

    def bucket(self, name: str | None = None) -> str:
        """Create a new bucket (a unique name unless given) and return its name."""
        # Unique across servers too: moto's in-process servers share one backend.
        name = name or f"test-bucket-{os.getpid()}-{next(_BUCKET_NUMBERS)}"
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


class FlakyProxy:
    """An HTTP proxy on loopback in front of the S3 server that breaks chosen downloads.

    ``fail(key_part, after=..., mode="cut"|"stall", times=1)``: the next
    ``times`` GETs whose path contains ``key_part`` send their headers and
    ``after`` bytes of the body, then the connection is closed (``cut``) or
    goes silent for ``stall_s`` seconds first (``stall``). Everything else is
    forwarded unchanged. ``gets`` counts the GET requests per path.
    """

    def __init__(self, upstream: str, stall_s: float = 3.0):
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self._faults: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.stall_s = stall_s
        self.gets: dict[str, int] = {}
        self.ranges: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(*proxy._upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                fault = proxy._take(self.command, self.path, self.headers.get("Range"))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault is None:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[:fault["after"]])
                self.wfile.flush()
                if fault["mode"] == "stall":
                    time.sleep(proxy.stall_s)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def fail(self, key_part: str, *, after: int, mode: str = "cut", times: int = 1) -> None:
        with self._lock:
            self._faults.append({"key": key_part, "after": after, "mode": mode,
                                 "times": times})

    def _take(self, method: str, path: str, rng: str | None) -> dict[str, Any] | None:
        if method != "GET":
            return None
        with self._lock:
            self.gets[path] = self.gets.get(path, 0) + 1
            if rng:
                self.ranges.append(rng)
            for f in self._faults:
                if f["key"] in path and f["times"] > 0:
                    f["times"] -= 1
                    return f
        return None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture()
def flaky_s3(s3: S3Server) -> Iterator[FlakyProxy]:
    """A :class:`FlakyProxy` in front of the session's S3 server."""
    proxy = FlakyProxy(s3.endpoint_url)
    try:
        yield proxy
    finally:
        proxy.stop()


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
