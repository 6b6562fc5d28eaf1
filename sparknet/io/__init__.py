"""Where bytes live: atomic local files, URIs (local, ``s3://``, Hadoop), S3, storage by name.

The room below every other that reads or writes files:

* :mod:`~sparknet.io.files` — atomic files and folders, errors naming the file;
* :mod:`~sparknet.io.uris` — whole files by URI, and the session: :func:`spark_context`,
  :func:`is_connect` (a Spark Connect client), :func:`default_parallelism`;
* :mod:`~sparknet.io.s3` — S3 clients, clear errors, resumable object streams;
* :mod:`~sparknet.io.storage` — a local folder or an S3 prefix written and read
  by name (checkpoints, saved weights).

It imports nothing of sparknet but ``_util``; what the files mean (a
checkpoint's layout, a model's format) belongs to the rooms above.
"""
from sparknet.io.files import (
    PathLike,
    atomic_dir,
    atomic_file,
    atomic_write_bytes,
    named_os_error,
    replace_dir,
)
from sparknet.io.s3 import NoSuchBucketError, S3Options
from sparknet.io.storage import LocalStorage, S3Storage, Storage, open_storage
from sparknet.io.uris import (
    ConnectUnsupportedError,
    CorruptFileError,
    default_parallelism,
    is_connect,
    is_s3,
    join,
    local_path,
    maybe_gunzip,
    read_bytes,
    read_first,
    scheme,
    spark_context,
)

__all__ = [
    "ConnectUnsupportedError",
    "CorruptFileError",
    "LocalStorage",
    "NoSuchBucketError",
    "PathLike",
    "S3Options",
    "S3Storage",
    "Storage",
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "default_parallelism",
    "is_connect",
    "is_s3",
    "join",
    "local_path",
    "maybe_gunzip",
    "named_os_error",
    "open_storage",
    "read_bytes",
    "read_first",
    "replace_dir",
    "scheme",
    "spark_context",
]
