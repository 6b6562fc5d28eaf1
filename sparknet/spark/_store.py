"""The worker-local store: each partition materialised once as arrays on its executor.

:func:`materialise` runs inside the job that computes the small cached
"handles" RDD (``mapPartitionsWithIndex`` over the examples): it converts the
partition's examples (and runs the user's ``preprocess``) once, writes one
raw array file per input blob under the executor's local directory, and
returns a tiny handle naming that folder. Spark keeps handle *i* cached on the
executor that computed it, so every later job over the handles runs
partition *i* there, where :func:`open_store` maps the arrays again (cached
per Python worker process). When an executor is lost Spark recomputes its
handles elsewhere from lineage, which rebuilds the store there.

Minibatches are drawn by :func:`batch_indices`, a pure function of
``(seed, partition, step)``: a fresh permutation of the partition per epoch,
wrapping around as often as needed (partitions smaller than a round's worth of
batches are fine), so a retried task, a rebuilt store or a resumed run sees
exactly the same batches.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.data.rdd import batched
from sparknet.io import atomic_write_bytes
from sparknet.spark._messages import BlobStats, StoreHandle
from sparknet.spark._records import DataError, ExampleSpec, shape_str, storage_dtype

log = logging.getLogger(__name__)

_FLUSH = 256  # examples buffered per blob before a write


def local_root() -> Path:
    """This executor's scratch space (its block manager folder), else the temp folder."""
    dirs = os.environ.get("SPARK_LOCAL_DIRS", "")
    first = dirs.split(",")[0].strip() if dirs else ""
    root = Path(first) if first else Path(tempfile.gettempdir())
    return root / "sparknet"


@dataclass(frozen=True)
class MaterialiseSpec:
    """What :func:`materialise` needs (picklable)."""

    dataset: str
    examples: ExampleSpec
    indexed: bool  # items are (global index, example) pairs from a deterministic repartition
    stats_blobs: tuple[str, ...] = ()


def _write_blob(f: Any, arrays: list[np.ndarray], dtype: np.dtype) -> None:
    f.write(memoryview(np.ascontiguousarray(np.stack(arrays), dtype=dtype)).cast("B"))


def materialise(spec: MaterialiseSpec, partition: int,
                items: Iterable[Any]) -> Iterator[StoreHandle]:
    """Write one partition's examples as arrays in the local store; yield its handle."""
    t0 = time.perf_counter()
    root = local_root() / spec.dataset
    folder = root / f"part-{partition:05d}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    names = spec.examples.names
    files: dict[str, Any] = {}
    dtypes: dict[str, np.dtype] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    indices: list[int] = []
    stats = {n: {"min": np.inf, "max": -np.inf, "integral": True} for n in spec.stats_blobs}
    nonfinite: dict[str, int] = {}
    n = 0
    error: str | None = None
    first_index: int | None = None
    try:
        for chunk in batched(items, _FLUSH):  # convert and check a chunk, then write it
            buffers: dict[str, list[np.ndarray]] = {name: [] for name in names}
            for item in chunk:
                if spec.indexed:
                    gidx, record = item
                    indices.append(int(gidx))
                    where = f"{spec.examples.what} example {gidx}"
                else:
                    record = item
                    where = f"{spec.examples.what} partition {partition}, example {n}"
                arrays = spec.examples.convert(record, where)
                for name in names:
                    a = arrays.get(name)
                    if a is None:
                        raise DataError(f"{where}: no value for input blob '{name}'")
                    if name not in dtypes:
                        dtypes[name] = storage_dtype(a)
                        shapes[name] = a.shape
                        files[name] = open(folder / f"{name}.bin", "wb")  # noqa: SIM115
                    elif a.shape != shapes[name]:  # only where a transform follows (free blobs)
                        raise DataError(f"{where}: input blob '{name}' gets an example of shape "
                                        f"{shape_str(a.shape)} after examples of "
                                        f"{shape_str(shapes[name])}; the examples a transform "
                                        f"takes must all have one shape (resize them in "
                                        f"preprocess)")
                    elif a.dtype != dtypes[name] and dtypes[name] == np.uint8:
                        raise DataError(f"{where}: input blob '{name}' changes dtype from uint8 "
                                        f"to {a.dtype} between examples")
                    if a.dtype.kind == "f" and name not in nonfinite and not np.isfinite(a).all():
                        nonfinite[name] = n if not spec.indexed else indices[-1]
                    if name in stats:
                        s = stats[name]
                        lo, hi = float(a.min()), float(a.max())
                        s["min"] = min(s["min"], lo)
                        s["max"] = max(s["max"], hi)
                        if s["integral"] and not np.array_equal(a, np.round(a)):
                            s["integral"] = False
                    buffers[name].append(a)
                n += 1
            for name in names:
                if buffers[name]:
                    _write_blob(files[name], buffers[name], dtypes[name])
    except DataError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001  # report a bad example on the driver
        error = f"{spec.examples.what} partition {partition}: {type(e).__name__}: {e}"
    finally:
        for f in files.values():
            f.close()
    if error is None:
        meta: dict[str, Any] = {"n": n, "blobs": {
            name: {"dtype": dtypes[name].str, "shape": list(shapes[name])} for name in dtypes}}
        if spec.indexed and n:
            order = np.argsort(np.asarray(indices, np.int64), kind="stable")
            np.save(folder / "order.npy", order)
            meta["order"] = "order.npy"
            first_index = int(min(indices))
        atomic_write_bytes(folder / "meta.json", json.dumps(meta).encode())  # marks it complete
    else:
        shutil.rmtree(folder, ignore_errors=True)
    yield StoreHandle(
        dataset=spec.dataset, partition=partition, dir=str(folder), host=socket.gethostname(),
        pid=os.getpid(), error=error, n=n, stats={k: BlobStats(**v) for k, v in stats.items()},
        nonfinite=nonfinite, seconds=time.perf_counter() - t0,
        bytes=sum((folder / f"{name}.bin").stat().st_size for name in dtypes
                  if (folder / f"{name}.bin").exists()),
        first_index=first_index)


