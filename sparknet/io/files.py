"""Local files written so that nothing is ever half there: atomic files and folders.

The one home of atomic writes in sparknet: every room that writes a file a
user or another process reads (prototxt, ``.caffemodel``, checkpoints,
``mean.binaryproto``, LMDB folders, saved models) writes it through here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["PathLike", "atomic_dir", "atomic_file", "atomic_write_bytes", "named_os_error",
           "replace_dir"]

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_file(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Write ``path`` through a temporary file in the same folder, renamed on success.

    Readers see the old file or the new one, never half of one; a failed write
    (disk full, quota) leaves no temporary and raises an ``OSError`` naming
    ``path``. Text modes write UTF-8.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise named_os_error(e, path) from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
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
