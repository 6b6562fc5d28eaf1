"""The driver's side of a run's data: check it, cache it on the executors, rebuild, clean up.

:class:`RunData` turns ``train_data`` / ``test_data`` into RDDs of examples,
tries one example (and the transforms) on the driver, repartitions once to
``workers`` partitions when needed, and caches every partition on its
executor (:func:`sparknet.spark._store.materialise`) behind a small cached
RDD of :class:`~sparknet.spark._messages.StoreHandle`; then checks what the
executors report (bad examples, empty partitions, NaN, labels out of range).
The cached handles (:class:`RddHandles`) run the round and test jobs. On a
Spark Connect client the same steps go through a DataFrame instead
(:mod:`sparknet.spark.connect`: ``FrameSource``, ``FrameHandles``).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sparknet.engine import IndexRule
from sparknet.spark import _comm, connect
from sparknet.spark._messages import StoreHandle
from sparknet.spark._records import (
    DataError,
    ExampleSpec,
    dataframe_records,
    is_dataframe,
    shape_str,
)
from sparknet.spark._runlog import RunLog
from sparknet.spark._store import MaterialiseSpec, materialise
from sparknet.spark._worker import cleanup_task

log = logging.getLogger("sparknet.spark")

TRAIN, TEST = "train_data", "test_data"


class _Spread:
    """Partitioner for a deterministic repartition: round-robin over (source partition, position)."""

    def __init__(self, sources: int):
        self.sources = sources

    def __call__(self, key: int) -> int:
        return (key & ((1 << 40) - 1)) * self.sources + (key >> 40)


def _keyed(partition: int, items: Any) -> Any:
    for j, item in enumerate(items):
        yield (partition << 40) | j, item


def _passthrough(items: Any) -> Any:
    return items


def _each(fn: Callable[[Any], Any], partition: int, handles: Any) -> Any:
    """A task function of the handles alone as one of ``(partition, handles)``."""
    return fn(handles)


class RddHandles:
    """A run's cached RDD of store handles, and the jobs that run over them."""

    def __init__(self, rdd: Any):
        self.rdd = rdd

    def collect(self) -> list[StoreHandle]:
        """Compute (and cache) the handles: every partition converted once, kept local."""
        return self.rdd.collect()

    def mapped(self, fn: Callable[[int, Any], Any], *, barrier: bool = False) -> Any:
        """The RDD of what ``fn(partition, handles)`` yields on each partition.

        ``barrier``: its tasks run as one barrier stage (all at once, retried together).
        """
        return (self.rdd.barrier() if barrier else self.rdd).mapPartitionsWithIndex(fn)

    def run(self, fn: Callable[[int, Any], Any], partitions: Sequence[int] | None = None
            ) -> Any:
        """The items ``fn`` yields on every partition (streamed) or on ``partitions``."""
        mapped = self.mapped(fn)
        if partitions is None:
            return _comm.stream(mapped)
        return iter(self.rdd.context.runJob(mapped, _passthrough, list(partitions)))

    def unpersist(self) -> None:
        self.rdd.unpersist(blocking=False)


class _RddSource:
    """Examples as an RDD, on their way to the executors' stores."""

    def __init__(self, rdd: Any, indexed: bool = False):
        self.rdd = rdd
        self.indexed = indexed

    def first(self) -> list[Any]:
        return self.rdd.take(1)

    def partitions(self) -> int:
        return self.rdd.getNumPartitions()

    def spread(self, n: int) -> _RddSource:
        """``n`` partitions, deterministically (:class:`_Spread`), items keyed by global index."""
        return _RddSource(self.rdd.mapPartitionsWithIndex(_keyed)
                          .partitionBy(n, _Spread(self.partitions())), indexed=True)

    def cache(self, spec: MaterialiseSpec, name: str) -> RddHandles:
        handles = self.rdd.mapPartitionsWithIndex(functools.partial(materialise, spec))
        return RddHandles(handles.setName(name).cache())


@dataclasses.dataclass
class _Source:
    examples: Any  # _RddSource, or connect.FrameSource
    spec: MaterialiseSpec
    rules: Sequence[IndexRule]