class Store:
    """One materialised partition, memory-mapped."""

    def __init__(self, folder: str):
        meta = json.loads((Path(folder) / "meta.json").read_text())
        self.folder = folder
        self.n = int(meta["n"])
        self.arrays: dict[str, np.ndarray] = {}
        for name, info in meta["blobs"].items():
            shape = (self.n, *info["shape"])
            path = Path(folder) / f"{name}.bin"
            if self.n == 0:
                self.arrays[name] = np.empty(shape, np.dtype(info["dtype"]))
            else:
                self.arrays[name] = np.memmap(path, dtype=np.dtype(info["dtype"]), mode="r",
                                              shape=shape)
        self.order = (np.load(Path(folder) / meta["order"]) if meta.get("order") else None)

    def batch(self, idx: np.ndarray, names: Iterable[str]) -> dict[str, np.ndarray]:
        """The examples at sample positions ``idx`` (in the partition's canonical order)."""
        if self.order is not None:
            idx = self.order[idx]
        return {name: np.take(self.arrays[name], idx, axis=0) for name in names}

    def sequential(self, batch_size: int, names: Iterable[str]) -> Iterator[dict[str, np.ndarray]]:
        """Every example once, in order, ``batch_size`` at a time (the last may be short)."""
        names = list(names)
        for start in range(0, self.n, batch_size):
            idx = np.arange(start, min(start + batch_size, self.n))
            yield self.batch(idx, names)


_STORES: dict[str, Store] = {}


def open_store(handle: StoreHandle) -> Store | None:
    """The store a handle names, if it is on this machine (cached per process)."""
    folder = handle.dir
    store = _STORES.get(folder)
    if store is not None:
        return store
    if handle.host != socket.gethostname() or not (Path(folder) / "meta.json").exists():
        return None
    store = Store(folder)
    if len(_STORES) > 64:
        _STORES.clear()
    _STORES[folder] = store
    return store


def remove_dataset(dataset: str) -> None:
    """Delete a dataset's stores on this executor (and forget the open ones)."""
    root = local_root() / dataset
    for key in [k for k in _STORES if k.startswith(str(root))]:
        del _STORES[key]
    shutil.rmtree(root, ignore_errors=True)


# -- sampling ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _permutation(n: int, seed: int, partition: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, partition, epoch]).permutation(n)


def batch_indices(n: int, batch_size: int, step: int, *, seed: int, partition: int,
                  shuffle: bool = True) -> np.ndarray:
    """Sample positions for global step ``step`` of a partition of ``n`` examples.

    The partition is read as an endless stream of epochs, each a fresh
    permutation seeded by ``(seed, partition, epoch)`` (in order when
    ``shuffle`` is false); step ``s`` takes positions ``[s*B, (s+1)*B)`` of
    that stream.
    """
    if n <= 0:
        raise ValueError("an empty partition has no batches")
    q = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
    epoch = q // n
    offset = q % n
    if not shuffle:
        return offset
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epoch):
        mask = epoch == e
        out[mask] = _permutation(n, seed, partition, int(e))[offset[mask]]
    return out
