"""Spark Connect: what a run does differently when its session is a Connect client.

A Spark Connect client (``SparkSession.builder.remote(...)``) has DataFrames
but no SparkContext: no RDDs, no broadcasts, no job groups, and no socket of
its own that the executors could be trusted to reach. Everything else a run
does — its rounds, what the tasks compute, the stores on the executors,
testing, checkpoints and resume — is the classic code; this module is the
difference, used wherever :func:`is_client` says so:

* :class:`ConnectContext` answers the few things a run asks of its
  SparkContext (conf, parallelism, master, job groups as Connect's job tags);
  a value the classic run broadcasts travels inside the query instead
  (:class:`Shipped`).
* :class:`FrameSource` caches every partition on its executor behind a cached
  DataFrame of store handles (:class:`FrameHandles`), where the classic run
  caches a small RDD of them; jobs over the handles are ``mapInArrow`` queries
  whose items come back pickled, one per row of Arrow batches. Spark keeps
  partition *i* of a cached DataFrame on the executor that computed it (block
  locality, as for the RDD; checked on ``local-cluster``), so each round's task
  finds its partition's store, and a lost executor's partitions are computed
  again elsewhere from lineage.
* :class:`PlanExchange` carries the weights inside each round's query and
  brings every worker's result back as Arrow batches, summed on the client as
  they arrive: for models of up to :data:`PLAN_LIMIT` bytes (4 million parameters).
* :func:`probe_workers`, :func:`predict_frame` and :func:`share_weights`:
  the workers' interpreter check, ``predict``'s last step and ``caffe_udf``'s
  weights.

Nothing here runs on a classic session, and nothing in the classic path
changes for it.
"""
from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sparknet.data.rdd import hash_partition_keys
from sparknet.io import default_parallelism, is_connect, spark_context
from sparknet.spark._messages import StoreHandle
from sparknet.spark._spark_exchange import TaskOutputResults, chunks
from sparknet.spark._store import MaterialiseSpec, materialise

log = logging.getLogger("sparknet.spark")

__all__ = ["PLAN_LIMIT", "ConnectContext", "context", "is_client", "share_weights"]

#: The most bytes of weights (or anything else a job ships) a Connect query carries. The
#: server takes messages of up to 128 MiB, but each task gets its own copy of the function
#: on the server's heap: at 48 MB, two local tasks exhausted a default 1 GB server (measured;
#: the JVM died), at 32 MB they passed. 16 MB (4 million parameters) leaves room for more
#: tasks; LeNet is 1.7 MB, CIFAR-10 quick 0.6 MB.
PLAN_LIMIT = 16 << 20

#: The one column of the Arrow batches that carry pickled items back to the client.
ITEMS = "item binary"
#: The deterministic global index of an example after a repartition (see FrameSource.spread).
INDEX = "__sparknet_index"
#: Where a Connect client's workers get their interpreter from, for messages.
SERVER_PYTHON = "the Connect server's PYSPARK_PYTHON"
#: How to fix the workers' interpreter of a Connect server.
FIX = ("start the Connect server with PYSPARK_PYTHON set to a Python that has this sparknet "
       "installed (for SparkSession.builder.remote('local[...]'), set it in this process's "
       "environment before the session starts)")
_BATCH_BYTES = 4 << 20


def is_client(sc: Any) -> bool:
    """Whether ``sc`` (what :func:`context` returned) is a Connect client's context."""
    return isinstance(sc, ConnectContext)


def context(spark: Any, what: str = "this") -> Any:
    """A run's context: the SparkContext of a classic session, or a Connect client's."""
    if is_connect(spark):
        return ConnectContext.of(spark)
    return spark_context(spark, what=what)


# -- the context -------------------------------------------------------------------------------

