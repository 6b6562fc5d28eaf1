"""The bundled default data set: scikit-learn's handwritten digits.

1797 real 8x8 grey images (they ship with scikit-learn, so nothing is
downloaded), upscaled to MNIST's 28x28 so that MNIST nets such as LeNet run on
them unchanged. The train/test split is deterministic: every image whose index
is a multiple of 5 is a test image (360 test, 1437 train), stratified enough
for all ten classes to appear on both sides.
"""
from __future__ import annotations

import functools
import gzip
from typing import Any, Literal

import numpy as np

from sparknet._util import positional_deprecated

Split = Literal["train", "test", "all"]
SIZE = 28


def _packaged() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as its ``load_digits`` gives them: float64 ``(1797, 8, 8)``
    images (0..16) and their labels.

    Read from the file scikit-learn ships, as ``load_digits`` reads it, but without
    importing scikit-learn: ``sklearn.datasets`` pulls in scipy and pandas, 1.3 CPU-seconds
    that every Spark worker loading its slice of the digits would pay before its first
    example.
    """
    from sparknet.data.rdd import packaged_file

    try:
        path = packaged_file("sklearn", "datasets", "data", "digits.csv.gz",
                             what="the bundled digits", pip="scikit-learn")
    except FileNotFoundError:  # a scikit-learn that keeps them elsewhere: ask it
        from sklearn.datasets import load_digits as sk_digits

        digits = sk_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def _all() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images, labels = _packaged()
    # Values are 0..16; scale to [0, 1] like Caffe's MNIST example (1/256 of bytes).
    images = images.astype(np.float32) / 16.0
    x = np.stack([
        np.asarray(Image.fromarray(img, mode="F").resize((SIZE, SIZE), Image.BILINEAR))
        for img in images
    ])[:, None, :, :]
    x = np.clip(x, 0.0, 1.0).astype(np.float32)
    y = labels.astype(np.float32)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def load_digits(split: Split = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: float32 ``(N, 1, 28, 28)`` in [0, 1] and float32 ``(N,)``.

    ``split`` is ``"train"`` (1437 images), ``"test"`` (360) or ``"all"``.
    The arrays are read-only and shared between calls.
    """
    x, y = _all()
    if split == "all":
        return x, y
    test = np.arange(len(y)) % 5 == 0
    if split == "test":
        return x[test], y[test]
    if split == "train":
        return x[~test], y[~test]
    raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")


@positional_deprecated("num_partitions")
def digits_rdd(spark: Any, split: Split = "train", *, num_partitions: int | None = None
               ) -> Any:
    """The digits as an RDD of ``(float32 (1, 28, 28), label)`` pairs, in split order.

    ``spark`` is a SparkSession or SparkContext; ``num_partitions`` defaults
    to Spark's default parallelism. The images ship with scikit-learn, so each
    worker loads its own slice: Spark tasks carry no data, only an index.
    """
    from sparknet.data.rdd import packaged_rdd

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return packaged_rdd(spark, load_digits, split, num_partitions=num_partitions,
                        what="digits_rdd",
                        instead="digits_dataframe gives the same examples as a DataFrame")


@positional_deprecated("num_partitions")
def digits_dataframe(spark: Any, split: Split = "train", *, num_partitions: int | None = None
                     ) -> Any:
    """The digits as a DataFrame: ``data`` (array<float>, 784 values, CHW) and ``label``."""
    from sparknet.data.rdd import to_dataframe

    x, y = load_digits(split)
    return to_dataframe(spark, x, y, num_partitions=num_partitions)
