"""The rounds of a run, and the Spark jobs they are made of.

:class:`Rounds` runs a run's rounds from where it resumes to the last: the
round job, the average (or EASGD's centre update), the test pass, the
checkpoint, the history record. :class:`Jobs` runs one round job or test pass
with its reruns: a round job runs :func:`~sparknet.spark._worker.round_task` over the cached
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
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from sparknet.io import named_os_error
from sparknet.spark import _comm
from sparknet.spark._combine import next_weights
from sparknet.spark._data import TEST, TRAIN, RunData
from sparknet.spark._messages import (
    CalledOff,
    Nonfinite,
    RoundReport,
    RoundSpec,
    RunExtras,
    StateChunk,
    TestReport,
    TestSpec,
)
from sparknet.spark._model import Model
from sparknet.spark._worker import offer_task, round_task
from sparknet.spark.result import TrainingDiverged
from sparknet.spark.scoring import test_task

if TYPE_CHECKING:
    from sparknet.spark._config import TrainConfig
    from sparknet.spark._runlog import RunLog
    from sparknet.spark.checkpoint import Resumed, RunCheckpoints

log = logging.getLogger("sparknet.spark")


def _memory_bytes(text: str | None, default: int) -> int:
    if not text:
        return default
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", str(text).lower())
    if not m:
        return default
    scale = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


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
    """What a round job brought back: one report per partition, which were rerun.

    ``holds``: what the accumulator holds now: ``"sum"`` (of the results, as
    the star adds them, or a ring's pushed sums), ``"weights"`` (the next
    weights, pushed by a ring's tasks), or ``"kept"``: nothing, the
    executors keep the next weights (``kept``: their accumulation and the
    fingerprint every task gathered).
    """

    reports: list[RoundReport]
    rerun: tuple[int, ...] = ()
    holds: str = "sum"
    kept: tuple[int, int] | None = None


class KeptWeightsNeeded(Exception):
    """A ring round failed while only the executors kept its start weights.

    The driver collects them (:meth:`Jobs.collect`) and runs the round again.
    """


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
        self.ring_fallbacks = 0  # ring rounds that ended up going through the star

    def _direct_limit(self) -> int:
        mem = _memory_bytes(self.sc.getConf().get("spark.driver.memory"), 1 << 30)
        return max(mem // 4, 4 * self.model.signature.num_params)

    def _use_tree(self) -> bool:
        if not isinstance(self.exchange, _comm.SparkExchange):
            return False  # results are added up in the driver as they arrive
        if self.reduction == "tree":
            return True
        if self.reduction == "driver":
            return False
        return self.workers * self.model.signature.num_params * 4 > self._direct_limit()

    # -- a training round --------------------------------------------------------------------------
    def round(self, spec: RoundSpec, chan: Any, extras_bc: Any, install_bc: Any,
              acc: np.ndarray, on_state: Callable[[StateChunk], None],
              copy: bool = True) -> RoundOutcome:
        """Run round ``spec`` until every partition's result is in ``acc`` exactly once.

        ``copy=False``: a ring round may leave the next weights on the executors
        only (see :class:`RoundOutcome`); raises :class:`KeptWeightsNeeded` when
        ``chan``'s weights are kept there and the round could not run.
        """
        if isinstance(chan, _comm.RingChannel):
            if self.ring_fallbacks < 2:
                try:
                    outcome = self._ring_round(spec, chan.pushing(copy), extras_bc, install_bc,
                                               acc, on_state)
                finally:
                    self.exchange.end()
                if outcome is not None:
                    return outcome
                self.ring_fallbacks += 1
                if self.ring_fallbacks == 2:
                    self.event("the ring exchange failed in two rounds: from now on the rounds "
                               "go through the driver's exchange", level=logging.WARNING)
            if chan.held:  # the star needs the driver's copy
                raise KeptWeightsNeeded(f"round {spec.round + 1}: the ring did not complete")
            # the ring could not do it: the star, adding in arrival order -- exactly, in float64
            chan = self.exchange.star(chan)
            if acc.dtype != np.float64 and self.workers > 2:
                wide = np.empty(acc.size, np.float64)
                outcome = self.round(spec, chan, extras_bc, install_bc, wide, on_state)
                acc[:] = wide
                return outcome
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

    #: A ring round is run again this many times before it goes through the star.
    RING_TRIES = 4

    def _ring_round(self, spec: RoundSpec, chan: Any, extras_bc: Any, install_bc: Any,
                    acc: np.ndarray, on_state: Callable[[StateChunk], None]
                    ) -> RoundOutcome | None:
        """One round as a barrier stage whose tasks reduce among themselves.

        Runs it again when it fails (a peer lost or silent: Spark's own stage
        retries come first), when a task found no data or the collective was
        called off (the data is cached again after the second time). ``None``
        when it did not complete after :attr:`RING_TRIES` runs: the caller
        sends the round through the star.
        """
        r1 = spec.round + 1
        rerun: set[int] = set()
        runaway = 0
        for _try in range(self.RING_TRIES):
            rchan = self.exchange.accept(chan, acc)
            fn = functools.partial(round_task, spec, rchan, extras_bc, install_bc)
            rdd = self.data.handles[TRAIN].mapped(fn, barrier=True)
            reports: list[RoundReport] = []
            called_off: list[CalledOff] = []

            def other(item: Any, reports: list = reports, called_off: list = called_off) -> None:
                if isinstance(item, RoundReport):
                    reports.append(item)
                elif isinstance(item, CalledOff):
                    called_off.append(item)
                elif isinstance(item, StateChunk):
                    on_state(item)

            self.sc.setJobDescription(f"sparknet: round {r1} (ring)")
            try:
                _comm.fold(_comm.stream(rdd), None, other)
            except Exception as e:  # a failed barrier stage must not end training
                self.event("round %d: the ring exchange failed: %s; running the round again",
                           r1, _cause(e), level=logging.WARNING)
                if chan.held:  # its tasks may need the driver's copy now
                    raise KeptWeightsNeeded(_cause(e)) from e
                continue
            if any(r.nonfinite is not None for r in reports):
                return RoundOutcome(reports, tuple(sorted(rerun)))  # the caller says where
            missing = sorted(r.partition for r in reports if r.missing_store)
            if missing or called_off:
                rerun.update(missing)
                runaway += 1
                self.event("round %d: partition(s) %s ran away from their cached data; running "
                           "the round again", r1, missing, level=logging.WARNING)
                if runaway == 2:
                    self.event("round %d: caching the training data again", r1,
                               level=logging.WARNING)
                    self.data.rebuild(TRAIN)
                continue
            lost = self.exchange.missing(range(self.workers))
            if lost:  # pragma: no cover - a ring task succeeds once the driver has its shard
                self.event("round %d: the shards of partitions %s did not arrive; running the "
                           "round again", r1, lost, level=logging.WARNING)
                continue
            if not rchan.gather:
                return RoundOutcome(reports, tuple(sorted(rerun)))
            if rchan.push:
                return RoundOutcome(reports, tuple(sorted(rerun)), holds="weights")
            prints = {r.gathered for r in reports}
            if len(prints) != 1 or None in prints:  # pragma: no cover - the ring gathers one
                raise RuntimeError(f"round {r1}: the ring's tasks gathered different weights "
                                   f"(fingerprints {sorted(map(str, prints))})")
            return RoundOutcome(reports, tuple(sorted(rerun)), holds="kept",
                                kept=(rchan.key, prints.pop()))
        self.event("round %d: the ring exchange did not complete in %d runs; this round goes "
                   "through the driver's exchange", r1, self.RING_TRIES, level=logging.WARNING)
        return None

    def _round_job(self, spec: RoundSpec, chan: Any, extras_bc: Any, install_bc: Any,
                   acc: np.ndarray, on_state: Callable[[StateChunk], None], rerun: set[int],
                   rebuilt: bool = False) -> list[RoundReport]:
        fn = functools.partial(round_task, spec, chan, extras_bc, install_bc)
        handles = self.data.handles[TRAIN]
        reports: list[RoundReport] = []

        def other(item: Any) -> None:
            if isinstance(item, RoundReport):
                reports.append(item)
            elif isinstance(item, StateChunk):
                on_state(item)

        self.sc.setJobDescription(f"sparknet: round {spec.round + 1}")
        if self._use_tree():
            target = max(1, self._direct_limit() // (4 * self.model.signature.num_params))
            _comm.fold(_comm.tree_sum(handles.mapped(fn), self.model.signature.num_params, 8,
                                      target), acc, other)
        else:
            _comm.fold(handles.run(fn), acc, other)
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
            _comm.fold(handles.run(fn, missing), acc, other)
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

    def collect(self, chan: Any, out: np.ndarray, run: str) -> bool:
        """The weights only the executors keep (``chan``'s) into ``out``: whether one had them."""
        for _attempt in range(2):
            pchan = self.exchange.collect(chan, out)
            fn = functools.partial(offer_task, run, pchan)
            self.sc.setJobDescription("sparknet: the weights from an executor that keeps them")
            try:
                for _ in self.data.handles[TRAIN].run(fn):
                    pass
            except Exception as e:  # noqa: BLE001 - an executor lost meanwhile: try again
                self.event("collecting the weights from the executors failed: %s", _cause(e),
                           level=logging.WARNING)
            try:
                if self.exchange.collected():
                    return True
            finally:
                self.exchange.end()
        return False

    # -- a test pass -------------------------------------------------------------------------------
    def test(self, spec: TestSpec, chan: Any, extras_bc: Any,
             rebuilt: bool = False) -> dict[str, Any]:
        """The mean of every TEST output over the cached test set, weighted by example."""
        handles = self.data.handles[TEST]
        fn = functools.partial(test_task, spec, chan, extras_bc)
        self.sc.setJobDescription("sparknet: test")
        reports: list[TestReport] = list(handles.run(fn))
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
            reports += handles.run(fn, missing)
        return _mean_metrics(reports, self.model.signature.test_outputs)


def _cause(error: BaseException) -> str:
    """The line of a failed job's error that says what went wrong (sparknet's own, if any)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    ours = [line for line in lines if "sparknet:" in line]
    if ours:
        return ours[-1][ours[-1].index("sparknet:"):]
    python = [line for line in lines if re.match(r"[A-Za-z_]\w*(Error|Exception): ", line)]
    return (python or lines or [type(error).__name__])[-1 if python else 0][:500]


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


@attrs.frozen
class RunContext:
    """What the rounds need of their run besides its options, net and data."""

    sc: Any
    run_id: str
    extras: RunExtras  # the batch transforms, broadcast once
    has_test_data: bool


class Rounds:
    """The rounds of one run, from where it resumes to the last: average, test, checkpoint."""

    def __init__(self, ctx: RunContext, config: TrainConfig, model: Model,
                 ckpts: RunCheckpoints | None, runlog: RunLog, data: RunData, resumed: Resumed):
        self.ctx = ctx
        self.config = config
        self.model = model
        self.ckpts = ckpts
        self.runlog = runlog
        self.data = data
        self.start = resumed.round
        self.install = resumed.install
        self.history: list[dict] = list(resumed.history)
        self.last_checkpoint = resumed.checkpoint
        # the outer optimizer's state (momentum), carried from round to round and checkpointed
        self.outer_state = (resumed.outer_state if resumed.outer_state is not None
                            else config.outer.init_state(model.signature.num_params))
        self.exchange: _comm.Exchange | None = None
        self.exchange_name: str | None = None
        self._broadcasts: list[Any] = []

    def _broadcast(self, value: Any) -> Any:
        bc = self.ctx.sc.broadcast(value)
        self._broadcasts.append(bc)
        return bc

    def _drop(self, bc: Any) -> None:
        if bc in self._broadcasts:
            self._broadcasts.remove(bc)
        _comm.destroy(bc)

    def close(self) -> None:
        if self.exchange is not None:
            self.exchange.close()
            self.exchange = None
        for bc in self._broadcasts:
            _comm.destroy(bc)
        self._broadcasts.clear()

    def loop(self, weights: np.ndarray) -> np.ndarray:
        """Train rounds ``start + 1 .. rounds`` from ``weights``; the final weights."""
        cfg, model, runlog = self.config, self.model, self.runlog
        sc = self.ctx.sc
        extras = self.ctx.extras
        K = cfg.workers
        rate = cfg.easgd_rate
        outer, schedule, base = cfg.outer, cfg.tau_schedule, cfg.sync_interval
        losses = [h["loss"] for h in self.history]  # what an adaptive tau follows
        step = schedule.first_step(self.start, base, losses)  # the solver iteration
        extras_bc = (self._broadcast(extras) if extras.transform or extras.test_transform
                     else None)
        install_bc = self._broadcast(self.install) if self.install else None
        self.exchange = _comm.open_exchange(sc, cfg.exchange, cfg.reduction,
                                            self.data.handles[TRAIN], runlog.event,
                                            workers=K, num_params=model.signature.num_params,
                                            easgd_rate=rate, gather=cfg.outer.is_average)
        self.exchange_name = self.exchange.name
        # The sum must not depend on the order the workers' results arrive in (partitions
        # rerun away from their data arrive last): with two, float addition commutes;
        # with more, float64 makes the sum exact whatever the order. The ring adds in a
        # fixed order, in float32 on the executors, and the driver must compute from the
        # same floats the executors do.
        ring = isinstance(self.exchange, _comm.RingExchange)
        acc = np.empty(weights.size, np.float32 if K <= 2 or ring else np.float64)
        # A ring that gathers the weights itself sends the driver a copy only after a round
        # that tests, checkpoints or ends the run; in between, ``kept`` names the newer
        # weights the executors keep, and ``weights`` holds those after round ``copied``.
        keeps = ring and outer.is_average
        kept: tuple[int, int] | None = None
        copied = self.start
        jobs = Jobs(sc, model, self.data, self.exchange, workers=K, reduction=cfg.reduction,
                    event=runlog.event)
        sig = model.signature
        test_spec = TestSpec(self.ctx.run_id, model.net_spec, sig.test_batch, cfg.seed,
                             sig.fed("TEST"), local_weights=rate is not None)
        t_bc = time.perf_counter()
        chan = self.exchange.publish(weights)
        t_bc = time.perf_counter() - t_bc
        tested_at = -1
        for r in range(self.start, cfg.rounds):
            t_round = time.perf_counter()
            ckpt_due = cfg.checkpoint_due(r)
            test_due = self.ctx.has_test_data and cfg.test_due(r)
            staged = self.ckpts.begin() if ckpt_due else None
            sink = StateFiles(staged)
            tau = schedule.tau_at(r, base, losses)
            spec = RoundSpec(self.ctx.run_id, model.net_spec, r, tau, sig.batch, cfg.seed,
                             cfg.shuffle, sig.inputs, sig.num_params, rate, ckpt_due,
                             first_step=step)
            t_job = time.perf_counter()
            copy = not keeps or ckpt_due or test_due or r + 1 == cfg.rounds
            try:
                try:
                    outcome = jobs.round(spec, chan, extras_bc,
                                         install_bc if r == self.start else None, acc, sink,
                                         copy=copy)
                except KeptWeightsNeeded:
                    chan, copied = self._collect(jobs, chan, weights, acc, r, copied)
                    kept = None
                    outcome = jobs.round(spec, chan, extras_bc,
                                         install_bc if r == self.start else None, acc, sink,
                                         copy=copy)
            except BaseException:
                sink.close()
                if staged is not None:  # no half-written checkpoint stays behind
                    shutil.rmtree(staged, ignore_errors=True)
                raise
            finally:
                sink.close()
            t_job = time.perf_counter() - t_job
            if install_bc is not None:
                self._drop(install_bc)
                install_bc = None
            reports = outcome.reports
            bad = next((x for x in reports if x.nonfinite is not None), None)
            if bad is not None:
                self._diverged(r, bad.nonfinite, bad.partition, staged)
            self.exchange.release(chan)  # the weights' buffer takes the new ones now
            t_avg = time.perf_counter()
            kept = outcome.kept
            if outcome.holds == "weights":  # the ring's tasks made them and sent a copy
                np.copyto(weights, acc)
            elif outcome.holds == "sum":
                # the mean (EASGD: centre += rate * sum(x_i - centre); an outer optimizer: its
                # step from the mean), into the weights' buffer; ring tasks run the same
                # function on their shards
                next_weights(weights, acc, weights, workers=K, easgd_rate=rate, outer=outer,
                             state=self.outer_state)
            if kept is None:
                copied = r + 1
                if not np.isfinite(weights).all():
                    self._diverged(r, Nonfinite(step + tau - 1, float("nan"), weights=True),
                                   None, staged)
            t_avg = time.perf_counter() - t_avg
            t_next = time.perf_counter()
            chan = (self.exchange.publish(weights) if kept is None
                    else self.exchange.publish(weights, held=kept))
            t_next = time.perf_counter() - t_next
            rec = _round_record(r, reports, outcome.rerun, images=K * tau * sig.batch,
                                seconds=time.perf_counter() - t_round, broadcast=t_bc,
                                job=t_job, average=t_avg)
            rec["tau"] = tau
            if kept is not None:
                rec["kept"] = True  # only the executors have the weights after this round
            t_bc = t_next
            if "state_reset" in rec:
                runlog.event("round %d: partition(s) %s lost their solver state with their "
                             "executor; momentum restarted at iteration %d", r + 1,
                             rec["state_reset"], step, level=logging.WARNING)
            step += tau
            losses.append(rec["loss"])
            if test_due:
                t_test = time.perf_counter()
                rec["test"] = jobs.test(test_spec, chan, extras_bc)
                rec["seconds"]["test"] = time.perf_counter() - t_test
                tested_at = r
            rec["time"] = runlog.elapsed()
            self.history.append(rec)
            runlog.event("round %d/%d: loss %.4f, %.0f images/s (%.2f s: broadcast %.2f, "
                         "compute %.2f, collect %.2f)", r + 1, cfg.rounds, rec["loss"],
                         rec["images_per_second"], rec["seconds"]["round"],
                         rec["seconds"]["broadcast"], rec["seconds"]["compute"],
                         rec["seconds"]["collect"])
            if "test" in rec:
                runlog.event("round %d: test %s", r + 1, ", ".join(
                    f"{k} = {v:.4f}" if isinstance(v, float) else f"{k} = {v}"
                    for k, v in rec["test"].items()))
            if ckpt_due:
                t_ck = time.perf_counter()
                self._commit(r + 1, weights, staged, sink.files)
                rec["seconds"]["checkpoint"] = time.perf_counter() - t_ck
            runlog.record(rec)
            callback = cfg.callback
            stop = callback(rec) if callback is not None else None
            if stop is False and r + 1 < cfg.rounds:
                runlog.event("stopped by the callback after round %d", r + 1)
                if kept is not None:
                    chan, copied = self._collect(jobs, chan, weights, acc, r + 1, copied)
                    kept = None
                if self.ctx.has_test_data and tested_at != r:
                    rec["test"] = jobs.test(test_spec, chan, extras_bc)
                if self.ckpts is not None and not ckpt_due:
                    self._commit(r + 1, weights, None, {})  # the weights, no worker states
                break
        self.exchange.release(chan)
        return weights

    def _collect(self, jobs: Jobs, chan: Any, weights: np.ndarray, acc: np.ndarray, r: int,
                 copied: int) -> tuple[Any, int]:
        """The weights after round ``r`` that only the executors keep, into ``weights``.

        Where no executor keeps them any more, the driver's copy (the weights
        after round ``copied``) stays, with a warning. Returns the channel
        serving ``weights`` and the round they are the weights after.
        """
        self.exchange.release(chan)
        if jobs.collect(chan, acc, self.ctx.run_id):
            np.copyto(weights, acc)
            self.runlog.event("round %d: the weights after round %d came from an executor "
                              "that kept them", r + 1, r)
            copied = r
        else:
            self.runlog.event("round %d: no executor keeps the weights after round %d any "
                              "more (the driver had no copy of them); training goes on from "
                              "%s, the driver's copy", r + 1, r,
                              f"the weights after round {copied}" if copied
                              else "the initial weights", level=logging.WARNING)
        return self.exchange.publish(weights), copied

    def _commit(self, rnd: int, weights: np.ndarray, staged: Path | None,
                partitions: Mapping[int, Mapping[str, str]]) -> None:
        self.last_checkpoint = self.ckpts.commit_round(
            rnd, weights, staged, partitions, elapsed=self.runlog.elapsed(),
            history=self.history, outer_state=self.outer_state)
        self.runlog.event("round %d: checkpoint %s", rnd, self.last_checkpoint)

    def _diverged(self, r: int, nf: Nonfinite, partition: int | None,
                  staged: Path | None) -> None:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
        what = ("the weights became NaN or infinite" if nf.weights
                else f"the training loss became {nf.loss}")
        where = f" on partition {partition}" if partition is not None else ""
        ck = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
              else "no checkpoint was written before it"
              + ("" if self.ckpts else "; set checkpoint_dir to keep one"))
        msg = (f"training diverged in round {r + 1}: {what}{where} at solver iteration "
               f"{nf.step}. Stopped; {ck}. Lower the learning rate (base_lr) or clip "
               f"gradients (clip_gradients).")
        self.runlog.event(msg, level=logging.ERROR)
        raise TrainingDiverged(msg, round=r + 1, partition=partition,
                               checkpoint=self.last_checkpoint, history=self.history)


def _round_record(r: int, reports: list[RoundReport], rerun: tuple[int, ...], *, images: int,
                  seconds: float, broadcast: float, job: float, average: float
                  ) -> dict[str, Any]:
    """A round's history record (a plain dict: it goes to JSON as it is)."""
    losses = [v for x in reports for v in x.losses]
    # the slowest worker's time without its send (which the collect time counts)
    worker_total = max(x.seconds.total - x.seconds.send for x in reports)
    rec: dict[str, Any] = {
        "round": r + 1, "loss": float(np.mean(losses)), "images": images,
        "images_per_second": images / seconds,
        "seconds": {"round": seconds,
                    "broadcast": broadcast + max(x.seconds.fetch for x in reports),
                    "compute": max(x.seconds.compute for x in reports),
                    "save": max(x.seconds.save for x in reports),
                    "collect": max(0.0, job - worker_total), "average": average}}
    if any(x.seconds.wait for x in reports):  # a ring round: its collective, all joined
        rec["seconds"]["exchange"] = max(x.seconds.send - x.seconds.wait for x in reports)
    rec["partitions"] = [
        {"partition": x.partition, "host": x.task.host, "pid": x.task.pid, "state": x.state,
         "attempt": x.task.attempt, "compute": x.seconds.compute}
        for x in sorted(reports, key=lambda x: x.partition)]
    reset = sorted(x.partition for x in reports if x.state == "reset")
    if reset:
        rec["state_reset"] = reset
    if rerun:
        rec["rerun"] = list(rerun)
    retried = sorted(x.partition for x in reports if x.task.attempt)
    if retried:
        rec["retried"] = retried
    return rec