class Shipped:
    """A value that a classic run broadcasts, carried inside a Connect query instead."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __getstate__(self) -> Any:
        return self.value

    def __setstate__(self, value: Any) -> None:
        self.value = value

    def destroy(self, blocking: bool = False) -> None:
        """Nothing to remove: the value went with the queries that needed it."""

    unpersist = destroy


class _Conf:
    def __init__(self, spark: Any):
        self.spark = spark

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self.spark.conf.get(key, None)
        except Exception:  # noqa: BLE001  # a key the server does not know
            value = None
        return default if value is None else value


class ConnectContext:
    """What a run asks of its SparkContext, answered for a Spark Connect session.

    Job groups become Connect's job tags (``cancelJobGroup`` interrupts the
    tagged queries), ``broadcast`` ships the value inside the queries, the conf
    is the session's. One per session, so its checks are made once.
    """

    _BY_SESSION: ClassVar[dict[str, ConnectContext]] = {}
    _LOCK = threading.Lock()
    pythonExec = SERVER_PYTHON

    def __init__(self, spark: Any):
        self.spark = spark
        self._props: dict[str, Any] = {}
        self._tag: str | None = None

    @classmethod
    def of(cls, spark: Any) -> ConnectContext:
        with cls._LOCK:
            ctx = cls._BY_SESSION.get(spark.session_id)
            if ctx is None:
                ctx = cls._BY_SESSION[spark.session_id] = cls(spark)
            return ctx

    @property
    def master(self) -> str:
        return str(self.getConf().get("spark.master", ""))

    @property
    def defaultParallelism(self) -> int:
        return default_parallelism(self.spark)

    def getConf(self) -> _Conf:
        return _Conf(self.spark)

    def broadcast(self, value: Any) -> Shipped:
        return Shipped(value)

    def setJobGroup(self, group: str, description: str,
                    interruptOnCancel: bool = False) -> None:
        self.setLocalProperty("spark.jobGroup.id", group)
        self._props["spark.job.description"] = description

    def cancelJobGroup(self, group: str) -> None:
        try:
            self.spark.interruptTag(group)
        except Exception as e:  # noqa: BLE001  # a session that is gone has nothing running
            log.debug("could not interrupt %s: %s", group, e)

    def setJobDescription(self, description: str | None) -> None:
        self._props["spark.job.description"] = description

    def getLocalProperty(self, key: str) -> Any:
        return self._props.get(key)

    def setLocalProperty(self, key: str, value: Any) -> None:
        if key == "spark.jobGroup.id" and value != self._tag:
            if self._tag is not None:
                self.spark.removeTag(self._tag)
            if value:
                self.spark.addTag(value)
            self._tag = value or None
        self._props[key] = value


# -- items to and from Arrow batches ------------------------------------------------------------

def _to_batches(items: Iterable[Any]) -> Iterator[Any]:
    """Each item pickled into one row of :data:`ITEMS`, about 4 MB to a batch."""
    import pyarrow as pa

    rows: list[bytes] = []
    size = 0
    for item in items:
        data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        rows.append(data)
        size += len(data)
        if size >= _BATCH_BYTES:
            yield pa.RecordBatch.from_arrays([pa.array(rows, pa.binary())], ["item"])
            rows, size = [], 0
    if rows:
        yield pa.RecordBatch.from_arrays([pa.array(rows, pa.binary())], ["item"])


def _from_batches(batches: Iterable[Any]) -> Iterator[Any]:
    """The items of :func:`_to_batches`, read lazily (a task may leave the rest unread)."""
    for batch in batches:
        for data in batch.column(0).to_pylist():
            yield pickle.loads(data)


def _partition() -> int:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else 0


class _OverHandles:
    """``mapInArrow`` body: a task function ``fn(partition, handles)`` over cached handles.

    With ``only``, the other partitions read their input to its end (so that Spark
    keeps their Python workers) and yield nothing: a Connect query cannot run a
    subset of partitions as ``SparkContext.runJob`` does.
    """

    def __init__(self, fn: Callable[[int, Iterator[StoreHandle]], Iterable[Any]],
                 only: frozenset[int] | None = None):
        self.fn = fn
        self.only = only

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        partition = _partition()
        handles = _from_batches(batches)
        if self.only is not None and partition not in self.only:
            for _ in handles:
                pass
            return
        yield from _to_batches(self.fn(partition, handles))


def _plan_size(fn: Any) -> int:
    from pyspark.serializers import CloudPickleSerializer

    return len(CloudPickleSerializer().dumps(fn))


class FrameHandles:
    """The cached DataFrame of a run's store handles (one pickled handle per partition)."""

    def __init__(self, frame: Any):
        self.frame = frame

    def collect(self) -> list[StoreHandle]:
        """Compute (and cache) the handles: every partition converted once, kept local."""
        return [pickle.loads(row[0]) for row in self.frame.collect()]

    def run(self, fn: Callable[[int, Iterator[StoreHandle]], Iterable[Any]],
            partitions: Iterable[int] | None = None) -> Iterator[Any]:
        """The items ``fn`` yields on every partition (or those of ``partitions``)."""
        body = _OverHandles(fn, frozenset(partitions) if partitions is not None else None)
        size = _plan_size(body)
        if size > PLAN_LIMIT:  # the server would refuse the message with a gRPC error
            raise ValueError(
                f"this job would carry {size / 1e6:.0f} MB inside its Spark Connect query "
                f"(the weights, or the workers' checkpointed solver states), more than the "
                f"{PLAN_LIMIT >> 20} MiB sparknet sends that way (every task holds a copy on "
                "the server); train a model this large from a classic SparkSession")
        query = self.frame.mapInArrow(body, ITEMS)
        for row in query.toLocalIterator():
            yield pickle.loads(row[0])

    def unpersist(self) -> None:
        self.frame.unpersist(blocking=False)


