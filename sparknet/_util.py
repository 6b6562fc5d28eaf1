"""Small helpers every layer of sparknet shares; this module imports nothing of sparknet."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["UserError", "atomic_file", "atomic_write_bytes", "named_os_error", "shape_str"]

PathLike = str | os.PathLike


class UserError(Exception):
    """What marks an error as a mistake in what the user gave sparknet, not a bug in it.

    A file, an option, a net, a data set or a setting that cannot work: every
    documented error class of sparknet derives from this as well as from the
    built-in class it always was (``NetDefinitionError`` is still a
    ``ValueError``, ``CaffeError`` a ``RuntimeError``), so ``except ValueError``
    keeps working. The command line and the apps report these on one line with
    exit status 2; any other exception is a failure (exit status 1) and gets a
    pointer to where it was raised. Catch ``UserError`` to catch every such
    mistake, whichever room raised it.
    """


def shape_str(shape: Sequence[int]) -> str:
    """A shape as Python writes a tuple: ``(2, 3)``, ``(5,)``, ``()``."""
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


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
