"""Weights through Spark's own paths: a raw torrent broadcast out, task results back.

For clusters where executors cannot connect to the driver or where Spark's
encryption must cover the weights. :func:`broadcast_flat` writes a torrent
broadcast's file as a small pickled header then the raw floats, which workers
map (:func:`flat_from_broadcast`) instead of unpickling a copy; results come
back as :class:`WeightChunk` items of :data:`CHUNK` floats in the task output,
read one at a time off the JVM's socket (:func:`stream`) and added into one
accumulator (:func:`fold`), or first summed on the executors
(:func:`tree_sum`) when K models would not fit the driver.
"""
from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.spark._messages import WeightChunk

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
        # read-only: the net copies straight from the page cache
        return np.memmap(path, dtype=np.float32, mode="r", offset=HEADER_BYTES,
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


def chunks(flat: np.ndarray) -> Iterator[WeightChunk]:
    """:class:`WeightChunk` items covering ``flat``."""
    for off in range(0, flat.size, CHUNK):
        yield WeightChunk(off, flat[off:off + CHUNK])


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
    """Add every :class:`WeightChunk` item into ``acc``; pass other items to ``other``.

    Returns the number of floats added (``acc`` is not cleared first).
    """
    added = 0
    for item in items:
        if isinstance(item, WeightChunk):
            if acc is None:
                raise RuntimeError("weights arrived where none were expected")
            a = acc[item.offset:item.offset + item.data.size]
            np.add(a, item.data, out=a)
            added += item.data.size
        else:
            other(item)
    return added


def _partial_sum(size: int, iterator: Iterable[Any]) -> Iterator[Any]:
    """Worker side of :func:`tree_sum`: sum the chunks, pass everything else through."""
    acc: np.ndarray | None = None
    passed: list[Any] = []
    for item in iterator:
        if isinstance(item, WeightChunk):
            if acc is None:
                acc = np.zeros(size, np.float32)
            a = acc[item.offset:item.offset + item.data.size]
            np.add(a, item.data, out=a)
        else:
            passed.append(item)
    yield from passed
    if acc is not None:
        yield from chunks(acc)


def tree_sum(rdd: Any, size: int, fanin: int, target: int = 1) -> Iterator[Any]:
    """Stream ``rdd``'s items with its weight chunks summed on the executors.

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
    return not isinstance(item, WeightChunk)


class _PartialSum:
    """Picklable partial-sum step over weight chunks (small items were streamed already)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, iterator: Iterable[Any]) -> Iterator[Any]:
        return _partial_sum(self.size, (i for i in iterator if isinstance(i, WeightChunk)))


def _drain(iterator: Iterable[Any]) -> None:
    for _ in iterator:
        pass


# -- channels: what a task is given to read the weights and send its result ---------------------

class SparkChannel:
    """Weights by raw torrent broadcast, results as :class:`WeightChunk` task output."""

    __slots__ = ("bc",)

    def __init__(self, bc: Any):
        self.bc = bc

    def __getstate__(self) -> Any:
        return self.bc

    def __setstate__(self, bc: Any) -> None:
        self.bc = bc

    def weights(self, home: Path | None = None) -> np.ndarray:
        """The published vector, mapped from the broadcast file."""
        return flat_from_broadcast(self.bc)

    def absent(self, partition: int) -> None:
        """Nothing to do: the driver folds the results that arrive."""

    def send(self, partition: int, flat: np.ndarray, home: Path | None = None
             ) -> Iterator[Any]:
        """The items that carry ``flat`` to the driver in the task's output."""
        return chunks(flat)


class TaskOutputResults:
    """The results half of an exchange whose results come back in the round job's output.

    They arrive as :class:`WeightChunk` items, which the caller folds into the
    accumulator (:func:`fold`, :func:`tree_sum`); Spark's task results are whole or
    absent, so nothing is ever missing or spliced.
    """

    def accept(self, channel: Any, acc: np.ndarray) -> Any:
        acc[:] = 0  # the caller folds the round's results into it
        return channel

    def missing(self, partitions: Iterable[int]) -> list[int]:
        return []

    def spliced(self) -> list[int]:
        return []

    def end(self) -> None:
        pass

    def close(self) -> None:
        pass


class SparkExchange(TaskOutputResults):
    """The driver's side of :class:`SparkChannel`: Spark's own broadcast and task results."""

    name = "spark"

    def __init__(self, sc: Any):
        self.sc = sc

    def where(self) -> str:
        return "Spark broadcasts and task results"

    def publish(self, flat: np.ndarray) -> SparkChannel:
        return SparkChannel(broadcast_flat(self.sc, flat))

    def release(self, channel: Any) -> None:
        destroy(channel.bc)
