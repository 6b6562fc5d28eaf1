"""The options of one training run: a frozen, validated record, and the averaging strategies.

:class:`TrainConfig` holds every option of :func:`sparknet.spark.train` that
is not the session, the solver or the data; each is converted and checked
here and nowhere else. ``train()`` builds one (:meth:`TrainConfig.create`)
and hands it on.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import attrs

from sparknet.spark._comm import MODES
from sparknet.spark.outer import Outer
from sparknet.spark.schedule import TauSchedule

REDUCTIONS = ("auto", "driver", "tree")


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


def strategy(value: Any) -> Averaging | EASGD:
    """``"average"`` / ``"easgd"`` (and their aliases) or an instance, as an instance."""
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


# -- validators ------------------------------------------------------------------------------

def _at_least(low: int) -> Callable[[Any, attrs.Attribute, int], None]:
    def check(_: Any, attribute: attrs.Attribute, value: int) -> None:
        if value < low:
            raise ValueError(f"{attribute.name} must be >= {low}, got {value}")
    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, attrs.Attribute, str], None]:
    def check(_: Any, attribute: attrs.Attribute, value: str) -> None:
        if value not in choices:
            names = ", ".join(f"'{c}'" for c in choices[:-1])
            raise ValueError(f"{attribute.name} must be {names} or '{choices[-1]}', "
                             f"got {value!r}")
    return check


def _transform(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, Mapping) and not callable(value):
        raise TypeError(f"{attribute.name} must be a callable (applied to each batch of the "
                        f"first input blob) or a dict of input blob name -> callable")


def _or_zero(value: Any) -> int:
    return int(value) if value else 0


def _path_or_none(value: Any) -> Any:
    return None if value is None else (value if isinstance(value, str) else os.fspath(value))


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Every option of :func:`~sparknet.spark.train` but the session, solver and data.

    Documented there; here each is converted and validated once. ``workers``
    is resolved (Spark's default parallelism when not given) by :meth:`create`.
    """

    workers: int = attrs.field(converter=int, validator=_at_least(1))
    sync_interval: int = attrs.field(default=50, converter=int, validator=_at_least(1))
    rounds: int = attrs.field(default=100, converter=int, validator=_at_least(0))
    test_interval: int = attrs.field(default=10, converter=_or_zero)
    checkpoint_dir: str | None = attrs.field(default=None, converter=_path_or_none)
    checkpoint_interval: int = attrs.field(default=20, converter=_or_zero)
    resume: bool = attrs.field(default=False, converter=bool)
    output_dir: Any = None
    seed: int = attrs.field(default=0, converter=int)
    strategy: Averaging | EASGD = attrs.field(default="average", converter=strategy)
    outer: Outer = attrs.field(default=None, converter=Outer.parse)
    tau_schedule: TauSchedule = attrs.field(default=None, converter=TauSchedule.parse)
    preprocess: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None
    transform: Any = attrs.field(default=None, validator=_transform)
    test_transform: Any = attrs.field(default=None, validator=_transform)
    shuffle: bool = attrs.field(default=True, converter=bool)
    init_weights: Any = None
    progress: bool | None = None
    callback: Callable[[dict], Any] | None = None
    keep_checkpoints: int = attrs.field(default=2, converter=int)
    gpu: bool = attrs.field(default=False, converter=bool)
    blas_threads: int | None = None
    s3_options: Any = None
    reduction: str = attrs.field(default="auto", validator=_one_of(REDUCTIONS))
    exchange: str = attrs.field(default="auto", validator=_one_of(MODES))
    executor_wait: float = attrs.field(default=60.0, converter=float)

    def __attrs_post_init__(self) -> None:
        if self.exchange == "socket" and self.reduction == "tree":
            raise ValueError("reduction='tree' sums on the executors, through Spark: it needs "
                             "exchange='spark' (or 'auto')")
        if isinstance(self.strategy, EASGD):
            self.strategy.rate(self.workers)  # a moving rate out of range fails here
            if not self.outer.is_average:
                # EASGD's centre moves by its own elastic rule; an outer optimizer on top
                # would be a third method nobody measured
                raise ValueError(f"outer={self.outer} needs strategy='average': EASGD moves "
                                 f"its centre by its own rule (moving_rate)")

    @classmethod
    def create(cls, sc: Any, *, workers: int | None = None, **options: Any) -> TrainConfig:
        """The configuration of a run on ``sc``: ``workers`` defaults to its parallelism."""
        return cls(workers=int(workers) if workers else int(sc.defaultParallelism), **options)

    @property
    def easgd_rate(self) -> float | None:
        """EASGD's moving rate, ``None`` for SparkNet's averaging."""
        return self.strategy.rate(self.workers) if isinstance(self.strategy, EASGD) else None

    def test_due(self, r: int) -> bool:
        """Whether the weights are tested after 0-based round ``r`` (given test data)."""
        return bool(self.test_interval and (r + 1) % self.test_interval == 0) \
            or r + 1 == self.rounds

    def checkpoint_due(self, r: int) -> bool:
        """Whether a checkpoint is written after 0-based round ``r`` (given a folder)."""
        return self.checkpoint_dir is not None and (
            bool(self.checkpoint_interval and (r + 1) % self.checkpoint_interval == 0)
            or r + 1 == self.rounds)
