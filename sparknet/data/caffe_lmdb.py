"""Caffe LMDB databases of ``Datum`` records: read, split into RDD partitions, write.

What Caffe's ``convert_imageset`` writes is read here: raw datums (uint8
``data`` in CHW order, or ``float_data``) and encoded ones (the image file's
bytes, ``encoded: true``, no dimensions), each with its label, keyed so that
key order is the order Caffe reads. Encoded images decode as Caffe decodes
them: colour images in BGR order, grey ones with one channel.

What is written here is read by Caffe's ``Data`` layer (``backend: LMDB``):
keys are zero-padded counters (``00000000``...), so Caffe reads the examples
in the order given. uint8 arrays become byte datums (like
``convert_imageset``), other dtypes ``float_data``.
"""
from __future__ import annotations

import io
import itertools
import logging
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.data.rdd import DataError, batched
from sparknet.io import PathLike, atomic_dir, spark_context
from sparknet.proto import caffe_pb2

log = logging.getLogger(__name__)

_INITIAL_MAP_SIZE = 64 << 20
_MAX_MAP_SIZE = 1 << 40


def _int_label(label: Any) -> int:
    value = float(label)
    if not value.is_integer() or not -2**31 <= value < 2**31:
        raise ValueError(f"a Datum label is an int32; got {label!r}")
    return int(value)


def array_to_datum(array: np.ndarray, label: Any = 0, *, encoded: bool = False,
                   image_format: str = "PNG", color: str = "BGR", quality: int = 95
                   ) -> caffe_pb2.Datum:
    """A ``Datum`` for one CHW array (``(H, W)`` is one channel).

    Raw (default): uint8 arrays fill ``data``, others ``float_data``.
    ``encoded=True`` stores the image encoded as ``image_format`` (PNG is
    lossless; JPEG takes ``quality``), as ``convert_imageset --encoded``
    does; ``color`` names the array's channel order (BGR, as Caffe decodes).
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"a Datum holds one (C, H, W) array, got shape {a.shape}")
    datum = caffe_pb2.Datum()
    datum.label = _int_label(label)
    if encoded:
        from PIL import Image

        if a.dtype != np.uint8:
            raise ValueError(f"encoded datums hold uint8 images, got {a.dtype}")
        c = a.shape[0]
        if c == 1:
            img = Image.fromarray(a[0])
        elif c == 3:
            hwc = a.transpose(1, 2, 0)
            img = Image.fromarray(np.ascontiguousarray(hwc[:, :, ::-1] if color.upper() == "BGR"
                                                       else hwc))
        else:
            raise ValueError(f"encoded datums hold 1 or 3 channels, got {c}")
        buf = io.BytesIO()
        fmt = image_format.upper().replace("JPG", "JPEG")
        img.save(buf, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
        datum.data = buf.getvalue()
        datum.encoded = True
        return datum
    datum.channels, datum.height, datum.width = (int(d) for d in a.shape)
    if a.dtype == np.uint8:
        datum.data = np.ascontiguousarray(a).tobytes()
    else:
        datum.float_data.extend(np.asarray(a, np.float32).reshape(-1).tolist())
    return datum


def datum_to_array(datum: caffe_pb2.Datum | bytes, *, name: str = "datum"
                   ) -> tuple[np.ndarray, int]:
    """``(array, label)`` of a ``Datum`` (or its bytes): uint8 or float32 CHW.

    Encoded datums are decoded like Caffe's ``DecodeDatumToCVMatNative``:
    colour -> 3 channels BGR, grey -> 1 channel.
    """
    if not isinstance(datum, caffe_pb2.Datum):
        d = caffe_pb2.Datum()
        try:
            d.ParseFromString(datum)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: any failure means "not a Datum"
            raise DataError(f"{name}: not a Caffe Datum ({e})") from None
        datum = d
    if datum.encoded:
        from PIL import Image

        from sparknet.data.images import ImageDecodeError, decode_image

        data = bytes(datum.data)
        try:
            with Image.open(io.BytesIO(data)) as im:
                grey = im.mode in ("1", "L", "I", "I;16", "F")
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad bytes; each is reported as unreadable
            raise DataError(f"{name}: encoded datum is not a readable image ({e})") from None
        try:
            hwc = decode_image(data, color="L" if grey else "BGR")
        except ImageDecodeError as e:
            raise DataError(f"{name}: {e}") from None
        return np.ascontiguousarray(hwc.transpose(2, 0, 1)), int(datum.label)
    shape = (datum.channels, datum.height, datum.width)
    n = math.prod(shape)
    if len(datum.data):
        if len(datum.data) != n:
            raise DataError(f"{name}: {len(datum.data)} bytes of data for shape {shape}")
        a = np.frombuffer(datum.data, np.uint8).reshape(shape)
    else:
        if len(datum.float_data) != n:
            raise DataError(f"{name}: {len(datum.float_data)} float_data values for "
                             f"shape {shape}")
        a = np.asarray(datum.float_data, np.float32).reshape(shape)
    return a, int(datum.label)


def _open_env(path: PathLike, *, readonly: bool = True) -> Any:
    import lmdb

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such LMDB database")
    subdir = p.is_dir()
    if subdir and not (p / "data.mdb").exists():
        raise FileNotFoundError(f"{p}: not an LMDB database (no data.mdb inside)")
    try:
        return lmdb.open(os.fspath(p), readonly=readonly, lock=False, readahead=False,
                         subdir=subdir, max_readers=512)
    except lmdb.Error as e:
        raise DataError(f"{p}: cannot open as LMDB ({e})") from None


def _examples(items: Any) -> Iterator[tuple[np.ndarray, Any]]:
    if hasattr(items, "toLocalIterator"):  # an RDD: one partition at a time on the driver
        items = items.toLocalIterator()
    for item in items:
        if isinstance(item, dict):
            yield item["data"], item.get("label", 0)
        else:
            yield item[0], item[1]


def write_lmdb(path: PathLike, examples: Any, *, encoded: bool = False,
               image_format: str = "PNG", color: str = "BGR", overwrite: bool = False,
               commit_every: int = 1000) -> int:
    """Write examples to a new LMDB that Caffe's ``Data`` layer reads; returns the count.

    ``examples``: ``(array, label)`` pairs or dicts with ``data``/``label``,
    as an iterable or an RDD (streamed to the driver one partition at a time:
    an LMDB has a single writer). Keys are ``%08d`` counters, so Caffe reads
    the examples in this order. The database is built under a temporary name
    and moved into place when complete; an existing ``path`` raises
    ``FileExistsError`` unless ``overwrite``.
    """
    import lmdb

    count = 0
    with atomic_dir(path, overwrite=overwrite) as tmp:
        map_size = _INITIAL_MAP_SIZE
        env = lmdb.open(os.fspath(tmp), map_size=map_size, subdir=True, meminit=False)
        try:
            for chunk in batched(_examples(examples), max(commit_every, 1)):
                pending = [(b"%08d" % (count + i),
                            array_to_datum(array, label, encoded=encoded,
                                           image_format=image_format,
                                           color=color).SerializeToString())
                           for i, (array, label) in enumerate(chunk)]
                while True:  # one transaction per chunk; a full map grows and retries
                    try:
                        with env.begin(write=True) as txn:
                            for k, v in pending:
                                txn.put(k, v, append=True)
                        break
                    except lmdb.MapFullError:
                        if map_size >= _MAX_MAP_SIZE:
                            raise
                        map_size *= 2
                        env.set_mapsize(map_size)
                count += len(pending)
            env.sync(True)
        except lmdb.Error as e:  # a full disk, a quota: name the database, keep the old one
            raise OSError(f"cannot write the LMDB {os.fspath(path)}: {e}") from None
        finally:
            env.close()
    log.info("wrote %d datums to %s", count, path)
    return count


def read_lmdb(path: PathLike, *, start: bytes | None = None, end: bytes | None = None
              ) -> Iterator[tuple[bytes, np.ndarray, int]]:
    """Yield ``(key, array, label)`` in key order, for keys in ``[start, end)``."""
    env = _open_env(path)
    try:
        with env.begin(buffers=False) as txn:
            cur = txn.cursor()
            ok = cur.set_range(start) if start is not None else cur.first()
            while ok:
                key = cur.key()
                if end is not None and key >= end:
                    break
                yield key, *datum_to_array(cur.value(), name=f"{path} key {key!r}")
                ok = cur.next()
    finally:
        env.close()


def load_lmdb(path: PathLike, *, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The whole database as stacked ``(x, y)`` arrays (examples must share a shape)."""
    xs, ys = [], []
    for key, a, label in read_lmdb(path):
        if xs and a.shape != xs[0].shape:
            raise DataError(f"{path}: key {key!r} has shape {a.shape}, earlier ones "
                             f"{xs[0].shape}; read it with read_lmdb instead")
        xs.append(a)
        ys.append(label)
    if not xs:
        return np.empty((0,), dtype), np.empty((0,), np.float32)
    return np.stack(xs).astype(dtype, copy=False), np.asarray(ys, np.float32)


