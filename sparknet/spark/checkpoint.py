"""Training checkpoints on a local path or S3, written so that a reader never sees half of one.

A checkpoint of round *r* is a folder (an S3 prefix) ``round-<r>/`` holding

* ``weights.caffemodel`` — the averaged (EASGD: centre) weights, Caffe's format;
* ``workers/part-<p>.solverstate`` (and ``.caffemodel`` for EASGD) — each
  partition's solver state: iteration, momentum history, local weights;
* ``state.json`` — the round, the configuration, the seeds, the elapsed time
  and the history so far; written last.

and the top-level ``latest`` file names the newest complete checkpoint.
Locally, a checkpoint is assembled in a temporary folder and renamed into
place, then ``latest`` is replaced atomically; on S3 every file is one
complete ``PutObject`` and ``state.json`` then ``latest`` go last. Reading
trusts ``latest`` and falls back to the newest ``round-*`` with a
``state.json``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sparknet.data._io import atomic_file, named_os_error

log = logging.getLogger(__name__)

LATEST = "latest"
STATE = "state.json"
WEIGHTS = "weights.caffemodel"


def round_name(rnd: int) -> str:
    return f"round-{rnd:06d}"


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(("s3://", "s3a://", "s3n://"))


class Storage:
    """Where checkpoints go: a local folder or an S3 prefix (same interface)."""

    uri: str

    def write_bytes(self, name: str, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def write_file(self, name: str, path: Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes | None:  # pragma: no cover - interface
        raise NotImplementedError

    def download(self, name: str, path: Path) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def rounds(self) -> list[str]:  # pragma: no cover - interface
        raise NotImplementedError

    def delete_tree(self, name: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def publish(self, name: str, staged: Path) -> None:  # pragma: no cover - interface
        """Make the staged checkpoint folder ``staged`` visible as ``name`` (atomically)."""
        raise NotImplementedError

    def where(self, name: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{name}" if name else self.uri


class LocalStorage(Storage):
    """A local folder; files are written to a temporary name and renamed."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.uri = str(self.root)

    def write_bytes(self, name: str, data: bytes) -> None:
        with atomic_file(self.root / name) as f:  # a failed write leaves the old file
            f.write(data)

    def write_file(self, name: str, path: Path) -> None:
        with atomic_file(self.root / name) as f, open(path, "rb") as src:
            shutil.copyfileobj(src, f)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def download(self, name: str, path: Path) -> bool:
        src = self.root / name
        if not src.is_file():
            return False
        shutil.copyfile(src, path)
        return True

    def rounds(self) -> list[str]:
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
        if dest.exists():  # a checkpoint of the same round from an earlier attempt
            old = self.root / f".{name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, dest)

    def staging(self) -> Path:
        """A fresh folder next to the checkpoints (same file system: rename is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))


class S3Storage(Storage):
    """An S3 prefix; each file is one complete ``PutObject`` (S3 has no partial objects)."""

    def __init__(self, uri: str, options: Any = None):
        from sparknet.data.s3 import S3Options, parse_s3_uri

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

    def _error(self, e: Exception, name: str | None) -> Exception:
        from sparknet.data.s3 import s3_error

        return s3_error(e, self.bucket, None if name is None else self._key(name), self.options)

    def write_bytes(self, name: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, name) from None

    def write_file(self, name: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            with open(path, "rb") as f:
                self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=f)
        except (ClientError, BotoCoreError) as e:
            raise self._error(e, name) from None

    def read_bytes(self, name: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(e, name) from None

    def download(self, name: str, path: Path) -> bool:
        data = self.read_bytes(name)
        if data is None:
            return False
        path.write_bytes(data)
        return True

    def _list(self, name: str) -> Iterator[str]:
        from sparknet.data.s3 import list_keys

        prefix = self._key(name)
        for key, _ in list_keys(self.client, self.bucket, prefix, options=self.options):
            yield key

    def rounds(self) -> list[str]:
        base = self._key("")
        names = set()
        for key in self._list("round-"):
            rest = key[len(base):]
            folder, _, leaf = rest.partition("/")
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
        # state.json marks the checkpoint complete: it goes up last
        files.sort(key=lambda p: p.name == STATE)
        for p in files:
            self.write_file(f"{name}/{p.relative_to(staged).as_posix()}", p)

    def staging(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="sparknet-ckpt-"))


def open_storage(uri: str | os.PathLike, s3_options: Any = None) -> Storage:
    """The storage for ``uri``: ``s3://bucket/prefix`` or a local folder."""
    if is_s3(uri):
        return S3Storage(str(uri), s3_options)
    return LocalStorage(uri)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (corrupt, truncated, incomplete).

    ``checkpoint`` is where it is (a folder or ``s3://`` prefix).
    """

    def __init__(self, message: str, checkpoint: str):
        super().__init__(message)
        self.checkpoint = checkpoint


def _fingerprint(path: Path) -> dict[str, int]:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return {"bytes": path.stat().st_size, "crc32": crc}


class Checkpoints:
    """Write and find the checkpoints of one training run."""

    def __init__(self, storage: Storage, keep: int = 2):
        self.storage = storage
        self.keep = max(1, int(keep))

    def begin(self) -> Path:
        """A local folder to assemble the next checkpoint in."""
        return self.storage.staging()

    def commit(self, rnd: int, staged: Path, state: Mapping[str, Any]) -> str:
        """Publish the staged checkpoint of round ``rnd``; returns where it is."""
        name = round_name(rnd)
        # sizes and checksums of the other files: a resume recognises a truncated or
        # corrupted one, names it and falls back to an older checkpoint
        files = {p.relative_to(staged).as_posix(): _fingerprint(p)
                 for p in sorted(staged.rglob("*")) if p.is_file() and p.name != STATE}
        state = {**state, "files": files}
        (staged / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))
        try:
            self.storage.publish(name, staged)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
        self.storage.write_bytes(LATEST, (name + "\n").encode())
        for old in self.storage.rounds()[:-self.keep]:
            if old != name:
                self.storage.delete_tree(old)
        return self.storage.where(name)

    def latest(self) -> str | None:
        """The name of the newest complete checkpoint, if any."""
        data = self.storage.read_bytes(LATEST)
        if data:
            name = data.decode().strip()
            if self.storage.read_bytes(f"{name}/{STATE}") is not None:
                return name
            log.warning("%s names %s, which is incomplete; looking for another",
                        self.storage.where(LATEST), name)
        found = self.storage.rounds()
        return found[-1] if found else None

    def candidates(self) -> list[str]:
        """Complete checkpoints, newest first (``latest``'s first when it names one)."""
        found = sorted(self.storage.rounds(), reverse=True)
        first = self.latest()
        if first is not None and first in found:
            found.remove(first)
        return ([first] if first is not None else []) + found

    def load_state(self, name: str) -> dict[str, Any]:
        """The checkpoint's ``state.json``; :class:`CheckpointError` naming it if unreadable."""
        where = self.storage.where(f"{name}/{STATE}")
        data = self.storage.read_bytes(f"{name}/{STATE}")
        if data is None:
            raise CheckpointError(f"{where} is missing", self.storage.where(name))
        try:
            state = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{where} is not valid JSON (truncated or corrupt: {e})",
                                  self.storage.where(name)) from None
        if not isinstance(state, dict) or not isinstance(state.get("round"), int):
            raise CheckpointError(f"{where} holds no round number: not a sparknet checkpoint "
                                  f"state", self.storage.where(name))
        return state

    def read_file(self, name: str, state: Mapping[str, Any], fname: str) -> bytes:
        """One file of a checkpoint, checked against the size and checksum ``state`` records."""
        where = self.storage.where(f"{name}/{fname}")
        data = self.storage.read_bytes(f"{name}/{fname}")
        if data is None:
            raise CheckpointError(f"{where} is missing", self.storage.where(name))
        want = state.get("files", {}).get(fname)
        if want is not None:
            if len(data) != want.get("bytes"):
                raise CheckpointError(f"{where} is {len(data)} bytes, but the checkpoint "
                                      f"recorded {want.get('bytes')} (truncated?)",
                                      self.storage.where(name))
            if zlib.crc32(data) != want.get("crc32"):
                raise CheckpointError(f"{where} does not match its recorded checksum "
                                      f"(corrupt)", self.storage.where(name))
        return data