class RunData:
    """The cached training and test data of one run (its cached handles by ``what``)."""

    def __init__(self, sc: Any, run_id: str, *, batch: int, workers: int, runlog: RunLog):
        self.sc = sc
        self.run_id = run_id
        self.batch = batch
        self.workers = workers
        self.runlog = runlog
        self.handles: dict[str, Any] = {}
        self._sources: dict[str, _Source] = {}
        self._datasets: list[str] = []

    def cache(self, data: Any, what: str, names: Sequence[str],
              shapes: Mapping[str, tuple[int, ...]], rules: Sequence[IndexRule], *,
              partitions: int | None, preprocess: Any,
              transforms: Mapping[str, Callable[..., Any]]) -> Any:
        """Check one example on the driver, then cache every partition on its executor."""
        t0 = time.perf_counter()
        examples = ExampleSpec(tuple(names), dict(shapes), tuple(r.blob for r in rules),
                               preprocess, True, what,
                               free=tuple(n for n in names if n in transforms))
        src = self._examples(data, names, shapes, what)
        first = src.first()
        if not first:
            raise DataError(f"{what} is empty")
        arrays = examples.convert(first[0], f"{what} example 0")  # DataError on a misfit
        _check_transforms(transforms, arrays, shapes, what)
        if partitions is not None:
            sources = src.partitions()
            if sources != partitions:
                self.runlog.event("%s: %d partitions -> %d (one repartition, deterministic)",
                                  what, sources, partitions)
                src = src.spread(partitions)
        spec = MaterialiseSpec(f"{self.run_id}-{what}", examples, src.indexed,
                               tuple(sorted({r.blob for r in rules})))
        self._sources[what] = _Source(src, spec, rules)
        return self._compute(what, t0)

    def rebuild(self, what: str) -> Any:
        """Cache ``what`` again, in fresh store folders (its partitions ran away from it)."""
        return self._compute(what, time.perf_counter())

    def _examples(self, data: Any, names: Sequence[str], shapes: Mapping[str, Sequence[int]],
                  what: str) -> Any:
        from pyspark import RDD

        if connect.is_client(self.sc):
            return connect.source(self.sc, data, names, what, self.workers)
        if is_dataframe(data):
            return _RddSource(dataframe_records(data, names, shapes, what=what))
        if isinstance(data, RDD):
            return _RddSource(data)
        if (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray)):
            from sparknet.data.rdd import to_rdd

            return _RddSource(to_rdd(self.sc, data[0], data[1], self.workers))
        raise TypeError(f"{what} must be an RDD of examples, a DataFrame with columns named "
                        f"after the input blobs, or an (x, y) pair of arrays; got "
                        f"{type(data).__name__}")

    def _compute(self, what: str, t0: float) -> Any:
        """Compute the cached handles of ``what``: each partition converted once, kept local."""
        source = self._sources[what]
        spec = source.spec
        if what in self.handles:  # a rebuild: a fresh store folder, the old one is dropped
            self.handles[what].unpersist()
            spec = dataclasses.replace(spec, dataset=f"{spec.dataset}-{len(self._datasets)}")
        self._datasets.append(spec.dataset)
        cached = source.examples.cache(spec, f"sparknet {what} ({self.run_id})")
        self.handles[what] = cached
        self.sc.setJobDescription(f"sparknet: cache {what} on the workers")
        handles: list[StoreHandle] = sorted(cached.collect(), key=lambda h: h.partition)
        _check(handles, what, source.rules)
        sizes = [h.n for h in handles]
        for h in handles:  # sampled minibatches wrap around a partition smaller than one
            if what == TRAIN and 0 < h.n < self.batch:
                self.runlog.event(
                    "%s: partition %d holds %d example(s), fewer than one minibatch of %d: "
                    "every minibatch repeats each of them about %.1f times", what, h.partition,
                    h.n, self.batch, self.batch / h.n, level=logging.WARNING)
        self.runlog.event(
            "%s: %d examples cached in %d partitions (%s per partition, %.1f MB) in %.2f s",
            what, sum(sizes), len(sizes),
            f"{min(sizes)}-{max(sizes)}" if min(sizes) != max(sizes) else str(sizes[0]),
            sum(h.bytes for h in handles) / 1e6, time.perf_counter() - t0)
        return cached

    def cleanup(self) -> None:
        """Delete the executors' stores and the run's solver states; drop the cached RDDs."""
        train = self.handles.get(TRAIN)
        datasets = tuple(self._datasets)
        try:
            if train is not None:
                self.sc.setJobDescription("sparknet: clean up")
                for _ in train.run(functools.partial(
                        _each, functools.partial(cleanup_task, datasets, self.run_id))):
                    pass
            test = self.handles.get(TEST)
            if test is not None:
                for _ in test.run(functools.partial(
                        _each, functools.partial(cleanup_task, datasets, None))):
                    pass
        except Exception as e:  # noqa: BLE001  # a dead context: its folders go too
            log.debug("cleanup failed: %s", e)
        for h in self.handles.values():
            try:
                h.unpersist()
            except Exception as e:  # noqa: BLE001  # pragma: no cover
                log.debug("unpersist failed: %s", e)
        self.handles.clear()


