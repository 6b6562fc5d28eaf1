"""Whole files by URI: local paths, ``s3://`` and any Hadoop file system; the SparkContext.

Hadoop URIs (``hdfs://``, ``abfs://``...) are read through Spark, which is why
:func:`spark_context` (a SparkContext from whatever the user passed) lives
here too, below every room that needs one, with :func:`is_connect` (is it a
Spark Connect client, which has no SparkContext?) and
:func:`default_parallelism`, which both kinds of session answer.
"""
from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sparknet._util import UserError
from sparknet.io.files import PathLike
from sparknet.io.s3 import NoSuchBucketError, S3Options

__all__ = ["ConnectUnsupportedError", "CorruptFileError", "default_parallelism", "is_connect", "is_s3", "join",
           "local_path", "maybe_gunzip", "read_bytes", "read_first", "scheme", "spark_context"]


def scheme(uri: PathLike) -> str:
    """``""`` for a local path (or ``file:``), else the URI scheme (``s3``, ``hdfs``, ...)."""
    s = os.fspath(uri)
    parsed = urlparse(s)
    if len(parsed.scheme) <= 1 or parsed.scheme == "file":  # C:\ on Windows, or file://
        return ""
    return parsed.scheme


def local_path(uri: PathLike) -> Path:
    """The local path of a plain path or a ``file:`` URI."""
    s = os.fspath(uri)
    return Path(urlparse(s).path) if s.startswith("file:") else Path(s)


def join(base: PathLike, name: str) -> str:
    """``base/name`` for local paths and URIs alike."""
    b = os.fspath(base)
    return b + name if b.endswith("/") else f"{b}/{name}"


def is_s3(uri: PathLike) -> bool:
    """Whether ``uri`` names S3 (``s3://``, ``s3a://``, ``s3n://``)."""
    return str(uri).startswith(("s3://", "s3a://", "s3n://"))


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
        from sparknet.io.s3 import read_s3

        return read_s3(os.fspath(uri), s3)
    return _read_hadoop(os.fspath(uri), spark)


class ConnectUnsupportedError(RuntimeError):
    """Something that needs a SparkContext (RDDs) was asked of a Spark Connect session.

    The message names what was asked and what to use instead.
    """


def is_connect(spark: Any) -> bool:
    """Whether ``spark`` (a SparkSession, or a DataFrame) belongs to a Spark Connect client.

    Connect sessions and DataFrames are pyspark's ``pyspark.sql.connect`` classes; they have
    no SparkContext and no RDDs.
    """
    return type(spark).__module__.startswith("pyspark.sql.connect.")


def _connect_refusal(what: str | None, instead: str | None) -> ConnectUnsupportedError:
    return ConnectUnsupportedError(
        f"{what or 'this'} needs a SparkContext (RDDs), which a Spark Connect session does "
        f"not have; {instead or 'run it from a classic SparkSession (SparkSession.builder.master(...))'}")


def spark_context(spark: Any = None, *, what: str | None = None,
                  instead: str | None = None) -> Any:
    """The SparkContext of ``spark`` (a SparkSession or SparkContext), or the active one.

    ``TypeError`` for anything else; ``ValueError`` when none is given and
    none is running; :class:`ConnectUnsupportedError` for a Spark Connect
    session, saying that ``what`` needs one and to do ``instead``.
    """
    if is_connect(spark):
        raise _connect_refusal(what, instead)
    if spark is None:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        if sc is None:
            raise ValueError("this needs a SparkSession: pass spark=...")
        return sc
    sc = getattr(spark, "sparkContext", spark)
    if not hasattr(sc, "parallelize"):
        raise TypeError(f"expected a SparkSession or SparkContext, got {type(spark).__name__}")
    return sc


def default_parallelism(spark: Any) -> int:
    """Spark's default parallelism for ``spark`` (a SparkSession or SparkContext, Connect too).

    A Connect client cannot ask the SparkContext: it counts the partitions of a range that
    Spark splits by that default (one small job, once per session).
    """
    if not is_connect(spark):
        return int(spark_context(spark).defaultParallelism)
    found = _PARALLELISM.get(spark.session_id)
    if found is None:
        from pyspark.sql import functions as F

        # spark.range without numPartitions is split into the default parallelism's parts
        top = (spark.range(1 << 16).select(F.spark_partition_id().alias("p"))
               .agg(F.max("p")).first()[0])
        found = _PARALLELISM[spark.session_id] = int(top) + 1
    return found


_PARALLELISM: dict[str, int] = {}


def _read_hadoop(uri: str, spark: Any) -> bytes:
    session = spark
    if spark is None:
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
    connect = is_connect(session)
    sc = None if connect else spark_context(spark)
    try:
        if connect:  # no SparkContext: Spark's binaryFile source reads it
            found = [r[0] for r in session.read.format("binaryFile").load(uri)
                     .select("content").take(2)]
        else:
            found = [content for _, content in sc.binaryFiles(uri).take(2)]
    except Exception as e:  # noqa: BLE001 - py4j wraps Hadoop's FileNotFoundException / InvalidInputException; Connect's AnalysisException says PATH_NOT_FOUND
        text = str(e)
        if any(m in text for m in ("does not exist", "FileNotFound", "No such file",
                                   "PATH_NOT_FOUND")):
            raise FileNotFoundError(f"{uri}: no such file") from None
        raise OSError(f"{uri}: {text.splitlines()[0] if text else type(e).__name__}") from None
    if not found:
        raise FileNotFoundError(f"{uri}: no such file")
    if len(found) > 1:
        raise ValueError(f"{uri} names more than one file")
    return bytes(found[0])


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


class CorruptFileError(UserError, ValueError):
    """A compressed file that does not decompress (corrupt or cut short): names the file."""


def maybe_gunzip(data: bytes, name: str) -> bytes:
    """Decompress gzip data (recognised by its magic bytes); other data is returned as is."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise CorruptFileError(f"{name}: corrupt or truncated gzip data ({e})") from None