# -- caching the data ---------------------------------------------------------------------------

def _column(values: Any) -> Any:
    """One Arrow column as the values a classic run's ``Row`` s would hold.

    Numeric lists come as numpy rows (float64, as the Row's Python floats would
    become), structs (Spark's image schema) as ``Row`` s, the rest as Python values.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    t = values.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = t.value_type
        if (pa.types.is_floating(inner) or pa.types.is_integer(inner)) and len(values) \
                and values.null_count == 0:
            lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
            flat = values.flatten()
            if flat.null_count == 0 and (lengths == lengths[0]).all():
                dtype = np.float64 if pa.types.is_floating(inner) else np.int64
                return flat.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(
                    len(values), int(lengths[0]))
        return [None if v is None else np.asarray(v) for v in values.to_pylist()]
    if pa.types.is_struct(t):
        from pyspark.sql import Row

        return [None if v is None else Row(**v) for v in values.to_pylist()]
    return values.to_pylist()


def _records(batches: Iterable[Any], indexed: bool) -> Iterator[Any]:
    """The examples of Arrow batches as dicts by column (``(index, dict)`` when indexed)."""
    for batch in batches:
        names = [n for n in batch.schema.names if n != INDEX]
        cols = {n: _column(batch.column(n)) for n in names}
        index = batch.column(INDEX).to_pylist() if indexed else None
        for i in range(batch.num_rows):
            record = {n: cols[n][i] for n in names}
            yield (index[i], record) if indexed else record


class _Materialise:
    """``mapInArrow`` body that caches one partition's examples (sparknet.spark._store)."""

    def __init__(self, spec: MaterialiseSpec):
        self.spec = spec

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        partition = _partition()
        yield from _to_batches(materialise(self.spec, partition,
                                           _records(batches, self.spec.indexed)))


class FrameSource:
    """A DataFrame of examples on its way to the executors' stores (Connect's RDD source)."""

    def __init__(self, ctx: ConnectContext, frame: Any, indexed: bool = False):
        self.ctx = ctx
        self.frame = frame
        self.indexed = indexed

    def first(self) -> list[Any]:
        """At most one example, for the driver's check."""
        return self.frame.take(1)

    def partitions(self) -> int:
        """How many partitions hold examples (one small job: Connect cannot ask the plan)."""
        from pyspark.sql import functions as F

        top = self.frame.select(F.spark_partition_id().alias("p")).agg(F.max("p")).first()[0]
        return 0 if top is None else int(top) + 1

    def spread(self, n: int) -> FrameSource:
        """The examples in ``n`` partitions, each knowing its global index.

        The classic run's deterministic repartition, in DataFrame terms: example *j*
        of source partition *s* (``monotonically_increasing_id`` is ``s << 33 | j``)
        goes to partition ``(j * S + s) mod n`` and keeps ``s << 40 | j`` as its
        index, so the stores hold the same examples in the same order as a classic
        session's and as any rerun's. A column of hash keys chosen per target
        partition makes Spark's hash partitioning send each example exactly there.
        """
        from pyspark.sql import functions as F

        sources = max(1, self.partitions())
        mid = "__sparknet_mid"
        frame = self.frame.withColumn(mid, F.monotonically_increasing_id())
        s = F.shiftright(F.col(mid), 33)
        j = F.col(mid).bitwiseAND(F.lit((1 << 33) - 1))
        target = F.pmod(j * F.lit(sources) + s, F.lit(n))
        keys = F.array(*[F.lit(k) for k in hash_partition_keys(self.ctx.spark, n)])
        frame = (frame.withColumn(INDEX, F.shiftleft(s, 40).bitwiseOR(j))
                 .repartition(n, F.element_at(keys, (target + 1).cast("int"))).drop(mid))
        return FrameSource(self.ctx, frame, indexed=True)

    def cache(self, spec: MaterialiseSpec, name: str) -> FrameHandles:
        """Handles of every partition's store, cached on the executors (computed lazily)."""
        from pyspark.storagelevel import StorageLevel

        handles = self.frame.mapInArrow(_Materialise(spec), ITEMS)
        return FrameHandles(handles.persist(StorageLevel.MEMORY_ONLY))