def key_ranges(path: PathLike, parts: int) -> list[tuple[bytes | None, bytes | None]]:
    """Split a database's keys into ``parts`` contiguous ``[start, end)`` ranges.

    Only keys are read (values are not touched); ``None`` is open-ended.
    """
    env = _open_env(path)
    try:
        entries = env.stat()["entries"]
        parts = max(1, min(parts, entries or 1))
        step = math.ceil(entries / parts) if entries else 1
        starts: list[bytes] = []
        with env.begin() as txn:
            for i, key in enumerate(txn.cursor().iternext(keys=True, values=False)):
                if i % step == 0:
                    starts.append(bytes(key))
    finally:
        env.close()
    if not starts:
        return [(None, None)]
    bounds: list[bytes | None] = [None, *starts[1:], None]
    return list(itertools.pairwise(bounds))


def lmdb_rdd(spark: Any, path: PathLike, num_partitions: int | None = None, *,
             dtype: Any = np.float32, scale: float | None = None) -> Any:
    """An RDD of ``(array, label)`` pairs read from an LMDB, one key range per partition.

    The driver reads only keys to split the database; each worker opens it
    read-only and reads its own range, so ``path`` must be readable from the
    workers (a local path in local mode, or a shared file system). Arrays are
    converted to ``dtype`` (float32) and multiplied by ``scale`` when given.
    """
    sc = spark_context(spark, what="lmdb_rdd")
    parts = num_partitions or int(sc.defaultParallelism or 2)
    ranges = key_ranges(path, parts)
    where = os.fspath(Path(path).resolve())
    dt = np.dtype(dtype)

    def read(index: int, _: Iterable[Any]) -> Iterator[tuple[np.ndarray, float]]:
        start, end = ranges[index]
        for _key, a, label in read_lmdb(where, start=start, end=end):
            a = a.astype(dt)
            if scale is not None and scale != 1.0:
                a *= dt.type(scale)
            yield a, float(label)

    return sc.parallelize(range(len(ranges)), len(ranges)).mapPartitionsWithIndex(read)
