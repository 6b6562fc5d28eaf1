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

This module sets a run up and cleans it up; the pieces it drives each have one home:
options in :mod:`~sparknet.spark._config`, the net in
:mod:`~sparknet.spark._model`, the data in :mod:`~sparknet.spark._data`, the
rounds and their jobs in :mod:`~sparknet.spark._rounds`, checkpoints and resume in
:mod:`~sparknet.spark.checkpoint`, the result in :mod:`~sparknet.spark.result`.
"""
from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sparknet.engine import WeightCollection
from sparknet.spark import connect
from sparknet.spark._config import EASGD, Averaging, TrainConfig
from sparknet.spark._data import TEST, TRAIN, RunData, wait_for_slots
from sparknet.spark._messages import RunExtras
from sparknet.spark._model import DriverNet, Model
from sparknet.spark._python import WorkerPythonError, prepare_workers, worker_hint
from sparknet.spark._rounds import Rounds, RunContext
from sparknet.spark._runlog import RunLog
from sparknet.spark.checkpoint import Resumed, RunCheckpoints
from sparknet.spark.outer import Outer
from sparknet.spark.result import TrainingDiverged, TrainResult
from sparknet.spark.schedule import TauSchedule

log = logging.getLogger("sparknet.spark")

__all__ = ["EASGD", "Averaging", "TrainResult", "TrainingDiverged", "WorkerPythonError", "train"]

#: The positional arguments of train(); every other one is an option of TrainConfig.
_INPUTS = ("spark", "solver", "train_data", "test_data")


def train(spark: Any, solver: Any, train_data: Any, *, test_data: Any = None,
          workers: int | None = None, sync_interval: int = 50, rounds: int = 100,
          test_interval: int | None = 10, checkpoint_dir: str | os.PathLike | None = None,
          checkpoint_interval: int | None = 20, resume: bool = False,
          output_dir: str | os.PathLike | None = None, seed: int = 0,
          strategy: str | Averaging | EASGD = "average", outer: Outer | str | None = None,
          tau_schedule: TauSchedule | str | None = None,
          preprocess: Callable[[dict[str, np.ndarray]], Mapping[str, Any]] | None = None,
          transform: Callable[..., Any] | Mapping[str, Callable[..., Any]] | None = None,
          test_transform: Callable[..., Any] | Mapping[str, Callable[..., Any]] | None = None,
          shuffle: bool = True, init_weights: Any = None, progress: bool | None = None,
          callback: Callable[[dict], Any] | None = None, keep_checkpoints: int = 2,
          gpu: bool = False, blas_threads: int | None = None, s3_options: Any = None,
          reduction: str = "auto", exchange: str = "auto", executor_wait: float = 60.0) -> TrainResult:
    """Train a Caffe net on Spark with synchronous parameter averaging (or EASGD).

    Parameters
    ----------
    spark
        A ``SparkSession`` or ``SparkContext`` (``local[N]``, ``local-cluster``,
        standalone, YARN, Kubernetes), or a Spark Connect session
        (``SparkSession.builder.remote(...)``; data as a DataFrame or arrays,
        weights inside each round's query: see :mod:`sparknet.spark.connect`).
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
        tau, solver steps per worker per round (the given tau of a ``tau_schedule``).
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
    outer
        What the driver does with the workers' mean at the end of a round
        (:class:`~sparknet.spark.Outer`): ``Outer.average()`` (default: the mean
        becomes the weights), ``Outer.nesterov(lr=0.7, momentum=0.9)`` (DiLoCo) or
        ``Outer.slowmo(lr=..., momentum=...)``, which treat ``w - mean`` as a
        gradient with momentum; the momentum is checkpointed. Only with
        ``strategy="average"`` (EASGD has its own rule: any other is an error).
    tau_schedule
        Each round's tau (:class:`~sparknet.spark.TauSchedule`):
        ``TauSchedule.fixed()`` (default: ``sync_interval`` every round),
        ``TauSchedule.post_local(rounds=..., tau=...)`` (small tau first) or
        ``TauSchedule.adaptive(...)`` (AdaComm: tau follows the training loss).
        The history records each round's ``tau``; the solver's iteration (and
        so its learning rate) counts the steps actually run.
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
        Start from these weights instead of the fillers: what ``predict``'s
        ``weights`` takes (a ``WeightCollection``, a dict of layer name ->
        arrays, a ``TrainResult``, or a ``.caffemodel`` path, local or
        ``s3://``, layers matched by name).
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
        Spark's broadcast and task results for large models, but 2·K model
        copies cross the driver's link each round. ``"ring"``: the round runs
        as a barrier stage whose tasks reduce-scatter and all-gather among
        themselves (each node moves about 2 models a round whatever K; the
        driver receives one); needs a task slot per worker. ``"spark"``: a
        torrent broadcast and task results. ``"auto"`` (default) takes the
        ring on a cluster (not ``local[...]``) from 3 workers, or 2 workers
        and 16 MB of weights, when there is a task slot per worker; the
        socket otherwise; Spark's paths where Spark's network or I/O
        encryption is on, ``reduction`` is ``"tree"`` or an executor cannot
        connect to the driver (set ``spark.sparknet.exchange.port`` to fix
        the port for a firewall). On a Spark Connect session the weights
        travel inside each round's query and ``"auto"`` is the only choice
        (the others are refused before any job).
    reduction
        With ``exchange="spark"``: ``"auto"``, ``"driver"`` (stream all
        workers' weights to the driver) or ``"tree"`` (partial sums on the
        executors first).

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
    options = dict(locals())  # every option, once: TrainConfig converts and checks them
    for name in _INPUTS:
        del options[name]
    sc = connect.context(spark, "train")  # a SparkContext, or a Spark Connect client's stand-in
    config = TrainConfig.create(sc, **options)
    return _Trainer(sc, solver, train_data, test_data, config).run()


class _Trainer:
    """One run: set up from the configuration, resume, train the rounds, clean up."""

    def __init__(self, sc: Any, solver: Any, train_data: Any, test_data: Any,
                 config: TrainConfig):
        self.sc = sc
        self.config = config
        self.model, net = Model.read(solver, seed=config.seed, gpu=config.gpu,
                                     blas_threads=config.blas_threads)
        if connect.is_client(sc):  # what a Connect run cannot do is refused before any job
            connect.check_run(config.exchange, config.reduction, self.model.signature.num_params)
        self.driver = DriverNet(self.model, net)
        self.train_data, self.test_data = train_data, test_data
        self.extras = RunExtras(self.model.transforms(config.transform, "TRAIN"),
                                self.model.transforms(config.test_transform, "TEST"))
        self.run_id = uuid.uuid4().hex[:12]
        self.ckpts = (RunCheckpoints(config, self.model, self.driver)
                      if config.checkpoint_dir is not None else None)

    def run(self) -> TrainResult:
        cfg = self.config
        resumed = self.ckpts.resume() if cfg.resume and self.ckpts is not None else Resumed()
        runlog = RunLog(cfg.output_dir, rounds=cfg.rounds, start_round=resumed.round,
                        elapsed_before=resumed.elapsed, progress=cfg.progress,
                        history=resumed.history)
        sig = self.model.signature
        data = RunData(self.sc, self.run_id, batch=sig.batch, workers=cfg.workers, runlog=runlog)
        ctx = RunContext(self.sc, self.run_id, self.extras, self.test_data is not None)
        rounds = Rounds(ctx, self.config, self.model, self.ckpts, runlog, data, resumed)
        sc = self.sc
        group = f"sparknet-{self.run_id}"
        saved = {k: sc.getLocalProperty(k) for k in
                 ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")}
        sc.setJobGroup(group, "sparknet training", interruptOnCancel=True)
        finished = False
        flat = resumed.weights
        try:
            runlog.event("training %s: %d workers, sync_interval %d (%s), batch %d, rounds "
                         "%d..%d, %d parameters, strategy %s, outer %s",
                         self.model.param.net_param.name or "net", cfg.workers,
                         cfg.sync_interval, cfg.tau_schedule, sig.batch, resumed.round + 1,
                         cfg.rounds, sig.num_params, cfg.strategy.describe(cfg.workers),
                         cfg.outer)
            if resumed.round:
                runlog.event("resumed from %s (round %d)", resumed.checkpoint, resumed.round)
            elif cfg.resume and self.ckpts is None:
                runlog.event("resume=True but no checkpoint_dir: starting from scratch",
                             level=logging.WARNING)
            if flat is None:
                flat = self.driver.flat(cfg.init_weights, cfg.s3_options)
            if resumed.round < cfg.rounds:
                wait_for_slots(sc, cfg.workers, cfg.executor_wait, runlog)
                prepare_workers(sc, cfg.workers)  # before round 1: they import this sparknet
                data.cache(self.train_data, TRAIN, sig.inputs, sig.shapes, sig.train_rules,
                           partitions=cfg.workers, preprocess=cfg.preprocess,
                           transforms=self.extras.transform)
                if self.test_data is not None:
                    data.cache(self.test_data, TEST, sig.fed("TEST"), sig.example_shapes("TEST"),
                               sig.test_rules, partitions=None, preprocess=cfg.preprocess,
                               transforms=self.extras.test_transform)
                flat = rounds.loop(flat)
            finished = True
        except BaseException as e:
            sc.cancelJobGroup(group)
            hint = None if isinstance(e, WorkerPythonError) else worker_hint(sc, e)
            if hint is not None:  # a job of the user's RDD, made before the default applied
                raise hint from e
            raise
        finally:
            rounds.close()
            data.cleanup()
            for k, v in saved.items():
                sc.setLocalProperty(k, v)  # type: ignore[arg-type]
            if finished and rounds.history:
                try:
                    runlog.plot(rounds.history)
                except Exception as e:  # noqa: BLE001  # a plot must not lose a run
                    log.warning("could not plot the history: %s", e)
            runlog.close()
        return TrainResult(WeightCollection.from_flat(sig.layout, flat), rounds.history,
                           self.model.param, runlog.log_path, runlog.history_path,
                           runlog.plot_path, rounds.last_checkpoint, cfg.s3_options,
                           rounds.exchange_name)
