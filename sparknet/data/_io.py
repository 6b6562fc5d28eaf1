"""Reading whole files from local paths, S3 or any Hadoop file system; atomic writes."""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from sparknet.data.s3 import NoSuchBucketError, S3Options

PathLike = str | os.PathLike


def scheme(uri: PathLike) -> str:
    """``""`` for a local path (or ``file:``), else the URI scheme (``s3``, ``hdfs``, ...)."""
    s = os.fspath(uri)
    parsed = urlparse(s)
    if len(parsed.scheme) <= 1 or parsed.scheme == "file":  # C:\ on Windows, or file://
        return ""
    return parsed.scheme


def local_path(uri: PathLike) -> Path:
    s = os.fspath(uri)
    return Path(urlparse(s).path) if s.startswith("file:") else Path(s)


def join(base: PathLike, name: str) -> str:
    """``base/name`` for local paths and URIs alike."""
    b = os.fspath(base)
    return b + name if b.endswith("/") else f"{b}/{name}"


def read_bytes(uri: PathLike, *, s3: S3Options | None = None, spark: Any = None) -> bytes:
    """The bytes of one file: a local path, ``s3://``, or any Hadoop URI (``hdfs://``...).

    Hadoop URIs are read through Spark (``binaryFiles``), so they need
    ``spark`` (a SparkSession or SparkContext) or an active session. Missing
    files raise ``FileNotFoundError`` naming them.
    """
    kind = scheme(uri)
    if kind == "":
        path = local_path(uri)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
    if kind in ("s3", "s3a", "s3n"):
        from sparknet.data.s3 import read_s3

        return read_s3(os.fspath(uri), s3)
    return _read_hadoop(os.fspath(uri), spark)


def _spark_context(spark: Any) -> Any:
    if spark is None:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is None:
            raise ValueError("reading a Hadoop URI needs a SparkSession: pass spark=...")
        return sc
    return getattr(spark, "sparkContext", spark)


def _read_hadoop(uri: str, spark: Any) -> bytes:
    sc = _spark_context(spark)
    try:
        found = sc.binaryFiles(uri).take(2)
    except Exception as e:  # noqa: BLE001 - py4j wraps Hadoop's FileNotFoundException / InvalidInputException
        text = str(e)
        if "does not exist" in text or "FileNotFound" in text or "No such file" in text:
            raise FileNotFoundError(f"{uri}: no such file") from None
        raise OSError(f"{uri}: {text.splitlines()[0] if text else type(e).__name__}") from None
    if not found:
        raise FileNotFoundError(f"{uri}: no such file")
    if len(found) > 1:
        raise ValueError(f"{uri} names more than one file")
    return bytes(found[0][1])


def read_first(candidates: Sequence[PathLike], **kwargs: Any) -> tuple[str, bytes]:
    """``(uri, bytes)`` of the first candidate that exists; else name them all."""
    for uri in candidates:
        try:
            return os.fspath(uri), read_bytes(uri, **kwargs)
        except NoSuchBucketError:
            raise
        except FileNotFoundError:
            continue
    names = " or ".join(os.fspath(c) for c in candidates)
    raise FileNotFoundError(f"none of these files exists: {names}")


def maybe_gunzip(data: bytes, name: str) -> bytes:
    """Decompress gzip data (recognised by its magic bytes); other data is returned as is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{name}: corrupt or truncated gzip data ({e})") from None


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary file in the same folder, renamed on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise named_os_error(e, path) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # disk full, quota, file size limit: say which file
            raise named_os_error(e, path) from None
        raise


def named_os_error(error: OSError, path: PathLike) -> OSError:
    """``error`` naming ``path`` (a failed ``write`` names no file), of the same kind."""
    if error.filename is not None and os.fspath(error.filename) == os.fspath(path):
        return error
    if error.errno is None:
        return type(error)(f"{path}: {error}")
    return OSError(error.errno, error.strerror, os.fspath(path))


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + ``os.replace``)."""
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name next to ``path``, then move it into place.

    An existing ``path`` raises ``FileExistsError`` unless ``overwrite``; then
    the old folder is replaced only once the new one is complete.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
