"""Storage: a local folder or an S3 prefix, written and read by name.

What a training run keeps (checkpoints, saved weights) goes through one
:class:`Storage`, whichever of the two it is: files written whole (a
temporary name and a rename locally; one complete ``PutObject`` on S3),
folders published so that a reader sees all of one or none of it. What the
names mean (the layout of a checkpoint) is the caller's.
"""
from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparknet.io.files import PathLike, atomic_file, atomic_write_bytes, named_os_error, replace_dir
from sparknet.io.s3 import NoSuchBucketError, S3Options
from sparknet.io.uris import is_s3, read_bytes

__all__ = ["LocalStorage", "S3Storage", "Storage", "open_storage"]


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

    def folders(self, prefix: str, marker: str) -> list[str]:  # pragma: no cover - interface
        """The folders named ``prefix*`` that hold a file ``marker`` (complete ones), sorted."""
        raise NotImplementedError

    def delete_tree(self, name: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def publish(self, name: str, staged: Path, last: str | None = None) -> None:  # pragma: no cover - interface
        """Make the staged folder ``staged`` visible as ``name``.

        Locally the folder appears whole (a rename); on S3 file by file, the
        file named ``last`` (the marker :meth:`folders` looks for) after the
        others.
        """
        raise NotImplementedError

    def staging(self) -> Path:  # pragma: no cover - interface
        """A fresh local folder to assemble what :meth:`publish` puts in place."""
        raise NotImplementedError

    def where(self, name: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{name}" if name else self.uri


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

    def folders(self, prefix: str, marker: str) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and p.name.startswith(prefix) and (p / marker).is_file())

    def delete_tree(self, name: str) -> None:
        shutil.rmtree(self.root / name, ignore_errors=True)

    def publish(self, name: str, staged: Path, last: str | None = None) -> None:
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
        from sparknet.io.s3 import parse_s3_uri

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
        from sparknet.io.s3 import open_s3

        with open_s3(self.client, self.bucket, self._key(name), options=self.options) as f:
            return f.read()

    def write_file(self, name: str, path: Path) -> None:
        with open(path, "rb") as f:
            self._put(name, f)

    def _put(self, name: str, body: Any) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        from sparknet.io.s3 import s3_error

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=body)
        except (ClientError, BotoCoreError) as e:
            raise s3_error(e, self.bucket, self._key(name), self.options) from None

    def _list(self, name: str) -> Iterator[str]:
        from sparknet.io.s3 import list_keys

        for key, _ in list_keys(self.client, self.bucket, self._key(name),
                                options=self.options):
            yield key

    def folders(self, prefix: str, marker: str) -> list[str]:
        base = self._key("")
        names = set()
        for key in self._list(prefix):
            folder, _, leaf = key[len(base):].partition("/")
            if leaf == marker:
                names.add(folder)
        return sorted(names)

    def delete_tree(self, name: str) -> None:
        keys = list(self._list(name.rstrip("/") + "/"))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})

    def publish(self, name: str, staged: Path, last: str | None = None) -> None:
        files = sorted(p for p in staged.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == last)  # the marker of completeness goes up last
        for p in files:
            self.write_file(f"{name}/{p.relative_to(staged).as_posix()}", p)

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="sparknet-ckpt-"))


def open_storage(uri: PathLike, s3_options: S3Options | None = None) -> Storage:
    """The storage for ``uri``: ``s3://bucket/prefix`` or a local folder."""
    if is_s3(uri):
        return S3Storage(str(uri), s3_options)
    return LocalStorage(uri)
