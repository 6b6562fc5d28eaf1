"""Distributed training: SparkNet's synchronous parameter averaging, and EASGD.

:func:`train` is the entry point. One round: the driver publishes the
weights; each of K workers sets them in its cached net, runs
``sync_interval`` solver steps on minibatches drawn from its own cached
partition, and sends its weights back; the driver adds them into a single
accumulator as they arrive, divides by K and goes on. The weights travel
through a TCP exchange in the driver, or through Spark's broadcast and task
results (:mod:`sparknet.spark._comm`).
:class:`EASGD` keeps a local model per worker tied to the averaged "centre"
by an elastic force instead.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from sparknet.data._io import named_os_error
from sparknet.engine import CaffeError, CaffeNet, WeightCollection, solver_proto
from sparknet.proto import caffe_pb2
from sparknet.spark import _comm
from sparknet.spark._python import WorkerPythonError, prepare_workers, worker_hint
from sparknet.spark._records import (
    DataError,
    ExampleSpec,
    LabelRule,
    dataframe_records,
    is_dataframe,
    label_rules,
    shape_str,
)
from sparknet.spark._runlog import RunLog, plot_history
from sparknet.spark._store import MaterialiseSpec, materialise
from sparknet.spark._worker import (
    Fault,
    NetSpec,
    RoundSpec,
    RunExtras,
    TestSpec,
    cleanup_task,
    ping_task,
    round_task,
    test_task,
)
from sparknet.spark.checkpoint import WEIGHTS, CheckpointError, Checkpoints, open_storage

log = logging.getLogger("sparknet.spark")

__all__ = ["EASGD", "Averaging", "TrainResult", "TrainingDiverged", "WorkerPythonError", "train"]


# -- strategies ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Averaging:
    """SparkNet's synchronous parameter averaging: the new weights are the workers' mean."""

    name = "average"

    def describe(self, workers: int) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class EASGD:
    """Elastic averaging SGD (Zhang, Choromanska & LeCun, 2015), synchronous, period tau.

    Each worker keeps its own weights ``x_i`` across rounds; after its
    ``sync_interval`` steps it moves ``x_i -= a * (x_i - c)`` towards the
    centre ``c``, and the driver moves the centre ``c += a * sum_i(x_i - c)``.
    ``moving_rate`` is ``a`` (default ``0.9 / workers``, i.e. the paper's
    ``beta = K * a = 0.9``). The centre is what is tested, checkpointed and
    returned.
    """

    moving_rate: float | None = None
    name = "easgd"

    def rate(self, workers: int) -> float:
        a = self.moving_rate if self.moving_rate is not None else 0.9 / workers
        if not 0.0 < a <= 1.0:
            raise ValueError(f"EASGD moving_rate must be in (0, 1], got {a}")
        return float(a)

    def describe(self, workers: int) -> dict[str, Any]:
        return {"name": self.name, "moving_rate": self.rate(workers)}


def _strategy(value: Any) -> Averaging | EASGD:
    if isinstance(value, (Averaging, EASGD)):
        return value
    if isinstance(value, str):
        v = value.lower()
        if v in ("average", "averaging", "sparknet", "sync", "synchronous"):
            return Averaging()
        if v == "easgd":
            return EASGD()
    raise ValueError(f"strategy must be 'average', 'easgd', Averaging() or EASGD(...), "
                     f"got {value!r}")


# -- results and errors ------------------------------------------------------------------------

class TrainingDiverged(RuntimeError):
    """The training loss (or the weights) became NaN or infinite; the run stopped.

    ``round`` is the 1-based round, ``partition`` the worker's partition,
    ``checkpoint`` the last good checkpoint (or ``None``).
    """

    def __init__(self, message: str, *, round: int, partition: int | None,
                 checkpoint: str | None, history: list[dict]):
        super().__init__(message)
        self.round = round
        self.partition = partition
        self.checkpoint = checkpoint
        self.history = history


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``weights``: the averaged (EASGD: centre) weights. ``history``: one dict
    per round — ``round``, ``time`` (seconds since the start of training),
    ``loss`` (mean training loss of the round over all workers and steps),
    ``images``, ``images_per_second``, ``seconds`` (``round``, ``broadcast``
    (until the slowest worker had the weights), ``compute``, ``save`` (the
    workers' solver state, for retries), ``collect``, ``average``, and
    ``test``/``checkpoint`` when they ran) and, when tested, ``test`` (TEST output blob -> mean over the
    test set). ``log_path``, ``history_path``, ``plot_path``: the files
    written to ``output_dir``. ``checkpoint``: the last checkpoint written.
    ``exchange``: how the weights travelled, ``"socket"`` or ``"spark"``.
    """

    weights: WeightCollection
    history: list[dict]
    solver: caffe_pb2.SolverParameter
    log_path: Path | None = None
    history_path: Path | None = None
    plot_path: Path | None = None
    checkpoint: str | None = None
    s3_options: Any = field(default=None, repr=False)
    exchange: str | None = None

    @property
    def rounds(self) -> int:
        return self.history[-1]["round"] if self.history else 0

    @property
    def test(self) -> dict[str, Any] | None:
        """The last test metrics, if the run tested."""
        return next((h["test"] for h in reversed(self.history) if h.get("test")), None)

    def net(self) -> CaffeNet:
        """A local :class:`CaffeNet` of the solver, holding the trained weights."""
        net = CaffeNet(self.solver)
        net.set_weights(self.weights)
        return net

    def save(self, path: str | os.PathLike) -> str:
        """Write the weights as a ``.caffemodel`` (a local path or ``s3://``); returns it."""
        from sparknet.spark.checkpoint import is_s3

        net = self.net()
        if is_s3(path):
            from sparknet.spark.checkpoint import S3Storage

            storage = S3Storage(str(path).rsplit("/", 1)[0], self.s3_options)
            with tempfile.TemporaryDirectory() as d:
                local = Path(d) / "weights.caffemodel"
                net.save_weights(local)
                storage.write_file(str(path).rsplit("/", 1)[1], local)
            return str(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_caffemodel(net, path)
        return os.fspath(path)

    def plot(self, path: str | os.PathLike) -> Path:
        """Plot loss and test metrics against time into a PNG."""
        return plot_history(self.history, path)


# -- helpers -------------------------------------------------------------------------------------

def save_caffemodel(net: CaffeNet, path: str | os.PathLike) -> None:
    """``net.save_weights(path)``; a failed write (disk full) is an ``OSError`` naming ``path``.

    Caffe's own message for it names neither the file nor the cause. The
    engine writes atomically, so an older file at ``path`` stays whole.
    """
    try:
        net.save_weights(path)
    except CaffeError as e:
        # the engine writes "<path>.tmp<pid>" and renames it; a failed write leaves it
        Path(f"{os.fspath(path)}.tmp{os.getpid()}").unlink(missing_ok=True)
        raise OSError(f"cannot write {os.fspath(path)}: Caffe failed to write the weights "
                      f"(disk full or over a quota?): {e}") from None


def _context(spark: Any) -> Any:
    sc = getattr(spark, "sparkContext", spark)
    if not hasattr(sc, "parallelize"):
        raise TypeError(f"expected a SparkSession or SparkContext, got {type(spark).__name__}")
    return sc


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _memory_bytes(text: str | None, default: int) -> int:
    if not text:
        return default
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(text).lower())
    if not m:
        return default
    scale = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


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


