"""CIFAR-10: the binary batches (``data_batch_1..5.bin``, ``test_batch.bin``).

Each record is one label byte (0-9) and 3072 pixel bytes: 32x32 red, then
green, then blue (CHW, RGB). A file whose length is not a whole number of
records raises a ``ValueError`` naming it, as does a label byte above 9 (a
CIFAR-100 file, say). Training examples are shuffled with a seed, as
SparkNet's CifarApp did before splitting them across workers.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from sparknet.data.rdd import DataError, to_dataframe, to_rdd
from sparknet.io import PathLike, atomic_write_bytes, join, read_bytes
from sparknet.io.s3 import S3Options

log = logging.getLogger(__name__)

Split = Literal["train", "test"]

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def parse_cifar(data: bytes, name: str = "<cifar>") -> tuple[np.ndarray, np.ndarray]:
    """One binary batch -> uint8 ``(N, 3, 32, 32)`` images and uint8 ``(N,)`` labels."""
    if len(data) == 0 or len(data) % RECORD:
        raise DataError(f"{name}: {len(data)} bytes is not a whole number of CIFAR-10 records "
                         f"({RECORD} bytes each: 1 label + 3072 pixels); "
                         f"truncated, or not a CIFAR-10 binary batch")
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
    labels = records[:, 0]
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise DataError(f"{name}: record {int(bad[0])} has label {int(labels[bad[0]])} "
                         "(CIFAR-10 labels are 0-9; is this a CIFAR-100 file?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def write_cifar(path: PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Write uint8 ``(N, 3, 32, 32)`` images and labels as a CIFAR-10 binary batch."""
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels)
    if images.shape[1:] != (3, 32, 32) or len(images) != len(labels):
        raise ValueError(f"expected (N, 3, 32, 32) images and N labels, got {images.shape} "
                         f"and {labels.shape}")
    records = np.empty((len(images), RECORD), np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(images), -1)
    atomic_write_bytes(path, records.tobytes())


def _read(path: PathLike, split: Split, files: Sequence[str] | None, s3: S3Options | None,
          spark: Any, shuffle_seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    if files is None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        files = TRAIN_FILES if split == "train" else TEST_FILES
    xs, ys = [], []
    for name in files:
        uri = join(path, name)
        x, y = parse_cifar(read_bytes(uri, s3=s3, spark=spark), uri)
        xs.append(x)
        ys.append(y)
    images = np.concatenate(xs)
    labels = np.concatenate(ys)
    if shuffle_seed is not None:
        perm = np.random.default_rng(shuffle_seed).permutation(len(images))
        images, labels = images[perm], labels[perm]
    log.info("CIFAR-10 %s: %d images from %d files under %s", split, len(images), len(files),
             path)
    return images, labels


def load_cifar10(path: PathLike, split: Split = "train", *, shuffle_seed: int | None = None,
                 scale: float = 1.0, files: Sequence[str] | None = None,
                 s3: S3Options | None = None, spark: Any = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: float32 ``(N, 3, 32, 32)`` RGB pixel values times ``scale``.

    ``path``: the folder (local, ``s3://``, ``hdfs://``) holding the batches;
    ``files`` overrides which batch files are read. ``shuffle_seed`` shuffles
    the examples (the default keeps file order). Caffe's CIFAR-10 example
    subtracts a mean image and does not scale; see :class:`Transformer`.
    """
    images, labels = _read(path, split, files, s3, spark, shuffle_seed)
    x = images.astype(np.float32)
    if scale != 1.0:
        x *= np.float32(scale)
    return x, labels.astype(np.float32)


def cifar10_rdd(spark: Any, path: PathLike, split: Split = "train", *,
                shuffle_seed: int | None = 0, num_partitions: int | None = None,
                scale: float = 1.0, files: Sequence[str] | None = None,
                s3: S3Options | None = None) -> Any:
    """An RDD of ``(float32 (3, 32, 32), label)`` pairs, shuffled with ``shuffle_seed``.

    Read and checked on the driver (180 MB at most), shipped to the workers as
    bytes, converted to float32 there.
    """
    images, labels = _read(path, split, files, s3, spark, shuffle_seed)
    return to_rdd(spark, images, labels.astype(np.float32), num_partitions, scale=scale)


def cifar10_dataframe(spark: Any, path: PathLike, split: Split = "train", *,
                      shuffle_seed: int | None = 0, num_partitions: int | None = None,
                      scale: float = 1.0, s3: S3Options | None = None) -> Any:
    """A DataFrame with ``data`` (array<float>, 3072 values, CHW) and ``label`` columns."""
    images, labels = _read(path, split, None, s3, spark, shuffle_seed)
    return to_dataframe(spark, images, labels.astype(np.float32),
                        num_partitions=num_partitions, scale=scale)
