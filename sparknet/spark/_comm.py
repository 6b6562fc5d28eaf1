"""Moving weights between the driver and the workers.

Three pieces, each avoiding a full copy of the model wherever Spark allows:

* :func:`broadcast_flat` — a torrent broadcast of a flat float32 vector whose
  file holds a small pickled header followed by the raw bytes. Workers map
  that file (:func:`flat_from_broadcast`) instead of unpickling a copy;
  ``CaffeNet.set_weights`` then copies straight from the page cache into the
  net's blobs.
* :func:`stream` — the items of a job, one at a time, as they come off the
  JVM's socket (what ``collect()`` does before building its list), so the
  driver can fold results into one accumulator instead of holding K models.
* :func:`tree_sum` — for many workers or large models, partial sums of the
  workers' results computed on the executors (``coalesce`` over the cached
  round output, ``fanin`` partitions per reducer, level after level), so the
  driver receives at most ``fanin`` partial sums, streamed.

Workers send a result as ``("w", offset, chunk)`` items of :data:`CHUNK`
floats: each pickled frame stays small (no large fresh allocations on either
side of the socket) and the driver adds each chunk into place.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Floats per result chunk: 512 KiB frames (below the JVM's humongous-object size).
CHUNK = 1 << 17
#: The raw broadcast file starts with this many bytes of (padded) pickled header.
HEADER_BYTES = 4096
_MAGIC = "sparknet-flat-1"

try:  # pyspark >= 4
    from pyspark.core.broadcast import Broadcast as _Broadcast
except ImportError:  # pragma: no cover - pyspark 3.x
    from pyspark.broadcast import Broadcast as _Broadcast


class FlatHeader:
    """What a raw broadcast's ``value`` is: the size of the vector after the header."""

    __slots__ = ("magic", "size")

    def __init__(self, size: int):
        self.magic = _MAGIC
        self.size = int(size)

    def __getstate__(self) -> tuple[str, int]:
        return self.magic, self.size

    def __setstate__(self, state: tuple[str, int]) -> None:
        self.magic, self.size = state

    def __repr__(self) -> str:
        return f"FlatHeader({self.size} floats)"


class _RawBroadcast(_Broadcast):
    """A broadcast whose file is ``pickle(FlatHeader)`` padded, then the raw floats."""

    def dump(self, value: Any, f: Any) -> None:  # called by Broadcast.__init__ on the driver
        flat = np.ascontiguousarray(value, dtype=np.float32).reshape(-1)
        header = pickle.dumps(FlatHeader(flat.size), protocol=pickle.HIGHEST_PROTOCOL)
        if len(header) > HEADER_BYTES:  # pragma: no cover - a few dozen bytes
            raise ValueError("broadcast header too large")
        f.write(header)
        f.write(b"\0" * (HEADER_BYTES - len(header)))
        f.write(memoryview(flat).cast("B"))
        f.close()


def broadcast_flat(sc: Any, flat: np.ndarray) -> Any:
    """Broadcast a flat float32 vector for :func:`flat_from_broadcast` (no pickled copy).

    Falls back to an ordinary broadcast of the array where the raw file
    cannot be written as is (I/O encryption sends broadcasts over a socket).
    """
    flat = np.ascontiguousarray(flat, dtype=np.float32).reshape(-1)
    if getattr(sc, "_encryption_enabled", False) or not hasattr(sc, "_pickled_broadcast_vars"):
        return sc.broadcast(flat)
    return _RawBroadcast(sc, flat, sc._pickled_broadcast_vars)


def flat_from_broadcast(bc: Any) -> np.ndarray:
    """On a worker: the broadcast vector, memory-mapped from the broadcast's file."""
    value = bc.value
    if isinstance(value, FlatHeader):
        path = getattr(bc, "_path", None)
        if path is None:  # pragma: no cover - only with encryption, where we never use it
            raise RuntimeError("a raw sparknet broadcast arrived without its file")
        # copy-on-write: writable for Cython memoryviews, pages shared until written
        return np.memmap(path, dtype=np.float32, mode="c", offset=HEADER_BYTES,
                         shape=(value.size,))
    return np.asarray(value, dtype=np.float32).reshape(-1)