def source(ctx: ConnectContext, data: Any, names: Iterable[str], what: str,
           partitions: int | None = None) -> FrameSource:
    """The training or test data of a Connect run as a :class:`FrameSource`.

    ``(x, y)`` arrays are cut into ``partitions`` parts as a classic run cuts them.
    """
    from sparknet.spark._records import DataError, is_dataframe, select_columns

    names = tuple(names)
    if is_dataframe(data):
        return FrameSource(ctx, _arrow_ready(select_columns(data, names, what=what)))
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray):
        from sparknet.data.rdd import to_dataframe

        if len(names) != 2:
            raise DataError(f"{what}: (x, y) arrays feed a net with two input blobs; this "
                            f"one has {len(names)} ({', '.join(names)}): give a DataFrame "
                            "with a column per input blob")
        return FrameSource(ctx, to_dataframe(ctx.spark, data[0], data[1], names=names,
                                             num_partitions=partitions))
    raise DataError(f"{what}: a Spark Connect session takes a DataFrame with columns named "
                    f"after the input blobs, or an (x, y) pair of arrays; got "
                    f"{type(data).__name__} (RDDs need a classic SparkSession)")


def _arrow_ready(frame: Any) -> Any:
    """ML vector columns as arrays: Arrow has no user-defined types."""
    from pyspark.sql import functions as F

    vectors = [f.name for f in frame.schema.fields if type(f.dataType).__name__ == "VectorUDT"]
    if not vectors:
        return frame
    from pyspark.ml.functions import vector_to_array

    return frame.select(*[vector_to_array(F.col(c), "float64").alias(c) if c in vectors
                          else F.col(c) for c in frame.columns])


# -- the weights --------------------------------------------------------------------------------

def check_weights(nbytes: int, what: str) -> None:
    """Refuse weights larger than a Connect query may carry (:data:`PLAN_LIMIT`), naming why."""
    if nbytes > PLAN_LIMIT:
        raise ValueError(
            f"{what}: the weights ({nbytes / 1e6:.0f} MB, {nbytes // 4:,} parameters) are more "
            f"than the {PLAN_LIMIT >> 20} MiB ({PLAN_LIMIT // 4:,} parameters) sparknet sends "
            "inside a Spark Connect query (every task holds a copy on the server); use a "
            "classic SparkSession for a model this large")


class PlanChannel:
    """The round's weights inside its query; the result back as :class:`WeightChunk` items."""

    __slots__ = ("flat",)

    def __init__(self, flat: np.ndarray):
        self.flat = flat

    def __getstate__(self) -> np.ndarray:
        return self.flat

    def __setstate__(self, flat: np.ndarray) -> None:
        self.flat = flat

    def weights(self, home: Path | None = None) -> np.ndarray:
        """The published vector (read-only)."""
        return self.flat

    def send(self, partition: int, flat: np.ndarray, home: Path | None = None
             ) -> Iterator[Any]:
        """The items that carry ``flat`` back in the task's Arrow output."""
        return chunks(flat)


class PlanExchange(TaskOutputResults):
    """The driver's side of :class:`PlanChannel` for a Spark Connect client.

    The vector published is pickled into each query that uses the channel when
    that query is sent (before :meth:`release`), so the caller's buffer is not
    copied. Results arrive as items of the round job, which the caller folds.
    """

    name = "connect"

    def where(self) -> str:
        return "each round's Spark Connect query and its Arrow results"

    def publish(self, flat: np.ndarray) -> PlanChannel:
        check_weights(flat.nbytes, "train")
        return PlanChannel(flat)

    def release(self, channel: Any) -> None:
        pass


def check_run(exchange: str, reduction: str, num_params: int) -> None:
    """Refuse, before any job, what a Connect run cannot do, naming what to do instead."""
    if exchange == "ring":  # its tasks meet at an exchange in the driver's process
        raise ValueError("exchange='ring' needs a classic SparkSession (its barrier tasks meet "
                         "at the driver's exchange); a Spark Connect session moves the weights "
                         "inside its queries: leave exchange='auto'")
    if exchange != "auto":
        raise ValueError(f"exchange='{exchange}' needs a classic SparkSession (the driver's "
                         "socket or Spark's broadcasts); a Spark Connect session moves the "
                         "weights inside its queries: leave exchange='auto'")
    if reduction == "tree":
        raise ValueError("reduction='tree' sums on the executors through RDDs, which a Spark "
                         "Connect session does not have: leave reduction='auto'")
    check_weights(4 * num_params, "train")


