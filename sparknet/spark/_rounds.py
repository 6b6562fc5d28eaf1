"""The Spark jobs of a run: one training round, one test pass, each with its reruns.

A round job runs :func:`~sparknet.spark._worker.round_task` over the cached
training handles and folds the results into the accumulator (through the
exchange, or Spark's task results, possibly summed on the executors first).
Tasks that ran away from their cached data are run again on their own; when
that keeps failing the data is cached again and the round redone. A round
whose result was spliced from two different attempts (an executor lost while
pushing) is redone too.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from sparknet.data._io import named_os_error
from sparknet.spark import _comm
from sparknet.spark._data import TEST, TRAIN, RunData
from sparknet.spark._messages import RoundReport, StateChunk, TestReport
from sparknet.spark._model import Model
from sparknet.spark._worker import RoundSpec, TestSpec, round_task, test_task

log = logging.getLogger("sparknet.spark")


def _memory_bytes(text: str | None, default: int) -> int:
    if not text:
        return default
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(text).lower())
    if not m:
        return default
    scale = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _passthrough(items: Any) -> Any:
    return items


class StateFiles:
    """Writes the partitions' solver states streamed back in a checkpoint round."""

    def __init__(self, staged: Path | None):
        self.staged = staged
        self.files: dict[int, dict[str, str]] = {}
        self._open: dict[tuple[int, str], Any] = {}

    def __call__(self, chunk: StateChunk) -> None:
        key = (chunk.partition, chunk.kind)
        if chunk.end:
            f = self._open.pop(key, None)
            if f is not None:
                f.close()
            return
        f = self._open.get(key)
        if f is None:
            if self.staged is None:
                raise RuntimeError("solver state arrived outside a checkpoint round")
            name = f"workers/part-{chunk.partition:05d}.{chunk.kind}"
            (self.staged / "workers").mkdir(parents=True, exist_ok=True)
            try:
                f = self._open[key] = open(self.staged / name, "wb")  # noqa: SIM115
            except OSError as e:
                raise named_os_error(e, self.staged / name) from None
            self.files.setdefault(chunk.partition, {})[chunk.kind] = name
        try:
            f.write(chunk.data)
        except OSError as e:  # a full disk: say which file
            raise named_os_error(e, f.name) from None

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


@attrs.frozen
class RoundOutcome:
    """What a round job brought back: one report per partition, which were rerun."""

    reports: list[RoundReport]
    rerun: tuple[int, ...] = ()