def destroy(bc: Any) -> None:
    """Remove a broadcast from the driver and the executors (quietly, best effort)."""
    if bc is None:
        return
    try:
        bc.destroy(blocking=False)
    except Exception as e:  # noqa: BLE001  # pragma: no cover - a stopped context
        log.debug("could not destroy broadcast: %s", e)


def chunks(flat: np.ndarray, tag: str = "w") -> Iterator[tuple[str, int, np.ndarray]]:
    """``(tag, offset, chunk)`` items covering ``flat``."""
    for off in range(0, flat.size, CHUNK):
        yield tag, off, flat[off:off + CHUNK]


def stream(rdd: Any) -> Iterator[Any]:
    """The items of ``rdd``, one at a time as the driver reads them from the JVM.

    Runs the job like ``collect()`` (all partitions at once) but hands items
    over without building a list. Falls back to ``collect()`` where pyspark's
    socket helpers are not available.
    """
    sc = rdd.context
    try:
        try:
            from pyspark.util import _load_from_socket
        except ImportError:  # pragma: no cover - pyspark 3.x
            from pyspark.rdd import _load_from_socket  # type: ignore[no-redef]
        sock_info = sc._jvm.PythonRDD.collectAndServe(rdd._jrdd.rdd())
    except (ImportError, AttributeError):  # pragma: no cover - unusual pyspark builds
        yield from rdd.collect()
        return
    with _load_from_socket(sock_info, rdd._jrdd_deserializer) as items:
        yield from items


def fold(items: Iterable[Any], acc: np.ndarray | None,
         other: Callable[[Any], None]) -> int:
    """Add every ``("w", offset, chunk)`` item into ``acc``; pass other items to ``other``.

    Returns the number of floats added (``acc`` is not cleared first).
    """
    added = 0
    for item in items:
        if item[0] == "w":
            _, off, chunk = item
            if acc is None:
                raise RuntimeError("weights arrived where none were expected")
            a = acc[off:off + chunk.size]
            np.add(a, chunk, out=a)
            added += chunk.size
        else:
            other(item)
    return added


def _partial_sum(size: int, iterator: Iterable[Any]) -> Iterator[Any]:
    """Worker side of :func:`tree_sum`: sum the chunks, pass everything else through."""
    acc: np.ndarray | None = None
    passed: list[Any] = []
    for item in iterator:
        if item[0] == "w":
            if acc is None:
                acc = np.zeros(size, np.float32)
            _, off, chunk = item
            a = acc[off:off + chunk.size]
            np.add(a, chunk, out=a)
        else:
            passed.append(item)
    yield from passed
    if acc is not None:
        yield from chunks(acc)


def tree_sum(rdd: Any, size: int, fanin: int, target: int = 1) -> Iterator[Any]:
    """Stream ``rdd``'s items with its ``"w"`` chunks summed on the executors.

    ``rdd`` is computed once and cached by a job that brings back only its
    small items (streamed first); then levels of ``coalesce`` add up to
    ``fanin`` cached partitions each, on the executors that hold them, until
    at most ``target`` partial sums remain, and those are streamed to the
    driver (which folds them with :func:`fold`). Every cached level is
    released when the stream is exhausted or closed.
    """
    from pyspark import StorageLevel

    fanin = max(2, int(fanin))
    target = max(1, int(target))
    # on disk: model-sized blocks in executor heaps next to the broadcast would not fit
    cached = [rdd.persist(StorageLevel.DISK_ONLY)]
    try:
        yield from stream(rdd.filter(_not_weights))  # computes and caches the round
        cur = rdd
        n = rdd.getNumPartitions()
        while True:
            nxt = max(target, -(-n // fanin))
            step = cur.coalesce(nxt).mapPartitions(_PartialSum(size))
            if nxt <= target:
                yield from stream(step)
                return
            step.persist(StorageLevel.DISK_ONLY)
            cached.append(step)
            step.foreachPartition(_drain)
            cur, n = step, nxt
    finally:
        for c in cached:
            c.unpersist(blocking=False)


def _not_weights(item: Any) -> bool:
    return item[0] != "w"


class _PartialSum:
    """Picklable partial-sum step over weight chunks (small items were streamed already)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, iterator: Iterable[Any]) -> Iterator[Any]:
        return _partial_sum(self.size, (i for i in iterator if i[0] == "w"))


def _drain(iterator: Iterable[Any]) -> None:
    for _ in iterator:
        pass
