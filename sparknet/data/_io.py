"""Files for every layer above: whole files from local paths, S3 or any Hadoop file system;
atomic writes; :class:`Storage`, a folder or S3 prefix written and read by name (checkpoints,
saved weights); and :func:`spark_context`, a SparkContext from whatever the user passed."""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sparknet._util import atomic_file as atomic_file  # the one home of atomic writes
from sparknet._util import atomic_write_bytes as atomic_write_bytes
from sparknet._util import named_os_error as named_os_error
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


def spark_context(spark: Any = None) -> Any:
    """The SparkContext of ``spark`` (a SparkSession or SparkContext), or the active one.

    ``TypeError`` for anything else; ``ValueError`` when none is given and
    none is running.
    """
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


def _read_hadoop(uri: str, spark: Any) -> bytes:
    sc = spark_context(spark)
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
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: PathLike, dest: PathLike) -> None:
    """Move the complete folder ``src`` to ``dest`` (same file system), replacing one there.

    A reader sees the old folder or the new one, never a mix; the old one is
    deleted afterwards.
    """
    src, dest = Path(src), Path(dest)
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / "x")
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)


# -- storage: a local folder or an S3 prefix, written and read by name -------------------------

def is_s3(uri: PathLike) -> bool:
    return str(uri).startswith(("s3://", "s3a://", "s3n://"))


class Storage:
    """A local folder or an S3 prefix (same interface); names are ``/``-separated."""

    uri: str

    def write_bytes(self, name: str, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def write_file(self, name: str, path: Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | None:
        """The bytes of ``name``, or ``None`` when there is no such file."""
        try:
            return self._read(name)
        except NoSuchBucketError:
            raise
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _read(self, name: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def download(self, name: str, path: Path) -> bool:
        data = self.read_bytes(name)
        if data is None:
            return False
        path.write_bytes(data)
        return True

    def rounds(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def delete_tree(self, name: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def publish(self, name: str, staged: Path) -> None:  # pragma: no cover - interface
        """Make the staged folder ``staged`` visible as ``name`` (atomically)."""
        raise NotImplementedError

    def staging(self) -> Path:  # pragma: no cover - interface
        """A fresh local folder to assemble what :meth:`publish` puts in place."""
        raise NotImplementedError

    def where(self, name: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{name}" if name else self.uri


#: The marker file of a complete ``round-*`` folder (see :meth:`Storage.rounds`).
STATE = "state.json"


class LocalStorage(Storage):
    """A local folder; files are written to a temporary name and renamed."""

    def __init__(self, root: PathLike):
        self.root = Path(root).expanduser()
        self.uri = str(self.root)

    def write_bytes(self, name: str, data: bytes) -> None:
        atomic_write_bytes(self.root / name, data)  # a failed write leaves the old file

    def _read(self, name: str) -> bytes:
        return read_bytes(self.root / name)

    def write_file(self, name: str, path: Path) -> None:
        with atomic_file(self.root / name) as f, open(path, "rb") as src:
            shutil.copyfileobj(src, f)

    def rounds(self) -> list[str]:
        """The ``round-*`` folders holding a ``state.json``, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and p.name.startswith("round-") and (p / STATE).is_file())

    def delete_tree(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)

    def publish(self, name: str, staged: Path) -> None:
        dest = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        if staged.parent != self.root:
            tmp = self.root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                shutil.copytree(staged, tmp)
            except OSError as e:  # disk full: no half copy stays behind
                shutil.rmtree(tmp, ignore_errors=True)
                raise named_os_error(e, dest) from None
        else:
            tmp = staged
        replace_dir(tmp, dest)  # an earlier attempt's folder of the same round goes

    def staging(self) -> Path:
        """A fresh folder next to the others (same file system: rename is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))


class S3Storage(Storage):
    """An S3 prefix; each file is one complete ``PutObject`` (S3 has no partial objects)."""

    def __init__(self, uri: str, options: S3Options | None = None):
        from sparknet.data.s3 import parse_s3_uri

        self.uri = uri.rstrip("/")
        self.bucket, prefix = parse_s3_uri(self.uri + "/")
        self.prefix = prefix.rstrip("/")
        self.options = options if options is not None else S3Options()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.options.client()
        return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def write_bytes(self, name: str, data: bytes) -> None:
        self._put(name, data)

    def _read(self, name: str) -> bytes:
        from sparknet.data.s3 import open_s3

        with open_s3(self.client, self.bucket, self._key(name), options=self.options) as f:
            return f.read()

    def write_file(self, name: str, path: Path) -> None:
        with open(path, "rb") as f:
            self._put(name, f)

    def _put(self, name: str, body: Any) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        from sparknet.data.s3 import s3_error

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=body)
        except (ClientError, BotoCoreError) as e:
            raise s3_error(e, self.bucket, self._key(name), self.options) from None

    def _list(self, name: str) -> Iterator[str]:
        from sparknet.data.s3 import list_keys

        for key, _ in list_keys(self.client, self.bucket, self._key(name),
                                options=self.options):
            yield key

    def rounds(self) -> list[str]:
        """The ``round-*`` prefixes holding a ``state.json``, oldest first."""
        base = self._key("")
        names = set()
        for key in self._list("round-"):
            folder, _, leaf = key[len(base):].partition("/")
            if leaf == STATE:
                names.add(folder)
        return sorted(names)

    def delete_tree(self, name: str) -> None:
        keys = list(self._list(name.rstrip("/") + "/"))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def publish(self, name: str, staged: Path) -> None:
        files = sorted(p for p in staged.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == STATE)  # the marker of completeness goes up last
        for p in files:
            self.write_file(f"{name}/{p.relative_to(staged).as_posix()}", p)

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="sparknet-ckpt-"))


def open_storage(uri: PathLike, s3_options: S3Options | None = None) -> Storage:
    """The storage for ``uri``: ``s3://bucket/prefix`` or a local folder."""
    if is_s3(uri):
        return S3Storage(str(uri), s3_options)
    return LocalStorage(uri)
