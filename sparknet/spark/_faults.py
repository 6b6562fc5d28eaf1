"""Failures injected into training tasks, for tests: a task hook installed through Spark.

Not part of the API. A test wraps ``train`` in :func:`inject` (a context
manager over the session); the driver's thread then carries the fault as a
Spark local property, which every task of its jobs sees. The worker asks
:func:`task_hook` once per task; without the property (always, outside tests)
it gets ``None`` and nothing else happens.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from sparknet.io import spark_context

#: The Spark local property that carries a fault to the tasks.
PROPERTY = "sparknet.test.fault"


@attrs.frozen
class Fault:
    """A failure to inject: raise in ``partition``'s task of 0-based ``round``.

    Only the first attempt fails, after ``after_steps`` solver steps, so Spark's
    retry (or the driver's rerun of a ring round) must recover. ``kind="exit"``
    kills the Python worker process instead; ``kind="forget"`` also deletes
    the weights a ring exchange keeps in the partition's folder and in this
    process (every partition of the round: no executor keeps them any more);
    ``kind="missing"`` makes the task report its cached data missing (as when a
    task runs on another executor) the first ``after_steps`` times.
    ``partition=-1``: every partition.
    """

    round: int
    partition: int
    after_steps: int = 1
    kind: str = attrs.field(default="raise", validator=attrs.validators.in_(
        ("raise", "exit", "forget", "missing")))

    def hits(self, rnd: int, partition: int) -> bool:
        return self.round == rnd and self.partition in (partition, -1)

    def data_missing(self, rnd: int, partition: int, folder: Path) -> bool:
        """``kind="missing"``: act as if the data were elsewhere, ``after_steps`` times."""
        if self.kind != "missing" or not self.hits(rnd, partition):
            return False
        marker = folder / f".missing-{rnd}"
        seen = int(marker.read_text()) if marker.exists() else 0
        if seen >= self.after_steps:
            return False
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(seen + 1))
        return True

    def batches(self, rnd: int, partition: int, attempt: int, batches: Iterator[Any],
                folder: Path) -> Iterator[Any]:
        """The task's minibatches; the first attempt that is hit fails after ``after_steps``.

        (Once: the driver's rerun of a ring round starts again at attempt 0.)
        """
        marker = folder / f".failed-{rnd}"
        if (self.kind == "missing" or not self.hits(rnd, partition) or attempt != 0
                or marker.exists()):
            yield from batches
            return
        for _, batch in zip(range(self.after_steps), batches, strict=False):
            yield batch
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        if self.kind == "exit":
            os._exit(17)
        if self.kind == "forget":
            from sparknet.spark._socket_exchange import forget_fetched

            forget_fetched()
            for kept in folder.glob("ring*"):
                kept.unlink()
        raise RuntimeError(f"sparknet: injected failure in round {rnd + 1}, "
                           f"partition {partition} (first attempt)")


@contextlib.contextmanager
def inject(spark: Any, fault: Fault) -> Iterator[Fault]:
    """Within the block, the jobs this thread starts on ``spark`` carry ``fault``."""
    sc = spark_context(spark)
    before = sc.getLocalProperty(PROPERTY)
    sc.setLocalProperty(PROPERTY, json.dumps(attrs.asdict(fault)))
    try:
        yield fault
    finally:
        sc.setLocalProperty(PROPERTY, before)  # type: ignore[arg-type]


def task_hook() -> Fault | None:
    """In a task: the fault its job carries, if a test injected one."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    text = ctx.getLocalProperty(PROPERTY) if ctx is not None else None
    return Fault(**json.loads(text)) if text else None