def _wait_for_slots(sc: Any, workers: int, timeout: float, runlog: RunLog,
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


class _StateFiles:
    """Writes the partitions' solver states streamed back in a checkpoint round."""

    def __init__(self, staged: Path | None):
        self.staged = staged
        self.files: dict[int, dict[str, str]] = {}
        self._open: dict[tuple[int, str], Any] = {}

    def __call__(self, item: tuple) -> None:
        _, p, kind, offset, data = item
        key = (p, kind)
        if offset < 0:  # the end of that file
            f = self._open.pop(key, None)
            if f is not None:
                f.close()
            return
        f = self._open.get(key)
        if f is None:
            if self.staged is None:
                raise RuntimeError("solver state arrived outside a checkpoint round")
            name = f"workers/part-{p:05d}.{kind}"
            (self.staged / "workers").mkdir(parents=True, exist_ok=True)
            try:
                f = self._open[key] = open(self.staged / name, "wb")  # noqa: SIM115
            except OSError as e:
                raise named_os_error(e, self.staged / name) from None
            self.files.setdefault(p, {})[kind] = name
        try:
            f.write(data)
        except OSError as e:  # a full disk: say which file
            raise named_os_error(e, f.name) from None

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


# -- the trainer ------------------------------------------------------------------------------------

class _Trainer:
    def __init__(self, spark: Any, solver: Any, train_data: Any, *, test_data: Any,
                 workers: int | None, sync_interval: int, rounds: int,
                 test_interval: int | None, checkpoint_dir: Any, checkpoint_interval: int | None,
                 resume: bool, output_dir: Any, seed: int, strategy: Any,
                 preprocess: Any, transform: Any, test_transform: Any, shuffle: bool,
                 init_weights: Any, progress: bool | None,
                 callback: Callable[[dict], Any] | None, keep_checkpoints: int, gpu: bool,
                 blas_threads: int | None, s3_options: Any, reduction: str,
                 exchange: str, executor_wait: float, fault: Fault | None):
        self.sc = _context(spark)
        self.spark = spark
        if int(sync_interval) < 1:
            raise ValueError(f"sync_interval must be >= 1, got {sync_interval}")
        if int(rounds) < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        self.tau = int(sync_interval)
        self.rounds = int(rounds)
        self.test_interval = int(test_interval) if test_interval else 0
        self.ckpt_interval = int(checkpoint_interval) if checkpoint_interval else 0
        self.seed = int(seed)
        self.strategy = _strategy(strategy)
        self.shuffle = bool(shuffle)
        self.callback = callback
        self.gpu = bool(gpu)
        self.blas_threads = blas_threads
        self.s3_options = s3_options
        if reduction not in ("auto", "driver", "tree"):
            raise ValueError(f"reduction must be 'auto', 'driver' or 'tree', got {reduction!r}")
        if exchange not in ("auto", "socket", "spark"):
            raise ValueError(f"exchange must be 'auto', 'socket' or 'spark', got {exchange!r}")
        if exchange == "socket" and reduction == "tree":
            raise ValueError("reduction='tree' sums on the executors, through Spark: it needs "
                             "exchange='spark' (or 'auto')")
        self.reduction = reduction
        self.exchange_mode = exchange
        self.exchange: _comm.SocketExchange | _comm.SparkExchange | None = None
        self._exchange_used: str | None = None
        self.fault = fault
        self.workers = int(workers) if workers else int(self.sc.defaultParallelism)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.train_data, self.test_data = train_data, test_data
        self.preprocess = preprocess
        self.extras = RunExtras(self._transforms(transform, "transform"),
                                self._transforms(test_transform, "test_transform"))
        self.run_id = uuid.uuid4().hex[:12]
        self.resume = bool(resume)
        self.output_dir = output_dir
        self.progress = progress
        self.executor_wait = float(executor_wait)
        self.init_weights = init_weights

        # the solver: the driver's copy (initial weights, saving) and the workers' bytes
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(solver_proto(solver))
        if param.random_seed < 0:
            param.random_seed = self.seed
        self.param = param
        worker = caffe_pb2.SolverParameter()
        worker.CopyFrom(param)
        worker.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
        worker.ClearField("snapshot_prefix")
        worker.snapshot = 0
        self.worker_solver = worker.SerializeToString(deterministic=True)
        self.solver_key = _digest(self.worker_solver)
        self.net_spec = NetSpec(self.worker_solver, self.solver_key, self.gpu, blas_threads)

        self._net: CaffeNet | None = self._build_driver_net()
        net = self._net
        self.names = tuple(net.input_names)
        if not self.names:
            raise ValueError("the net has no input blobs: sparknet feeds Input layers (replace "
                             "Data layers, e.g. ProtoLoader.replace_data_layers)")
        self.shapes = {n: tuple(s) for n, s in net.input_shapes.items()}
        self.batch = int(self.shapes[self.names[0]][0])
        for n in self.names:
            if not self.shapes[n] or self.shapes[n][0] != self.batch:
                raise ValueError(f"input blob '{n}' has shape {shape_str(self.shapes[n])}; every "
                                 f"input must have the batch size {self.batch} first")
        self.example_shapes = {n: s[1:] for n, s in self.shapes.items()}
        test_shapes = {n: tuple(s) for n, s in net.test_input_shapes.items()}
        self.test_names = tuple(n for n in net.blob_names("TEST") if n in test_shapes)
        self.test_batch = int(next(iter(test_shapes.values()))[0]) if test_shapes else self.batch
        self.test_example_shapes = {n: s[1:] for n, s in test_shapes.items()}
        self.test_outputs = list(net.test_output_names)
        self.layout = net.weight_layout
        self.num_params = sum(math.prod(s) for _, shapes in self.layout for s in shapes)
        self.train_rules = label_rules(param.net_param, "TRAIN", self.names,
                                       net.blob_shapes("TRAIN"))
        self.test_rules = label_rules(param.net_param, "TEST", self.test_names,
                                      net.blob_shapes("TEST"))
        self.storage = (open_storage(checkpoint_dir, s3_options)
                        if checkpoint_dir is not None else None)
        self.ckpts = Checkpoints(self.storage, keep_checkpoints) if self.storage else None
        self.history: list[dict] = []
        self.last_checkpoint: str | None = None
        self.handles: dict[str, Any] = {}
        self._sources: dict[str, tuple] = {}
        self._datasets: list[str] = []
        self._rerun: set[int] = set()
        self._rebuilt = 0
        self._broadcasts: list[Any] = []

    # -- pieces ---------------------------------------------------------------------------------
    def _build_driver_net(self) -> CaffeNet:
        return CaffeNet(self.param)

    def driver_net(self) -> CaffeNet:
        if self._net is None:
            self._net = self._build_driver_net()
        return self._net

    def _release_driver_net(self) -> None:
        """Drop the driver's net when the model is large (it holds weights, diffs, history)."""
        if self.num_params * 4 > (64 << 20):
            self._net = None

    def _transforms(self, value: Any, what: str) -> dict[str, Callable[..., Any]]:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        if callable(value):
            return {"__first__": value}
        raise TypeError(f"{what} must be a callable (applied to each batch of the first input "
                        f"blob) or a dict of input blob name -> callable")

    def _fix_transforms(self) -> None:
        for d, names in ((self.extras.transform, self.names),
                         (self.extras.test_transform, self.test_names or self.names)):
            if "__first__" in d:
                d[names[0]] = d.pop("__first__")

    def config(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed by this run."""
        return {"solver_sha1": self.solver_key, "workers": self.workers,
                "sync_interval": self.tau, "seed": self.seed, "shuffle": self.shuffle,
                "batch_size": self.batch, "num_params": self.num_params,
                "strategy": self.strategy.describe(self.workers)}

    # -- data --------------------------------------------------------------------------------------
    def _examples(self, data: Any, names: Sequence[str], shapes: Mapping[str, Sequence[int]],
                  what: str) -> Any:
        from pyspark import RDD

        if is_dataframe(data):
            return dataframe_records(data, names, shapes, what=what)
        if isinstance(data, RDD):
            return data
        if (isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], np.ndarray)):
            from sparknet.data.rdd import to_rdd

            return to_rdd(self.sc, data[0], data[1], self.workers)
        raise TypeError(f"{what} must be an RDD of examples, a DataFrame with columns named "
                        f"after the input blobs, or an (x, y) pair of arrays; got "
                        f"{type(data).__name__}")

    def _materialise(self, data: Any, what: str, names: Sequence[str],
                     shapes: Mapping[str, tuple[int, ...]], rules: Sequence[LabelRule],
                     partitions: int | None, runlog: RunLog) -> Any:
        """Check one example on the driver, then cache every partition on its executor."""
        t0 = time.perf_counter()
        transforms = self.extras.transform if what == "train_data" else self.extras.test_transform
        examples = ExampleSpec(tuple(names), dict(shapes), tuple(r.blob for r in rules),
                               self.preprocess, True, what,
                               free=tuple(n for n in names if n in transforms))
        rdd = self._examples(data, names, shapes, what)
        first = rdd.take(1)
        if not first:
            raise DataError(f"{what} is empty")
        arrays = examples.convert(first[0], f"{what} example 0")  # DataError on a misfit
        self._check_transforms(transforms, arrays, shapes, what)
        indexed = False
        sources = rdd.getNumPartitions()
        if partitions is not None and sources != partitions:
            runlog.event("%s: %d partitions -> %d (one repartition, deterministic)", what,
                         sources, partitions)
            rdd = (rdd.mapPartitionsWithIndex(_keyed)
                   .partitionBy(partitions, _Spread(sources)))
            indexed = True
        spec = MaterialiseSpec(f"{self.run_id}-{what}", examples, indexed,
                               tuple(sorted({r.blob for r in rules})))
        self._sources[what] = (rdd, spec, rules)
        return self._cache(what, runlog, t0)

    def _check_transforms(self, transforms: Mapping[str, Callable[..., Any]],
                          arrays: Mapping[str, np.ndarray],
                          shapes: Mapping[str, tuple[int, ...]], what: str) -> None:
        """A transform must turn a cached example into what its blob takes (on the driver)."""
        kind = "transform" if what == "train_data" else "test_transform"
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

    def _cache(self, what: str, runlog: RunLog, t0: float) -> Any:
        """Compute the cached handles of ``what``: each partition converted once, kept local."""
        import dataclasses

        rdd, spec, rules = self._sources[what]
        if what in self.handles:  # a rebuild: a fresh store folder, the old one is dropped
            self.handles[what].unpersist(blocking=False)
            spec = dataclasses.replace(spec, dataset=f"{spec.dataset}-{len(self._datasets)}")
        self._datasets.append(spec.dataset)
        handles_rdd = rdd.mapPartitionsWithIndex(functools.partial(materialise, spec))
        handles_rdd = handles_rdd.setName(f"sparknet {what} ({self.run_id})").cache()
        self.handles[what] = handles_rdd
        self.sc.setJobDescription(f"sparknet: cache {what} on the workers")
        handles = sorted(handles_rdd.collect(), key=lambda h: h["partition"])
        self._check(handles, what, rules)
        sizes = [h["n"] for h in handles]
        for h in handles:  # sampled minibatches wrap around a partition smaller than one
            if what == "train_data" and 0 < h["n"] < self.batch:
                runlog.event("%s: partition %d holds %d example(s), fewer than one minibatch "
                             "of %d: every minibatch repeats each of them about %.1f times",
                             what, h["partition"], h["n"], self.batch, self.batch / h["n"],
                             level=logging.WARNING)
        runlog.event("%s: %d examples cached in %d partitions (%s per partition, %.1f MB) "
                     "in %.2f s", what, sum(sizes), len(sizes),
                     f"{min(sizes)}-{max(sizes)}" if min(sizes) != max(sizes) else str(sizes[0]),
                     sum(h["bytes"] for h in handles) / 1e6, time.perf_counter() - t0)
        return handles_rdd

    def _check(self, handles: Sequence[dict], what: str, rules: Sequence[LabelRule]) -> None:
        errors = [h["error"] for h in handles if h.get("error")]
        if errors:
            more = f" (and {len(errors) - 1} more partitions)" if len(errors) > 1 else ""
            raise DataError(errors[0] + more)
        for h in handles:
            if h["n"] == 0:
                raise DataError(f"{what}: partition {h['partition']} is empty "
                                f"({sum(x['n'] for x in handles)} examples for "
                                f"{len(handles)} partitions)")
            for blob, where in h.get("nonfinite", {}).items():
                raise DataError(f"{what}: input blob '{blob}' has NaN or infinite values "
                                f"(partition {h['partition']}, example {where})")
        for rule in rules:
            stats = [h["stats"][rule.blob] for h in handles if rule.blob in h.get("stats", {})]
            if not stats:
                continue
            lo = min(s["min"] for s in stats)
            hi = max(s["max"] for s in stats)
            integral = all(s["integral"] for s in stats)
            ok_lo = lo >= 0 or (rule.ignore_label is not None and lo == rule.ignore_label)
            ok_hi = hi < rule.classes or (rule.ignore_label is not None
                                           and hi == rule.ignore_label)
            if not (integral and ok_lo and ok_hi):
                bad = ("non-integer values" if not integral
                       else f"values from {lo:g} to {hi:g}")
                raise DataError(
                    f"{what}: input blob '{rule.blob}' has {bad}, but layer '{rule.layer}' "
                    f"({rule.layer_type}) reads it as class indices of '{rule.scores}', which "
                    f"has {rule.classes} classes: labels must be integers in "
                    f"[0, {rule.classes})")

    # -- weights ------------------------------------------------------------------------------------
    def _initial_weights(self) -> np.ndarray:
        net = self.driver_net()
        init = self.init_weights
        if init is not None:
            if isinstance(init, TrainResult):
                init = init.weights
            if isinstance(init, WeightCollection):
                net.set_weights(init)
            else:
                self._load_caffemodel(net, init)
        flat = np.array(net.get_weights().flat, np.float32, copy=True)
        self._release_driver_net()
        return flat

    def _load_caffemodel(self, net: CaffeNet, path: Any) -> None:
        from sparknet.spark.checkpoint import is_s3

        if is_s3(path):
            from sparknet.spark.checkpoint import S3Storage

            base, name = str(path).rsplit("/", 1)
            with tempfile.TemporaryDirectory() as d:
                local = Path(d) / name
                if not S3Storage(base, self.s3_options).download(name, local):
                    raise FileNotFoundError(f"{path} does not exist")
                net.load_weights(local)
        else:
            net.load_weights(path)

    def _save_weights(self, flat: np.ndarray, path: Path) -> None:
        net = self.driver_net()
        net.set_weights(WeightCollection.from_flat(self.layout, flat))
        save_caffemodel(net, path)
        self._release_driver_net()

    # -- jobs ----------------------------------------------------------------------------------------
    def _direct_limit(self) -> int:
        mem = _memory_bytes(self.sc.getConf().get("spark.driver.memory"), 1 << 30)
        return max(mem // 4, 4 * self.num_params)

    def _open_exchange(self) -> _comm.SocketExchange | _comm.SparkExchange:
        """How weights and results travel: the driver's socket exchange, else Spark's paths."""
        conf = self.sc.getConf()
        encrypted = any(conf.get(k, "false").lower() == "true" for k in
                        ("spark.network.crypto.enabled", "spark.io.encryption.enabled"))
        mode = self.exchange_mode
        if mode == "auto":
            if self.reduction == "tree":
                mode = "spark"  # partial sums on the executors come through Spark
            elif encrypted:
                mode = "spark"  # the exchange does not encrypt: keep the weights in Spark's
        if mode == "spark":
            return _comm.SparkExchange(self.sc)
        if encrypted:  # exchange="socket", asked for
            self._event("exchange='socket': the weights travel unencrypted although Spark "
                        "encrypts its own traffic", level=logging.WARNING)
        try:
            exchange = _comm.SocketExchange.for_context(self.sc)
        except OSError as e:
            if self.exchange_mode == "socket":
                raise
            self._event("cannot open the driver's weight exchange (%s); weights travel "
                        "through Spark instead", e, level=logging.WARNING)
            return _comm.SparkExchange(self.sc)
        try:
            # every executor that holds training data must reach it
            self.sc.setJobDescription("sparknet: reach the weight exchange")
            probe = exchange.publish(np.zeros(1, np.float32))
            failed = [(host, err) for host, err in self.handles["train_data"].mapPartitions(
                functools.partial(ping_task, probe)).collect() if err]
        except BaseException:
            exchange.close()
            raise
        if not failed:
            self._event("weights travel through the driver's exchange at %s", exchange.where())
            return exchange
        exchange.close()
        host, err = failed[0]
        if self.exchange_mode == "socket":
            raise ConnectionError(f"executor {host} cannot reach the driver's weight exchange "
                                  f"at {exchange.where()}: {err}")
        self._event("executor %s cannot reach the driver's weight exchange at %s (%s); "
                    "weights travel through Spark instead", host, exchange.where(), err,
                    level=logging.WARNING)
        return _comm.SparkExchange(self.sc)

    def _use_tree(self) -> bool:
        if not isinstance(self.exchange, _comm.SparkExchange):
            return False  # results are added up in the driver as they arrive
        if self.reduction == "tree":
            return True
        if self.reduction == "driver":
            return False
        return self.workers * self.num_params * 4 > self._direct_limit()

    def _run_round(self, spec: RoundSpec, chan: Any, extras_bc: Any, install_bc: Any,
                   acc: np.ndarray, on_state: Callable[[tuple], None]) -> list[dict]:
        try:
            for _attempt in range(3):
                metas = self._round_job(spec, self.exchange.accept(chan, acc), extras_bc,
                                        install_bc, acc, on_state)
                sent = [m["partition"] for m in metas
                        if not m.get("missing_store") and not m.get("nonfinite")]
                lost = self.exchange.missing(sent)
                if lost:  # pragma: no cover - a task succeeds once the driver has its result
                    raise RuntimeError(f"round {spec.round + 1}: the results of partitions "
                                       f"{lost} did not all arrive at {self.exchange.where()}")
                spliced = self.exchange.spliced()
                if not spliced:
                    return metas
                # a task died while pushing, and its retry computed another result (its
                # executor was lost, with the partition's solver state): redo the round
                self._event("round %d: partition(s) %s sent parts of two different results; "
                            "redoing the round", spec.round + 1, spliced,
                            level=logging.WARNING)
            raise RuntimeError(f"round {spec.round + 1}: partitions {spliced} kept sending "
                               "parts of different results")
        finally:
            self.exchange.end()

    def _round_job(self, spec: RoundSpec, chan: Any, extras_bc: Any, install_bc: Any,
                   acc: np.ndarray, on_state: Callable[[tuple], None],
                   rebuilt: bool = False) -> list[dict]:
        fn = functools.partial(round_task, spec, chan, extras_bc, install_bc)
        rdd = self.handles["train_data"].mapPartitionsWithIndex(fn)
        metas: list[dict] = []

        def other(item: Any) -> None:
            if item[0] == "m":
                metas.append(item[1])
            elif item[0] == "s":
                on_state(item)

        self.sc.setJobDescription(f"sparknet: round {spec.round + 1}")
        if self._use_tree():
            target = max(1, self._direct_limit() // (4 * self.num_params))
            _comm.fold(_comm.tree_sum(rdd, self.num_params, 8, target), acc, other)
        else:
            _comm.fold(_comm.stream(rdd), acc, other)
        for _ in range(3):
            missing = sorted(m["partition"] for m in metas if m.get("missing_store"))
            if not missing:
                return metas
            metas[:] = [m for m in metas if not m.get("missing_store")]
            # A task ran on an executor other than the one holding its partition's data
            # (Spark gave up waiting for it): run those partitions again on their own, when
            # their executors are free.
            self._event("round %d: partition(s) %s ran away from their cached data; running "
                        "them again", spec.round + 1, missing, level=logging.WARNING)
            self._rerun.update(missing)
            _comm.fold(self.sc.runJob(rdd, _passthrough, missing), acc, other)
        missing = sorted(m["partition"] for m in metas if m.get("missing_store"))
        if not missing:
            return metas
        if rebuilt:
            raise RuntimeError(f"round {spec.round + 1}: partitions {missing} could not be run "
                               "where their data is cached")
        self._event("round %d: caching the training data again and redoing the round",
                    spec.round + 1, level=logging.WARNING)
        self._rebuilt += 1
        self._cache("train_data", self.runlog, time.perf_counter())
        # the partitions that did run send their results again, into a zeroed accumulator
        return self._round_job(spec, self.exchange.accept(chan, acc), extras_bc, install_bc,
                               acc, on_state, rebuilt=True)

    def _run_test(self, chan: Any, extras_bc: Any, rebuilt: bool = False) -> dict[str, Any]:
        spec = TestSpec(self.run_id, self.net_spec, self.test_batch, self.seed,
                        self.test_names or self.names,
                        local_weights=isinstance(self.strategy, EASGD))
        rdd = self.handles["test_data"].mapPartitionsWithIndex(
            functools.partial(test_task, spec, chan, extras_bc))
        self.sc.setJobDescription("sparknet: test")
        items = list(_comm.stream(rdd))
        results = [i[1] for i in items if i[0] == "t"]
        missing = [i[1]["partition"] for i in items if i[0] == "m" and i[1].get("missing_store")]
        for attempt in range(4):
            if not missing:
                break
            if attempt == 3:
                if rebuilt:
                    raise RuntimeError(f"test partitions {missing} could not be run where "
                                       "their data is cached")
                self._cache("test_data", self.runlog, time.perf_counter())
                return self._run_test(chan, extras_bc, rebuilt=True)
            items = self.sc.runJob(rdd, _passthrough, missing)
            results += [i[1] for i in items if i[0] == "t"]
            missing = [i[1]["partition"] for i in items
                       if i[0] == "m" and i[1].get("missing_store")]
        total = sum(r["n"] for r in results)
        out: dict[str, Any] = {}
        for name in self.test_outputs:
            vals = [(r["n"], r["metrics"][name]) for r in results if name in r["metrics"]]
            if not vals:
                continue
            if all(isinstance(v, float) for _, v in vals):
                out[name] = sum(n * v for n, v in vals) / total
            else:
                out[name] = (sum(n * np.asarray(v) for n, v in vals) / total).tolist()
        return out

    def _event(self, message: str, *args: Any, level: int = logging.INFO) -> None:
        self.runlog.event(message, *args, level=level)

    # -- checkpoints ------------------------------------------------------------------------------
    def _resume(self) -> tuple[int, np.ndarray | None, dict | None, float]:
        """The newest usable checkpoint: (round, weights, partition states, elapsed).

        A corrupt or truncated checkpoint (state, weights or a worker's state)
        is named in a warning and the next older one is tried.
        """
        if not (self.resume and self.ckpts is not None):
            return 0, None, None, 0.0
        names = self.ckpts.candidates()
        if not names:
            log.info("resume: no checkpoint in %s yet; starting from scratch",
                     self.storage.where())
            return 0, None, None, 0.0
        problems: list[str] = []
        for name in names:
            try:
                loaded = self._load_checkpoint(name)
            except CheckpointError as e:
                problems.append(str(e))
                log.warning("cannot resume from %s: %s; trying an older checkpoint",
                            e.checkpoint, e)
                continue
            if problems:
                log.warning("resuming from %s, the newest usable checkpoint (%d newer one(s) "
                            "unusable)", self.storage.where(name), len(problems))
            return loaded
        raise CheckpointError(f"no usable checkpoint in {self.storage.where()}: "
                              + "; ".join(problems), self.storage.where())

    def _load_checkpoint(self, name: str) -> tuple[int, np.ndarray, dict, float]:
        state = self.ckpts.load_state(name)
        mine, theirs = self.config(), state.get("config", {})
        diffs = [f"{k}: checkpoint {theirs.get(k)!r}, now {v!r}" for k, v in mine.items()
                 if theirs.get(k) != v]
        if diffs:
            raise ValueError(f"cannot resume from {self.storage.where(name)}: it was written by "
                             f"a different configuration ({'; '.join(diffs)})")
        where = self.storage.where(f"{name}/{WEIGHTS}")
        data = self.ckpts.read_file(name, state, WEIGHTS)
        self._check_weights(data, where, self.storage.where(name))
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / WEIGHTS
            local.write_bytes(data)
            net = self.driver_net()
            try:
                net.load_weights(local)
            except Exception as e:  # noqa: BLE001  # Caffe's words, about the checkpoint's file
                raise CheckpointError(f"{where}: {str(e).replace(str(local), WEIGHTS)}",
                                      self.storage.where(name)) from None
            flat = np.array(net.get_weights().flat, np.float32, copy=True)
            self._release_driver_net()
        install: dict[int, dict[str, bytes | None]] = {}
        for p, files in state.get("partitions", {}).items():
            entry: dict[str, bytes | None] = {}
            for kind, fname in files.items():
                entry[kind] = self.ckpts.read_file(name, state, fname)
                if kind == "solverstate":
                    try:
                        caffe_pb2.SolverState().ParseFromString(entry[kind])
                    except Exception as e:  # noqa: BLE001  # protobuf's DecodeError
                        raise CheckpointError(
                            f"{self.storage.where(f'{name}/{fname}')} is not a Caffe solver "
                            f"state (truncated or corrupt: {e})",
                            self.storage.where(name)) from None
            install[int(p)] = entry
        self.history = list(state.get("history", []))
        self.last_checkpoint = self.storage.where(name)
        return int(state["round"]), flat, install, float(state.get("elapsed", 0.0))

    def _check_weights(self, data: bytes, where: str, checkpoint: str) -> None:
        """The weights file parses and holds every layer of the net with the right sizes."""
        proto = caffe_pb2.NetParameter()
        try:
            proto.ParseFromString(data)
        except Exception as e:  # noqa: BLE001  # protobuf's DecodeError
            raise CheckpointError(f"{where} is not a Caffe NetParameter (truncated or corrupt: "
                                  f"{e})", checkpoint) from None
        have = {layer.name: [len(b.data) for b in layer.blobs]
                for layer in (*proto.layer, *proto.layers)}
        for lname, shapes in self.layout:
            want = [math.prod(sh) for sh in shapes]
            if have.get(lname) != want:
                raise CheckpointError(f"{where} holds no complete weights for layer '{lname}' "
                                      f"(truncated or from another net)", checkpoint)

    def _checkpoint(self, rnd: int, flat: np.ndarray, staged: Path,
                    partitions: Mapping[int, Mapping[str, str]]) -> str:
        try:
            self._save_weights(flat, staged / WEIGHTS)
        except BaseException:  # disk full: the staging folder does not stay behind
            import shutil

            shutil.rmtree(staged, ignore_errors=True)
            raise
        state = {"format": 1, "round": rnd, "rounds": self.rounds, "config": self.config(),
                 "elapsed": self.runlog.elapsed(), "history": self.history,
                 "rng": {"seed": self.seed, "sampling": "numpy default_rng([seed, partition, "
                         "epoch]).permutation per epoch; solver random_seed "
                         f"{self.param.random_seed}"},
                 "solver": text_format.MessageToString(self.param),
                 "partitions": {str(p): dict(v) for p, v in partitions.items()},
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return self.ckpts.commit(rnd, staged, state)

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        start, flat, install, elapsed_before = self._resume()
        self.runlog = RunLog(self.output_dir, rounds=self.rounds, start_round=start,
                             elapsed_before=elapsed_before, progress=self.progress,
                             history=self.history)
        sc = self.sc
        group = f"sparknet-{self.run_id}"
        saved = {k: sc.getLocalProperty(k) for k in
                 ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")}
        sc.setJobGroup(group, "sparknet training", interruptOnCancel=True)
        finished = False
        try:
            self._fix_transforms()
            self._event("training %s: %d workers, sync_interval %d, batch %d, rounds %d..%d, "
                        "%d parameters, strategy %s", self.param.net_param.name or "net",
                        self.workers, self.tau, self.batch, start + 1, self.rounds,
                        self.num_params, self.strategy.describe(self.workers))
            if start:
                self._event("resumed from %s (round %d)", self.last_checkpoint, start)
            elif self.resume and self.ckpts is None:
                self._event("resume=True but no checkpoint_dir: starting from scratch",
                            level=logging.WARNING)
            if flat is None:
                flat = self._initial_weights()
            if start < self.rounds:
                _wait_for_slots(sc, self.workers, self.executor_wait, self.runlog)
                prepare_workers(sc, self.workers)  # before round 1: they import this sparknet
                self._materialise(self.train_data, "train_data", self.names,
                                  self.example_shapes, self.train_rules, self.workers,
                                  self.runlog)
                if self.test_data is not None:
                    self._materialise(self.test_data, "test_data", self.test_names or self.names,
                                      self.test_example_shapes or self.example_shapes,
                                      self.test_rules, None, self.runlog)
                flat = self._loop(start, flat, install)
            finished = True
        except BaseException as e:
            sc.cancelJobGroup(group)
            hint = None if isinstance(e, WorkerPythonError) else worker_hint(sc, e)
            if hint is not None:  # a job of the user's RDD, made before the default applied
                raise hint from e
            raise
        finally:
            self._cleanup()
            for k, v in saved.items():
                sc.setLocalProperty(k, v)  # type: ignore[arg-type]
            if finished and self.history:
                try:
                    self.runlog.plot(self.history)
                except Exception as e:  # noqa: BLE001  # a plot must not lose a run
                    log.warning("could not plot the history: %s", e)
            self.runlog.close()
        return TrainResult(WeightCollection.from_flat(self.layout, flat), self.history,
                           self.param, self.runlog.log_path, self.runlog.history_path,
                           self.runlog.plot_path, self.last_checkpoint, self.s3_options,
                           self._exchange_used)

    def _drop(self, bc: Any) -> None:
        if bc in self._broadcasts:
            self._broadcasts.remove(bc)
        _comm.destroy(bc)

    def _loop(self, start: int, weights: np.ndarray, install: Any) -> np.ndarray:
        sc = self.sc
        K = self.workers
        easgd = isinstance(self.strategy, EASGD)
        rate = self.strategy.rate(K) if easgd else None
        extras_bc = (sc.broadcast(self.extras)
                     if self.extras.transform or self.extras.test_transform else None)
        if extras_bc is not None:
            self._broadcasts.append(extras_bc)
        install_bc = sc.broadcast(install) if install else None
        if install_bc is not None:
            self._broadcasts.append(install_bc)
        # The sum must not depend on the order the workers' results arrive in (partitions
        # rerun away from their data arrive last): with two, float addition commutes;
        # with more, float64 makes the sum exact whatever the order.
        acc = np.empty(weights.size, np.float32 if K <= 2 else np.float64)
        self.exchange = self._open_exchange()
        self._exchange_used = ("socket" if isinstance(self.exchange, _comm.SocketExchange)
                               else "spark")
        t_bc = time.perf_counter()
        chan = self.exchange.publish(weights)
        t_bc = time.perf_counter() - t_bc
        tested_at = -1
        for r in range(start, self.rounds):
            t_round = time.perf_counter()
            ckpt_due = bool(self.ckpts) and (
                (self.ckpt_interval and (r + 1) % self.ckpt_interval == 0) or r + 1 == self.rounds)
            test_due = self.test_data is not None and (
                (self.test_interval and (r + 1) % self.test_interval == 0) or r + 1 == self.rounds)
            staged = self.ckpts.begin() if ckpt_due else None
            sink = _StateFiles(staged)
            spec = RoundSpec(self.run_id, self.net_spec, r, self.tau, self.batch, self.seed,
                             self.shuffle, self.names, self.num_params, rate, ckpt_due,
                             self.fault)
            t_job = time.perf_counter()
            self._rerun: set[int] = set()
            try:
                metas = self._run_round(spec, chan, extras_bc,
                                        install_bc if r == start else None, acc, sink)
            except BaseException:
                sink.close()
                if staged is not None:  # no half-written checkpoint stays behind
                    import shutil

                    shutil.rmtree(staged, ignore_errors=True)
                raise
            finally:
                sink.close()
            t_job = time.perf_counter() - t_job
            if install_bc is not None:
                self._drop(install_bc)
                install_bc = None
            self._diverged(r, metas, staged)
            self.exchange.release(chan)  # the weights' buffer takes the new ones now
            t_avg = time.perf_counter()
            if easgd:  # centre += rate * sum(x_i - centre)
                np.multiply(acc, rate, out=acc)
                np.add(weights, acc, out=weights, casting="same_kind")
            else:  # the mean, into the weights' buffer
                np.divide(acc, K, out=weights, casting="same_kind")
            if not np.isfinite(weights).all():
                self._diverged(r, [{"partition": None, "nonfinite": {
                    "step": (r + 1) * self.tau - 1, "loss": float("nan"), "weights": True}}],
                    staged)
            t_avg = time.perf_counter() - t_avg
            t_next = time.perf_counter()
            chan = self.exchange.publish(weights)
            t_next = time.perf_counter() - t_next
            round_seconds = time.perf_counter() - t_round
            losses = [v for m in metas for v in m.get("losses", [])]
            images = K * self.tau * self.batch
            # the slowest worker's time without its send (which the collect time counts)
            worker_total = max(m["seconds"]["total"] - m["seconds"].get("send", 0.0)
                               for m in metas)
            fetch = max(m["seconds"].get("fetch", 0.0) for m in metas)
            rec: dict[str, Any] = {
                "round": r + 1, "loss": float(np.mean(losses)), "images": images,
                "images_per_second": images / round_seconds,
                "seconds": {"round": round_seconds, "broadcast": t_bc + fetch,
                            "compute": max(m["seconds"]["compute"] for m in metas),
                            "save": max(m["seconds"].get("save", 0.0) for m in metas),
                            "collect": max(0.0, t_job - worker_total), "average": t_avg}}
            t_bc = t_next
            rec["partitions"] = [
                {"partition": m["partition"], "host": m["host"], "pid": m["pid"],
                 "state": m.get("state"), "attempt": m.get("attempt", 0),
                 "compute": m["seconds"]["compute"]}
                for m in sorted(metas, key=lambda m: m["partition"])]
            reset = sorted(m["partition"] for m in metas if m.get("state") == "reset")
            if reset:
                self._event("round %d: partition(s) %s lost their solver state with their "
                            "executor; momentum restarted at iteration %d", r + 1, reset,
                            r * self.tau, level=logging.WARNING)
                rec["state_reset"] = reset
            if self._rerun:
                rec["rerun"] = sorted(self._rerun)
            if any(m.get("attempt", 0) for m in metas):
                rec["retried"] = sorted(m["partition"] for m in metas if m.get("attempt", 0))
            if test_due:
                t_test = time.perf_counter()
                rec["test"] = self._run_test(chan, extras_bc)
                rec["seconds"]["test"] = time.perf_counter() - t_test
                tested_at = r
            rec["time"] = self.runlog.elapsed()
            self.history.append(rec)
            self._event("round %d/%d: loss %.4f, %.0f images/s (%.2f s: broadcast %.2f, "
                        "compute %.2f, collect %.2f)", r + 1, self.rounds, rec["loss"],
                        rec["images_per_second"], round_seconds, rec["seconds"]["broadcast"],
                        rec["seconds"]["compute"], rec["seconds"]["collect"])
            if "test" in rec:
                self._event("round %d: test %s", r + 1, ", ".join(
                    f"{k} = {v:.4f}" if isinstance(v, float) else f"{k} = {v}"
                    for k, v in rec["test"].items()))
            if ckpt_due:
                t_ck = time.perf_counter()
                self.last_checkpoint = self._checkpoint(r + 1, weights, staged, sink.files)
                rec["seconds"]["checkpoint"] = time.perf_counter() - t_ck
                self._event("round %d: checkpoint %s", r + 1, self.last_checkpoint)
            self.runlog.record(rec)
            stop = self.callback(rec) if self.callback is not None else None
            if stop is False and r + 1 < self.rounds:
                self._event("stopped by the callback after round %d", r + 1)
                if self.test_data is not None and tested_at != r:
                    rec["test"] = self._run_test(chan, extras_bc)
                if self.ckpts is not None and not ckpt_due:
                    self.last_checkpoint = self._final_checkpoint(r, weights)
                break
        self.exchange.release(chan)
        return weights

    def _final_checkpoint(self, r: int, weights: np.ndarray) -> str:
        """A checkpoint of the weights without worker states (after an early stop)."""
        staged = self.ckpts.begin()
        return self._checkpoint(r + 1, weights, staged, {})

    def _diverged(self, r: int, metas: Sequence[dict], staged: Path | None) -> None:
        bad = [m for m in metas if m.get("nonfinite")]
        if not bad:
            return
        import shutil

        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        m = bad[0]
        nf = m["nonfinite"]
        what = ("the weights became NaN or infinite" if nf.get("weights")
                else f"the training loss became {nf['loss']}")
        where = f" on partition {m['partition']}" if m.get("partition") is not None else ""
        ck = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
              else "no checkpoint was written before it"
              + ("" if self.ckpts else "; set checkpoint_dir to keep one"))
        msg = (f"training diverged in round {r + 1}: {what}{where} at solver iteration "
               f"{nf['step']}. Stopped; {ck}. Lower the learning rate (base_lr) or clip "
               f"gradients (clip_gradients).")
        self._event(msg, level=logging.ERROR)
        raise TrainingDiverged(msg, round=r + 1, partition=m.get("partition"),
                               checkpoint=self.last_checkpoint, history=self.history)

    def _cleanup(self) -> None:
        if self.exchange is not None:
            self.exchange.close()
            self.exchange = None
        for bc in list(self._broadcasts):
            _comm.destroy(bc)
        self._broadcasts.clear()
        handles = self.handles.get("train_data")
        datasets = tuple(self._datasets)
        try:
            if handles is not None:
                self.sc.setJobDescription("sparknet: clean up")
                handles.mapPartitions(
                    functools.partial(cleanup_task, datasets, self.run_id)).count()
            test = self.handles.get("test_data")
            if test is not None:
                test.mapPartitions(functools.partial(cleanup_task, datasets, None)).count()
        except Exception as e:  # noqa: BLE001  # a dead context: its folders go too
            log.debug("cleanup failed: %s", e)
        for h in self.handles.values():
            try:
                h.unpersist(blocking=False)
            except Exception as e:  # noqa: BLE001  # pragma: no cover
                log.debug("unpersist failed: %s", e)
        self.handles.clear()


def train(spark: Any, solver: Any, train_data: Any, *, test_data: Any = None,
          workers: int | None = None, sync_interval: int = 50, rounds: int = 100,
          test_interval: int | None = 10, checkpoint_dir: str | os.PathLike | None = None,
          checkpoint_interval: int | None = 20, resume: bool = False,
          output_dir: str | os.PathLike | None = None, seed: int = 0,
          strategy: str | Averaging | EASGD = "average",
          preprocess: Callable[[dict[str, np.ndarray]], Mapping[str, Any]] | None = None,
          transform: Callable[..., Any] | Mapping[str, Callable[..., Any]] | None = None,
          test_transform: Callable[..., Any] | Mapping[str, Callable[..., Any]] | None = None,
          shuffle: bool = True, init_weights: Any = None, progress: bool | None = None,
          callback: Callable[[dict], Any] | None = None, keep_checkpoints: int = 2,
          gpu: bool = False, blas_threads: int | None = None, s3_options: Any = None,
          reduction: str = "auto", exchange: str = "auto", executor_wait: float = 60.0,
          fault: Fault | None = None) -> TrainResult:
    """Train a Caffe net on Spark with synchronous parameter averaging (or EASGD).

    Parameters
    ----------
    spark
        A ``SparkSession`` or ``SparkContext`` (``local[N]``, ``local-cluster``,
        standalone, YARN, Kubernetes).
    solver
        A ``caffe_pb2.SolverParameter`` with the net inline (``net_param``) or a
        DSL ``SolverParam``. The net is fed through ``Input`` layers; their
        first dimension is the batch size.
    train_data, test_data
        An RDD of examples — ``(array, label)`` tuples (one item per input
        blob, in order) or dicts keyed by input blob name — or a DataFrame
        whose columns are named after the input blobs (arrays, ML vectors,
        binary images, numbers), or an ``(x, y)`` pair of numpy arrays. Each
        partition is converted once and cached on its executor; ``workers``
        different from the partition count repartitions once.
    workers
        K, the number of parallel workers (default: Spark's default parallelism).
    sync_interval
        tau, solver steps per worker per round.
    rounds
        Total rounds (a resumed run continues up to this number).
    test_interval
        Test the averaged weights every this many rounds (and after the last).
    checkpoint_dir, checkpoint_interval, resume, keep_checkpoints
        Checkpoints (local folder or ``s3://bucket/prefix``) every
        ``checkpoint_interval`` rounds and after the last; ``resume=True``
        continues from the newest one, to the same final weights as an
        uninterrupted run. ``keep_checkpoints`` older ones are kept.
    output_dir
        Folder for ``training.log``, ``history.jsonl`` and ``history.png``.
    seed
        Seeds minibatch sampling (and the solver's ``random_seed`` when unset).
    strategy
        ``"average"`` (SparkNet) or ``"easgd"`` / :class:`EASGD` ``(moving_rate=...)``.
    preprocess
        Runs on the workers once per example when caching: ``{blob: array}`` ->
        ``{blob: array}`` (mean subtraction, a fixed crop...).
    transform, test_transform
        Run on the workers on every minibatch (random crop, mirror): a callable
        for the first input blob or a dict blob -> callable, e.g. a
        ``sparknet.data.Transformer``. An ``rng`` attribute is reseeded per
        partition and step, so runs stay reproducible. A transformed blob's
        examples are cached at the shape the data gives (256x256 uint8 images
        for random 227 crops: new crops every minibatch, a quarter of the
        memory of float32); the transform is tried on the first example on
        the driver and must give the blob's shape.
    shuffle
        Sample minibatches from a fresh permutation of the partition each epoch
        (``False``: in order).
    init_weights
        Start from these weights (``WeightCollection``, ``TrainResult`` or a
        ``.caffemodel`` path, layers matched by name) instead of the fillers.
    progress
        Progress bar: ``None`` (on a terminal), ``True`` or ``False``.
    callback
        Called with each round's history record; returning ``False`` stops.
    gpu, blas_threads
        Workers use the task's GPU (``spark.task.resource.gpu.amount``) /
        OpenBLAS threads (default: the task's CPUs, ``spark.task.cpus``).
    s3_options
        ``sparknet.data.S3Options`` for an ``s3://`` checkpoint_dir.
    exchange
        How the weights travel each round. ``"socket"``: a TCP server in the
        driver, which tasks fetch the weights from and push their results to
        (added up as they arrive, each partition's exactly once even when a
        task is retried); every byte moves once, several times faster than
        Spark's broadcast and task results for large models. ``"spark"``: a
        torrent broadcast and task results. ``"auto"`` (default) uses the
        socket unless Spark's network or I/O encryption is on, ``reduction``
        is ``"tree"`` or an executor cannot connect to the driver (set
        ``spark.sparknet.exchange.port`` to fix the port for a firewall).
    reduction
        With ``exchange="spark"``: ``"auto"``, ``"driver"`` (stream all
        workers' weights to the driver) or ``"tree"`` (partial sums on the
        executors first).
    fault
        Tests only: a :class:`~sparknet.spark._worker.Fault` to inject.

    Returns
    -------
    TrainResult
        ``weights``, ``history``, ``save(path)``, the log/history/plot paths.

    Raises
    ------
    DataError
        The data does not fit the net (before the first round).
    TrainingDiverged
        The loss or weights became NaN/infinite (names the round; the last
        good checkpoint is kept).
    """
    trainer = _Trainer(
        spark, solver, train_data, test_data=test_data, workers=workers,
        sync_interval=sync_interval, rounds=rounds, test_interval=test_interval,
        checkpoint_dir=checkpoint_dir, checkpoint_interval=checkpoint_interval, resume=resume,
        output_dir=output_dir, seed=seed, strategy=strategy, preprocess=preprocess,
        transform=transform, test_transform=test_transform, shuffle=shuffle,
        init_weights=init_weights, progress=progress, callback=callback,
        keep_checkpoints=keep_checkpoints, gpu=gpu, blas_threads=blas_threads,
        s3_options=s3_options, reduction=reduction, exchange=exchange,
        executor_wait=executor_wait, fault=fault)
    return trainer.run()
