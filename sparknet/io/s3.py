"""S3 access for the loaders: clients, clear errors, resumable object streams.

Endpoint, region and credentials come from boto3's standard chain
(environment, shared config and credentials files, instance or container
roles; ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible
stores); an explicit ``endpoint_url`` overrides the endpoint. Every client has
connect and read timeouts, so a stalled connection raises instead of hanging a
Spark worker, and :class:`S3ObjectReader` resumes a broken download from the
byte it had reached.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from sparknet._util import UserError

log = logging.getLogger(__name__)

#: Errors while streaming a body that are worth resuming from the current offset.
_STREAM_RETRIES = 5


@dataclass(frozen=True)
class S3Options:
    """How to reach S3: picklable, so it travels to Spark workers.

    ``endpoint_url`` and ``region_name`` default to boto3's chain;
    ``connect_timeout`` / ``read_timeout`` are seconds; ``max_attempts`` is
    botocore's retry budget for each request.
    """

    endpoint_url: str | None = None
    region_name: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_attempts: int = 8
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self) -> Any:
        """A new boto3 S3 client with these options."""
        import boto3
        from botocore.config import Config

        config = Config(connect_timeout=self.connect_timeout, read_timeout=self.read_timeout,
                        retries={"max_attempts": self.max_attempts, "mode": "standard"})
        kwargs: dict[str, Any] = {"config": config, **self.extra}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.region_name:
            kwargs["region_name"] = self.region_name
        return boto3.session.Session().client("s3", **kwargs)

    def where(self) -> str:
        """Words for error messages: which endpoint."""
        return f" at {self.endpoint_url}" if self.endpoint_url else ""


class NoSuchBucketError(UserError, FileNotFoundError):
    """The S3 bucket itself does not exist."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` (or ``s3a://``, ``s3n://``) -> ``(bucket, key)``."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a", "s3n") or not parsed.netloc:
        raise ValueError(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_error(exc: Exception, bucket: str, key: str | None = None,
             options: S3Options | None = None) -> Exception:
    """A clear Python exception for a botocore ``ClientError``, naming bucket and key."""
    from botocore.exceptions import ClientError

    where = options.where() if options else ""
    target = f"s3://{bucket}/{key}" if key is not None else f"S3 bucket '{bucket}'"
    if not isinstance(exc, ClientError):
        return OSError(f"{target}{where}: {exc}")
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        return NoSuchBucketError(f"S3 bucket '{bucket}' does not exist{where}")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        if key is None:
            return NoSuchBucketError(f"S3 bucket '{bucket}' does not exist{where}")
        return FileNotFoundError(f"{target} does not exist{where}")
    if code in ("AccessDenied", "403", "Forbidden") or status == 403:
        return PermissionError(f"{target}{where}: access denied ({err.get('Message', code)})")
    return OSError(f"{target}{where}: {code or status}: {err.get('Message', exc)}")


def list_keys(client: Any, bucket: str, prefix: str, *, suffixes: tuple[str, ...] = (),
              options: S3Options | None = None) -> Iterator[tuple[str, int]]:
    """Yield ``(key, size)`` for the keys under ``prefix`` (ending in one of ``suffixes``).

    Pages through ``ListObjectsV2`` lazily; only keys under the prefix are
    asked for. A missing bucket raises ``FileNotFoundError`` naming it.
    """
    from botocore.exceptions import ClientError

    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                key = obj["Key"]
                if not suffixes or key.endswith(suffixes):
                    yield key, int(obj.get("Size", 0))
    except ClientError as e:
        raise s3_error(e, bucket, None, options) from None


def head(client: Any, bucket: str, key: str, options: S3Options | None = None) -> dict | None:
    """``HeadObject``'s answer, or ``None`` when the key does not exist.

    A missing bucket raises ``FileNotFoundError``.
    """
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status != 404:
            raise s3_error(e, bucket, key, options) from None
    # HEAD carries no error body: tell a missing key from a missing bucket.
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        raise s3_error(e, bucket, None, options) from None
    return None


class S3ObjectReader(io.RawIOBase):
    """A read-only, forward-only stream over one S3 object.

    A read that fails mid-body (timeout, reset connection, short body) is
    resumed with a ranged ``GET`` from the current offset, pinned to the
    object's ETag, up to ``retries`` times in a row and ``max_resumes`` times
    in all (a connection that keeps breaking fails rather than crawls); after
    that an ``OSError`` naming the key is raised. Wrap it in
    ``io.BufferedReader`` for small reads.
    """

    def __init__(self, client: Any, bucket: str, key: str, *, retries: int = _STREAM_RETRIES,
                 max_resumes: int = 16, options: S3Options | None = None):
        super().__init__()
        self._client = client
        self.bucket = bucket
        self.key = key
        self._retries = retries
        self._max_resumes = max_resumes
        self.resumes = 0
        self._options = options
        self._pos = 0
        self._etag: str | None = None
        self.size: int | None = None
        self._body: Any = None
        self._open()

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def _open(self) -> None:
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if self._pos:
            kwargs["Range"] = f"bytes={self._pos}-"
        if self._etag:
            kwargs["IfMatch"] = self._etag
        try:
            resp = self._client.get_object(**kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code == "PreconditionFailed":
                raise OSError(f"{self.uri} changed while it was being read") from None
            raise s3_error(e, self.bucket, self.key, self._options) from None
        self._body = resp["Body"]
        if self._etag is None:
            self._etag = resp.get("ETag")
            self.size = int(resp.get("ContentLength", 0))

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:  # type: ignore[override]
        from botocore.exceptions import (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        from urllib3.exceptions import HTTPError as Urllib3Error

        view = memoryview(b).cast("B")
        if self.size is not None and self._pos >= self.size:
            return 0
        failures = 0
        while True:
            try:
                data = self._body.read(len(view))
                if not data and self.size is not None and self._pos < self.size:
                    raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self.size)
                break
            except (ReadTimeoutError, ResponseStreamingError, IncompleteReadError,
                    ConnectionClosedError, ConnectionError, Urllib3Error, TimeoutError) as e:
                failures += 1
                self.resumes += 1
                if failures > self._retries or self.resumes > self._max_resumes:
                    raise OSError(f"{self.uri}: reading failed at byte {self._pos} after "
                                  f"{self.resumes - 1} resumed attempts: {e}") from e
                log.warning("%s: read failed at byte %d (%s); resuming", self.uri, self._pos, e)
                time.sleep(min(0.05 * 2 ** failures, 5.0))
                self._close_body()
                self._open()
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


def open_s3(client: Any, bucket: str, key: str, *, buffer_size: int = 1 << 20,
            options: S3Options | None = None) -> io.BufferedReader:
    """A buffered, resumable binary stream over ``s3://bucket/key``."""
    return io.BufferedReader(S3ObjectReader(client, bucket, key, options=options), buffer_size)


def read_s3(uri: str, options: S3Options | None = None) -> bytes:
    """The whole object at ``s3://bucket/key`` (for small files: IDX, CIFAR, label lists)."""
    bucket, key = parse_s3_uri(uri)
    opts = options or S3Options()
    with open_s3(opts.client(), bucket, key, options=opts) as f:
        return f.read()