class Jobs:
    """Runs the round and test jobs of one run on its cached data and exchange."""

    def __init__(self, sc: Any, model: Model, data: RunData, exchange: _comm.Exchange, *,
                 workers: int, reduction: str, event: Callable[..., None]):
        self.sc = sc
        self.model = model
        self.data = data
        self.exchange = exchange
        self.workers = workers
        self.reduction = reduction
        self.event = event

    def _direct_limit(self) -> int:
        mem = _memory_bytes(self.sc.getConf().get("spark.driver.memory"), 1 << 30)
        return max(mem // 4, 4 * self.model.num_params)

    def _use_tree(self) -> bool:
        if not isinstance(self.exchange, _comm.SparkExchange):
            return False  # results are added up in the driver as they arrive
        if self.reduction == "tree":
            return True
        if self.reduction == "driver":
            return False
        return self.workers * self.model.num_params * 4 > self._direct_limit()

    # -- a training round --------------------------------------------------------------------------
    def round(self, spec: RoundSpec, chan: Any, extras_bc: Any, install_bc: Any,
              acc: np.ndarray, on_state: Callable[[StateChunk], None]) -> RoundOutcome:
        """Run round ``spec`` until every partition's result is in ``acc`` exactly once."""
        rerun: set[int] = set()
        try:
            for _attempt in range(3):
                reports = self._round_job(spec, self.exchange.accept(chan, acc), extras_bc,
                                          install_bc, acc, on_state, rerun)
                lost = self.exchange.missing([r.partition for r in reports if r.sent])
                if lost:  # pragma: no cover - a task succeeds once the driver has its result
                    raise RuntimeError(f"round {spec.round + 1}: the results of partitions "
                                       f"{lost} did not all arrive at {self.exchange.where()}")
                spliced = self.exchange.spliced()
                if not spliced:
                    return RoundOutcome(reports, tuple(sorted(rerun)))
                # a task died while pushing, and its retry computed another result (its
                # executor was lost, with the partition's solver state): redo the round
                self.event("round %d: partition(s) %s sent parts of two different results; "
                           "redoing the round", spec.round + 1, spliced, level=logging.WARNING)
            raise RuntimeError(f"round {spec.round + 1}: partitions {spliced} kept sending "
                               "parts of different results")
        finally:
            self.exchange.end()

    def _round_job(self, spec: RoundSpec, chan: Any, extras_bc: Any, install_bc: Any,
                   acc: np.ndarray, on_state: Callable[[StateChunk], None], rerun: set[int],
                   rebuilt: bool = False) -> list[RoundReport]:
        fn = functools.partial(round_task, spec, chan, extras_bc, install_bc)
        rdd = self.data.handles[TRAIN].mapPartitionsWithIndex(fn)
        reports: list[RoundReport] = []

        def other(item: Any) -> None:
            if isinstance(item, RoundReport):
                reports.append(item)
            elif isinstance(item, StateChunk):
                on_state(item)

        self.sc.setJobDescription(f"sparknet: round {spec.round + 1}")
        if self._use_tree():
            target = max(1, self._direct_limit() // (4 * self.model.num_params))
            _comm.fold(_comm.tree_sum(rdd, self.model.num_params, 8, target), acc, other)
        else:
            _comm.fold(_comm.stream(rdd), acc, other)
        for _ in range(3):
            missing = sorted(r.partition for r in reports if r.missing_store)
            if not missing:
                return reports
            reports[:] = [r for r in reports if not r.missing_store]
            # A task ran on an executor other than the one holding its partition's data
            # (Spark gave up waiting for it): run those partitions again on their own, when
            # their executors are free.
            self.event("round %d: partition(s) %s ran away from their cached data; running "
                       "them again", spec.round + 1, missing, level=logging.WARNING)
            rerun.update(missing)
            _comm.fold(self.sc.runJob(rdd, _passthrough, missing), acc, other)
        missing = sorted(r.partition for r in reports if r.missing_store)
        if not missing:
            return reports
        if rebuilt:
            raise RuntimeError(f"round {spec.round + 1}: partitions {missing} could not be run "
                               "where their data is cached")
        self.event("round %d: caching the training data again and redoing the round",
                   spec.round + 1, level=logging.WARNING)
        self.data.rebuild(TRAIN)
        # the partitions that did run send their results again, into a zeroed accumulator
        return self._round_job(spec, self.exchange.accept(chan, acc), extras_bc, install_bc,
                               acc, on_state, rerun, rebuilt=True)

    # -- a test pass -------------------------------------------------------------------------------
    def test(self, spec: TestSpec, chan: Any, extras_bc: Any,
             rebuilt: bool = False) -> dict[str, Any]:
        """The mean of every TEST output over the cached test set, weighted by example."""
        rdd = self.data.handles[TEST].mapPartitionsWithIndex(
            functools.partial(test_task, spec, chan, extras_bc))
        self.sc.setJobDescription("sparknet: test")
        reports: list[TestReport] = list(_comm.stream(rdd))
        for attempt in range(4):
            missing = [r.partition for r in reports if r.missing_store]
            if not missing:
                break
            if attempt == 3:
                if rebuilt:
                    raise RuntimeError(f"test partitions {missing} could not be run where "
                                       "their data is cached")
                self.data.rebuild(TEST)
                return self.test(spec, chan, extras_bc, rebuilt=True)
            reports = [r for r in reports if not r.missing_store]
            reports += self.sc.runJob(rdd, _passthrough, missing)
        return _mean_metrics(reports, self.model.test_outputs)


def _mean_metrics(reports: Sequence[TestReport], outputs: Sequence[str]) -> dict[str, Any]:
    total = sum(r.n for r in reports)
    out: dict[str, Any] = {}
    for name in outputs:
        vals = [(r.n, r.metrics[name]) for r in reports if name in r.metrics]
        if not vals:
            continue
        if all(isinstance(v, float) for _, v in vals):
            out[name] = sum(n * v for n, v in vals) / total
        else:
            out[name] = (sum(n * np.asarray(v) for n, v in vals) / total).tolist()
    return out
