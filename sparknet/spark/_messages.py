"""What the driver and the Spark tasks tell each other: small frozen records with named fields.

The driver describes a job to its tasks with a :class:`RoundSpec` or
:class:`TestSpec` (which net: :class:`NetSpec`) and broadcasts a run's
:class:`RunExtras` once. A round task yields one :class:`RoundReport`,
then the :class:`WeightChunk` items of its result (only with Spark's
exchange; a :class:`CalledOff` where a ring round could not run), then in
checkpoint rounds the :class:`StateChunk` items of its solver state. A
test task yields one :class:`TestReport` per partition. The task that
caches a partition yields its :class:`StoreHandle`. All travel pickled, so
they stay plain data.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import attrs
import numpy as np


@attrs.frozen(eq=False)
class WeightChunk:
    """``data`` belongs at ``offset`` of the flat weight vector (the result of a task)."""

    offset: int
    data: np.ndarray


@attrs.frozen
class CalledOff:
    """A ring round's collective did not run: ``why`` names the partition that could not join.

    Every task of the round yields one (nothing of theirs reached the driver);
    the driver runs the round again.
    """

    partition: int
    why: str


@attrs.frozen
class StateChunk:
    """A piece of a partition's solver-state file (``kind``: ``solverstate``/``caffemodel``).

    ``offset == -1`` (with empty ``data``) marks the end of that file.
    """

    partition: int
    kind: str
    offset: int
    data: bytes

    @property
    def end(self) -> bool:
        return self.offset < 0


@attrs.frozen
class Nonfinite:
    """Where a partition's training became NaN/inf: the solver step, the loss, the weights."""

    step: int
    loss: float
    weights: bool = False


@attrs.frozen
class Timings:
    """Seconds a round task spent: loading state, fetching weights, computing, saving, sending.

    ``wait``: of ``send``, the time a ring task waited for the round's other
    tasks to finish training and join (the rest is the collective itself).
    """

    load: float = 0.0
    fetch: float = 0.0
    compute: float = 0.0
    save: float = 0.0
    send: float = 0.0
    total: float = 0.0
    wait: float = 0.0


@attrs.frozen
class TaskInfo:
    """Which partition a task ran, where, and which attempt of it."""

    partition: int
    host: str = ""
    pid: int = 0
    attempt: int = 0


@attrs.frozen
class RoundReport:
    """One partition's round, as its task saw it.

    ``missing_store``: the task found no cached data (it ran away from its
    executor) and did nothing. ``state``: how the solver state was found
    (``memory``, ``file``, ``fresh``, ``reset``). ``nonfinite`` is set when the
    loss or weights became NaN/inf (then no result was sent). ``gathered``: in
    a ring round, the fingerprint of the next weights the task gathered.
    """

    task: TaskInfo
    missing_store: bool = False
    state: str | None = None
    images: int = 0
    losses: tuple[float, ...] = ()
    nonfinite: Nonfinite | None = None
    seconds: Timings = Timings()
    gathered: int | None = None

    @property
    def partition(self) -> int:
        return self.task.partition

    @property
    def sent(self) -> bool:
        """Whether the task sent a result (it ran on its data and stayed finite)."""
        return not self.missing_store and self.nonfinite is None


@attrs.frozen
class TestReport:
    """One test partition scored: ``n`` examples, the mean of each output blob."""

    task: TaskInfo
    missing_store: bool = False
    n: int = 0
    seconds: float = 0.0
    metrics: dict[str, Any] = attrs.field(factory=dict)

    @property
    def partition(self) -> int:
        return self.task.partition


@attrs.frozen
class BlobStats:
    """Range of a label blob's values in one partition (for the driver's label check)."""

    min: float = float("inf")
    max: float = float("-inf")
    integral: bool = True


@attrs.frozen
class StoreHandle:
    """A partition cached on an executor: where (``dir`` on ``host``), how many, what went wrong.

    ``error`` is the message of a bad example (the driver raises it);
    ``nonfinite`` maps a blob to the first example holding NaN/inf;
    ``first_index`` is the smallest global example index after a repartition.
    """

    dataset: str
    partition: int
    dir: str
    host: str
    pid: int
    error: str | None = None
    n: int = 0
    stats: dict[str, BlobStats] = attrs.field(factory=dict)
    nonfinite: dict[str, int] = attrs.field(factory=dict)
    seconds: float = 0.0
    bytes: int = 0
    first_index: int | None = None


# -- specs (picklable, small) ---------------------------------------------------------------

@dataclass(frozen=True)
class NetSpec:
    """Which net a task needs (the worker's solver bytes and their digest)."""

    solver: bytes
    key: str
    gpu: bool = False
    blas_threads: int | None = None

    @classmethod
    def of(cls, param: Any, gpu: bool = False, blas_threads: int | None = None) -> NetSpec:
        """The spec of a ``caffe_pb2.SolverParameter``: its bytes, keyed by their SHA-1."""
        solver = param.SerializeToString(deterministic=True)
        return cls(solver, hashlib.sha1(solver).hexdigest(), gpu, blas_threads)


@dataclass(frozen=True)
class RoundSpec:
    """One training round, as every task of the round job sees it."""

    run: str
    net: NetSpec
    round: int  # 0-based
    steps: int
    batch: int
    seed: int
    shuffle: bool
    names: tuple[str, ...]
    num_params: int
    easgd_rate: float | None = None  # None: SparkNet's averaging
    send_state: bool = False
    first_step: int | None = None  # the solver iteration the round starts at (a tau schedule)

    @property
    def start(self) -> int:
        """The solver iteration of the round's first step: the sum of the taus before it."""
        return self.round * self.steps if self.first_step is None else self.first_step


@dataclass(frozen=True)
class TestSpec:
    """One test pass over the cached test partitions."""

    run: str
    net: NetSpec
    batch: int
    seed: int
    names: tuple[str, ...]
    local_weights: bool = False  # EASGD: testing clobbers the partition's local weights


@dataclass
class RunExtras:
    """Per-run values broadcast once: the batch transforms (may hold a mean image)."""

    transform: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    test_transform: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