def _check_transforms(transforms: Mapping[str, Callable[..., Any]],
                      arrays: Mapping[str, np.ndarray],
                      shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
    """A transform must turn a cached example into what its blob takes (on the driver)."""
    kind = "transform" if what == TRAIN else "test_transform"
    for name, fn in transforms.items():
        if name not in arrays:
            raise DataError(f"{kind} is given for '{name}', which is not an input blob of "
                            f"the net ({', '.join(shapes)})")
        given = arrays[name]
        try:
            out = np.asarray(fn(given[None]))
        except Exception as e:  # name the transform and the example
            raise DataError(f"{what} example 0: the {kind} for '{name}' fails on a batch "
                            f"of shape {shape_str((1, *given.shape))}: "
                            f"{type(e).__name__}: {e}") from e
        if out.shape[1:] != tuple(shapes[name]) or out.shape[0] != 1:
            raise DataError(f"{what} example 0: the {kind} for '{name}' turns a batch of "
                            f"shape {shape_str((1, *given.shape))} into "
                            f"{shape_str(out.shape)}; input blob '{name}' takes "
                            f"{shape_str((1, *shapes[name]))}")


def _check(handles: Sequence[StoreHandle], what: str, rules: Sequence[IndexRule]) -> None:
    """What the executors found while caching: bad examples, empty partitions, NaN, labels."""
    errors = [h.error for h in handles if h.error]
    if errors:
        more = f" (and {len(errors) - 1} more partitions)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
    for h in handles:
        if h.n == 0:
            raise DataError(f"{what}: partition {h.partition} is empty "
                            f"({sum(x.n for x in handles)} examples for "
                            f"{len(handles)} partitions)")
        for blob, where in h.nonfinite.items():
            raise DataError(f"{what}: input blob '{blob}' has NaN or infinite values "
                            f"(partition {h.partition}, example {where})")
    for rule in rules:  # the engine's own label rules, applied to the cached data's range
        stats = [h.stats[rule.blob] for h in handles if rule.blob in h.stats]
        if not stats:
            continue
        problem = rule.range_error(min(s.min for s in stats), max(s.max for s in stats),
                                   all(s.integral for s in stats))
        if problem:
            raise DataError(f"{what}: {problem}")


# -- waiting for the executors -------------------------------------------------------------------

def _cluster(sc: Any) -> tuple[int, int, int] | None:
    """(cores, executors, block managers) registered so far, or None when unknown."""
    try:
        jsc = sc._jsc.sc()
        cores = int(jsc.schedulerBackend().totalCoreCount())
        execs = int(jsc.getExecutorIds().size())
        managers = int(jsc.getExecutorMemoryStatus().size()) - 1
        return cores, execs, managers
    except Exception:  # noqa: BLE001  # not a coarse-grained backend (local mode)
        return None


def local_slots(sc: Any) -> int:
    """How many tasks a ``local[N]`` master runs at once (N / spark.task.cpus)."""
    task_cpus = max(1, int(sc.getConf().get("spark.task.cpus", "1") or 1))
    m = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\s*\d+)?\])?", str(sc.master).strip())
    if m is None:
        cores = int(sc.defaultParallelism)
    elif m.group(1) is None:
        cores = 1
    elif m.group(1) == "*":
        cores = os.cpu_count() or 1
    else:
        cores = int(m.group(1))
    return max(1, cores // task_cpus)


def task_slots(sc: Any) -> int:
    """How many tasks run at once now: a local master's N, else the executors' cores."""
    master = str(sc.master)
    if master.startswith("local") and not master.startswith("local-cluster"):
        return local_slots(sc)
    state = _cluster(sc)
    if state is None:  # pragma: no cover - an unusual scheduler backend
        return int(sc.defaultParallelism)
    task_cpus = max(1, int(sc.getConf().get("spark.task.cpus", "1") or 1))
    return state[0] // task_cpus


def wait_for_slots(sc: Any, workers: int, timeout: float, runlog: RunLog,
                   settle: float = 5.0) -> None:
    """On a cluster, wait for executors with ``workers`` task slots to register.

    Caching the data before they are there would put several partitions on one
    executor (and make later rounds queue behind each other). Gives up after
    ``timeout`` seconds, or ``settle`` seconds after the last change once some
    executor is there (fewer slots than workers: rounds run in waves).
    """
    master = str(sc.master)
    if master.startswith("local") and not master.startswith("local-cluster"):
        slots = local_slots(sc)
        if workers > slots:
            runlog.event("workers=%d exceeds the %d task slot(s) of master %s: each round "
                         "runs in %d waves of at most %d tasks", workers, slots, master,
                         -(-workers // slots), slots, level=logging.WARNING)
        return
    task_cpus = max(1, int(sc.getConf().get("spark.task.cpus", "1") or 1))
    start = last_change = time.monotonic()
    seen = None
    while time.monotonic() - start < timeout:
        state = _cluster(sc)
        if state is None:
            return
        cores, execs, managers = state
        if cores // task_cpus >= workers and managers >= execs:
            return
        now = time.monotonic()
        if state != seen:
            seen, last_change = state, now
        elif cores and managers >= execs and now - last_change > settle:
            break
        time.sleep(0.2)
    state = _cluster(sc) or (0, 0, 0)
    runlog.event("%d task slot(s) on %d executor(s) for %d workers: rounds run in waves",
                 state[0] // task_cpus, state[1], workers, level=logging.WARNING)
