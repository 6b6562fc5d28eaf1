"""MNIST: the four IDX files, gzipped or not, from a local path, S3 or HDFS.

The files keep their usual names (``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``,
``t10k-labels-idx1-ubyte[.gz]``) in one folder, prefix or URI. The IDX header
is checked: magic number (2051 for images, 2049 for labels), dimensions, and
the exact data length; a truncated or padded file raises a ``ValueError``
naming it.
"""
from __future__ import annotations

import logging
import struct
from typing import Any, Literal

import numpy as np

from sparknet.data.rdd import DataError, to_dataframe, to_rdd
from sparknet.io import (
    PathLike,
    atomic_write_bytes,
    join,
    maybe_gunzip,
    read_first,
)
from sparknet.io.s3 import S3Options

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

#: IDX type codes -> big-endian numpy dtypes.
_IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
              0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

#: Caffe's MNIST example scales bytes by 1/256 (``scale: 0.00390625``).
CAFFE_SCALE = 0.00390625


def parse_idx(data: bytes, name: str = "<idx>", *, magic: int | None = None) -> np.ndarray:
    """Parse IDX bytes (gzip allowed) into an array; ``magic`` checks the magic number.

    Raises ``ValueError`` naming ``name`` for a wrong magic number, a bad type
    code, a truncated header or data of the wrong length.
    """
    data = maybe_gunzip(data, name)
    if len(data) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(data)} bytes, no header)")
    (found,) = struct.unpack(">I", data[:4])
    if magic is not None and found != magic:
        raise DataError(f"{name}: wrong magic number {found} (0x{found:08x}), expected "
                         f"{magic} (0x{magic:08x}); is this the right IDX file?")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_TYPES or ndim == 0:
        raise DataError(f"{name}: not an IDX file (magic 0x{found:08x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, needs {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise DataError(f"{name}: truncated IDX file: dimensions {dims} need {expected} "
                         f"bytes of data, found {got}")
    if got > expected:
        raise DataError(f"{name}: {got - expected} unexpected bytes after the data "
                         f"(dimensions {dims})")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: PathLike, array: np.ndarray, *, gzip_level: int | None = None) -> None:
    """Write ``array`` as an IDX file (gzipped when ``gzip_level`` is given), atomically."""
    a = np.asarray(array)
    code = _IDX_CODES.get(a.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX has no type for dtype {a.dtype}")
    header = struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    body = header + a.astype(_IDX_TYPES[code]).tobytes()
    if gzip_level is not None:
        import gzip

        body = gzip.compress(body, gzip_level, mtime=0)
    atomic_write_bytes(path, body)


def _read_split(path: PathLike, split: Split, s3: S3Options | None, spark: Any
                ) -> tuple[np.ndarray, np.ndarray]:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_name, labels_name = _FILES[split]
    found = []
    for base, magic in ((images_name, IMAGES_MAGIC), (labels_name, LABELS_MAGIC)):
        uri, data = read_first([join(path, base), join(path, base + ".gz")], s3=s3, spark=spark)
        found.append((uri, parse_idx(data, uri, magic=magic)))
    (img_uri, images), (lab_uri, labels) = found
    if images.ndim != 3:
        raise DataError(f"{img_uri}: MNIST images are (N, rows, cols), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{lab_uri}: MNIST labels are (N,), got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{img_uri} has {len(images)} images but {lab_uri} has "
                         f"{len(labels)} labels")
    log.info("MNIST %s: %d images of %dx%d from %s", split, len(images), images.shape[1],
             images.shape[2], img_uri)
    return images.astype(np.uint8, copy=False), labels


def load_mnist(path: PathLike, split: Split = "train", *, scale: float = CAFFE_SCALE,
               s3: S3Options | None = None, spark: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: float32 ``(N, 1, 28, 28)`` times ``scale``, float32 ``(N,)``.

    ``path`` is the folder (local, ``s3://bucket/prefix``, ``hdfs://...``)
    holding the four IDX files, gzipped or not. ``scale`` defaults to Caffe's
    1/256, putting pixels in [0, 1). Hadoop URIs are read through ``spark``
    (or the active session); S3 through ``s3`` (default: boto3's chain).
    """
    images, labels = _read_split(path, split, s3, spark)
    x = images[:, None].astype(np.float32)
    if scale != 1.0:
        x *= np.float32(scale)
    return x, labels.astype(np.float32)


def mnist_rdd(spark: Any, path: PathLike, split: Split = "train", *,
              num_partitions: int | None = None, scale: float = CAFFE_SCALE,
              s3: S3Options | None = None) -> Any:
    """An RDD of ``(float32 (1, 28, 28), label)`` pairs for the trainer.

    The files are read and checked once on the driver; the pixels travel to
    the workers as bytes and are scaled to float32 there.
    """
    images, labels = _read_split(path, split, s3, spark)
    return to_rdd(spark, images[:, None], labels.astype(np.float32), num_partitions, scale=scale)


def mnist_dataframe(spark: Any, path: PathLike, split: Split = "train", *,
                    num_partitions: int | None = None, scale: float = CAFFE_SCALE,
                    s3: S3Options | None = None) -> Any:
    """A DataFrame with ``data`` (array<float>, 784 values, CHW) and ``label`` columns."""
    images, labels = _read_split(path, split, s3, spark)
    return to_dataframe(spark, images[:, None], labels.astype(np.float32),
                        num_partitions=num_partitions, scale=scale)