def open_exchange(mode: str, reduction: str, event: Callable[..., None]) -> PlanExchange:
    """A Connect run's exchange (its options were checked by :func:`check_run`)."""
    check_run(mode, reduction, 0)
    exchange = PlanExchange()
    event("weights travel through %s", exchange.where())
    return exchange


def share_weights(flat: np.ndarray, session: Any = None) -> Shipped | None:
    """``caffe_udf``'s weights for a Connect session (inside the UDF); None for a classic one.

    ``session`` is the DataFrame's session when known, else the active one.
    """
    if session is None:
        from pyspark.sql.utils import is_remote

        if not is_remote():
            return None
    elif not is_connect(session):
        return None
    flat = np.ascontiguousarray(flat, np.float32).reshape(-1)
    check_weights(flat.nbytes, "caffe_udf")
    return Shipped(flat)


# -- the workers' interpreter ------------------------------------------------------------------

_PROBE_ARROW = '''
def probe_arrow(batches):
    import pyarrow as pa
    for _ in batches:
        pass
    rows = list(probe(iter(())))
    yield pa.RecordBatch.from_pylist(
        [dict(zip(("executable", "python", "version", "path", "error"), r)) for r in rows],
        schema=pa.schema([(n, pa.string()) for n in
                          ("executable", "python", "version", "path", "error")]))
'''


def probe_workers(ctx: ConnectContext, probe_source: str, tasks: int) -> list[tuple]:
    """``probe_source``'s ``probe`` run in ``tasks`` Python workers of the Connect server.

    Compiled outside any importable module (as the classic check's is), so that it
    runs even where the workers cannot import sparknet.
    """
    namespace: dict[str, Any] = {"__name__": "sparknet_worker_probe"}
    exec(compile(probe_source + _PROBE_ARROW, "<sparknet worker probe>", "exec"), namespace)
    schema = "executable string, python string, version string, path string, error string"
    rows = ctx.spark.range(tasks, numPartitions=tasks).mapInArrow(
        namespace["probe_arrow"], schema).collect()
    return [tuple(r) for r in rows]


# -- predict -------------------------------------------------------------------------------------

class _Predict:
    """``mapInArrow`` body of ``predict``: records in, one row per example out."""

    def __init__(self, task: Callable[[int, Iterator[Any]], Iterator[tuple]], schema: Any):
        self.task = task
        self.schema = schema

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        rows: list[tuple] = []
        for row in self.task(_partition(), _records(batches, False)):
            rows.append(row)
            if len(rows) >= 1024:
                yield self._batch(pa, rows)
                rows = []
        if rows:
            yield self._batch(pa, rows)

    def _batch(self, pa: Any, rows: list[tuple]) -> Any:
        cols = list(zip(*rows))
        return pa.RecordBatch.from_arrays(
            [pa.array(list(c), f.type) for c, f in zip(cols, self.schema)], schema=self.schema)


def predict_frame(frame: Any, task: Callable[[int, Iterator[Any]], Iterator[tuple]],
                  schema: Any, vectors: Iterable[str] = ()) -> Any:
    """``predict``'s DataFrame on a Connect client: ``task`` over ``frame``'s partitions.

    ``task(partition, records)`` yields one tuple per example, in ``schema``'s
    columns, with arrays for the blobs named in ``vectors``, which become ML
    vectors here (Arrow has no user-defined types).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    vectors = set(vectors)
    passed = {f.name for f in schema.fields if type(f.dataType).__name__ == "VectorUDT"}
    arrays = T.StructType([
        T.StructField(f.name, T.ArrayType(T.FloatType(), False), f.nullable) if f.name in vectors
        else T.StructField(f.name, T.ArrayType(T.DoubleType(), False), f.nullable)
        if f.name in passed else f for f in schema.fields])
    body = _Predict(task, to_arrow_schema(arrays))
    size = _plan_size(body)
    if size > PLAN_LIMIT:
        raise ValueError(f"predict would carry {size / 1e6:.0f} MB inside its Spark Connect "
                         f"query (the weights), more than the {PLAN_LIMIT >> 20} MiB sparknet "
                         "sends that way (every task holds a copy on the server); run a model "
                         "this large from a classic SparkSession")
    out = _arrow_ready(frame).mapInArrow(body, arrays)
    vectors |= passed
    if vectors:
        from pyspark.ml.functions import array_to_vector

        out = out.select(*[array_to_vector(F.col(c)).alias(c) if c in vectors else F.col(c)
                           for c in out.columns])
    return out
