"""The ``Param``s that :class:`CaffeEstimator` and :class:`CaffeModel` share, and their checks.

Every value is JSON-serialisable (the solver travels as prototxt text), so
Spark's own metadata format holds them and ``ParamGridBuilder`` can vary any
of them. As in Spark's own stages, every Param has a getter (``getRounds()``)
and a setter returning the stage (``setRounds(4)``): the estimator has one for
each Param, the model for those that change what ``transform`` produces.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import text_format
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (
    HasFeaturesCol,
    HasLabelCol,
    HasPredictionCol,
    HasProbabilityCol,
    HasRawPredictionCol,
    HasSeed,
    HasValidationIndicatorCol,
)

from sparknet._util import UserError
from sparknet.engine import solver_proto
from sparknet.proto import caffe_pb2, loader
from sparknet.spark import Outer, TauSchedule

S = TypeVar("S", bound="CaffeParams")


class ParamError(UserError, ValueError):
    """A stage's Param set to what it cannot take (out of range, not set, not in the net),
    refused before any Spark job; the message names the stage and the Param."""


def solver_text(solver: Any) -> str:
    """A solver (DSL, ``caffe_pb2``, prototxt text) as prototxt text with the net inline."""
    if isinstance(solver, str):
        param = loader.parse_solver(solver, "solver")
    else:
        param = solver_proto(solver)
    if not param.HasField("net_param"):
        raise ParamError("solver: the net must be inline (net_param); give a DSL SolverParam, "
                         "or load the prototxt with ProtoLoader.load_solver_prototxt_with_net")
    return text_format.MessageToString(param)


def _to_solver(value: Any) -> str:
    return solver_text(value)


def _to_outer(value: Any) -> dict[str, Any]:
    # stored as Outer.describe()'s dict: JSON for Spark's metadata, parsed back by getOuter
    return Outer.parse(value).describe()


def _to_tau_schedule(value: Any) -> dict[str, Any]:
    return TauSchedule.parse(value).describe()


def _to_input_cols(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise TypeError(f"inputCols must be a dict of input blob name -> column name, "
                        f"got {value!r}")
    return dict(value)


class CaffeParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol,
                  HasRawPredictionCol, HasSeed, HasValidationIndicatorCol):
    """Params of a Caffe net stage, in Spark's camelCase."""

    solver: Param[str] = Param(
        Params._dummy(), "solver",
        "the Caffe solver with its net inline, as prototxt text (a DSL SolverParam or a "
        "caffe_pb2.SolverParameter is converted)", typeConverter=_to_solver)
    inputCols: Param[dict] = Param(
        Params._dummy(), "inputCols",
        "input blob name -> column, for nets with several inputs (featuresCol feeds the "
        "first input blob, labelCol the label blob, unless named here)",
        typeConverter=_to_input_cols)
    outputBlob: Param[str] = Param(
        Params._dummy(), "outputBlob",
        "the blob whose values are the class scores (default: the scores a classification "
        "loss layer reads)", typeConverter=TypeConverters.toString)
    workers: Param[int] = Param(
        Params._dummy(), "workers", "K, parallel Caffe solvers (default: Spark's default "
        "parallelism)", typeConverter=TypeConverters.toInt)
    syncInterval: Param[int] = Param(
        Params._dummy(), "syncInterval", "tau, solver steps per worker per round",
        typeConverter=TypeConverters.toInt)
    rounds: Param[int] = Param(Params._dummy(), "rounds", "rounds of parameter averaging",
                               typeConverter=TypeConverters.toInt)
    outer: Param[dict] = Param(
        Params._dummy(), "outer",
        "the outer optimizer applied to the workers' mean each round: an Outer value "
        "(Outer.nesterov(lr=0.7, momentum=0.9)), a name ('average', 'nesterov', 'slowmo') or "
        "Outer.describe()'s dict", typeConverter=_to_outer)
    tauSchedule: Param[dict] = Param(
        Params._dummy(), "tauSchedule",
        "each round's tau from syncInterval: a TauSchedule value "
        "(TauSchedule.post_local(rounds=10, tau=1)), a name ('fixed', 'post-local', "
        "'adaptive') or TauSchedule.describe()'s dict", typeConverter=_to_tau_schedule)
    testInterval: Param[int] = Param(
        Params._dummy(), "testInterval",
        "score the validation data every this many rounds (and after the last)",
        typeConverter=TypeConverters.toInt)
    batchSize: Param[int] = Param(
        Params._dummy(), "batchSize", "examples per solver step and per forward pass "
        "(default: the net's Input layers)", typeConverter=TypeConverters.toInt)
    baseLr: Param[float] = Param(Params._dummy(), "baseLr", "the solver's base_lr",
                                 typeConverter=TypeConverters.toFloat)
    momentum: Param[float] = Param(Params._dummy(), "momentum", "the solver's momentum",
                                   typeConverter=TypeConverters.toFloat)
    weightDecay: Param[float] = Param(Params._dummy(), "weightDecay",
                                      "the solver's weight_decay",
                                      typeConverter=TypeConverters.toFloat)
    inputScale: Param[float] = Param(
        Params._dummy(), "inputScale",
        "multiplies the features on the workers (1/255 for pixels given as bytes or images)",
        typeConverter=TypeConverters.toFloat)
    validationFraction: Param[float] = Param(
        Params._dummy(), "validationFraction",
        "a random fraction of the rows held out for validation (0: none)",
        typeConverter=TypeConverters.toFloat)
    patience: Param[int] = Param(
        Params._dummy(), "patience",
        "stop after this many validations without improvement of stoppingMetric (0: never)",
        typeConverter=TypeConverters.toInt)
    stoppingMetric: Param[str] = Param(
        Params._dummy(), "stoppingMetric",
        "the TEST output blob early stopping watches (higher is better, lower for a name "
        "containing 'loss')", typeConverter=TypeConverters.toString)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(featuresCol="features", labelCol="label", predictionCol="prediction",
                         probabilityCol="probability", rawPredictionCol="rawPrediction",
                         syncInterval=50, rounds=10,
                         testInterval=1, inputScale=1.0, validationFraction=0.0, patience=0,
                         stoppingMetric="accuracy", inputCols={}, outputBlob="",
                         # pyspark's HasSeed defaults to hash() of the class name, which
                         # changes from one Python process to the next (str hashes are
                         # salted): the same fit would give other weights in each process.
                         # train()'s own default instead.
                         seed=0,
                         outer=Outer.average().describe(),
                         tauSchedule=TauSchedule.fixed().describe())

    # -- getters, as Spark's own stages have them ----------------------------------------------
    def getSolver(self) -> str:
        return self.getOrDefault(self.solver)

    def getInputCols(self) -> dict[str, str]:
        return self.getOrDefault(self.inputCols)

    def getOutputBlob(self) -> str:
        return self.getOrDefault(self.outputBlob)

    def getWorkers(self) -> int | None:
        return self.getOrDefault(self.workers) if self.isDefined(self.workers) else None

    def getSyncInterval(self) -> int:
        return self.getOrDefault(self.syncInterval)

    def getRounds(self) -> int:
        return self.getOrDefault(self.rounds)

    def getOuter(self) -> Outer:
        return Outer.parse(self.getOrDefault(self.outer))

    def getTauSchedule(self) -> TauSchedule:
        return TauSchedule.parse(self.getOrDefault(self.tauSchedule))

    def getTestInterval(self) -> int:
        return self.getOrDefault(self.testInterval)

    def getBatchSize(self) -> int | None:
        return self.getOrDefault(self.batchSize) if self.isDefined(self.batchSize) else None

    def getBaseLr(self) -> float:
        return self._solver_value(self.baseLr, "base_lr")

    def getMomentum(self) -> float:
        return self._solver_value(self.momentum, "momentum")

    def getWeightDecay(self) -> float:
        return self._solver_value(self.weightDecay, "weight_decay")

    def getInputScale(self) -> float:
        return self.getOrDefault(self.inputScale)

    def getValidationFraction(self) -> float:
        return self.getOrDefault(self.validationFraction)

    def getPatience(self) -> int:
        return self.getOrDefault(self.patience)

    def getStoppingMetric(self) -> str:
        return self.getOrDefault(self.stoppingMetric)

    # -- setters of what transform produces, as Spark's models have them ------------------------
    def setFeaturesCol(self: S, value: str) -> S:
        """The column that feeds the net's first input blob."""
        return self._set(featuresCol=value)

    def setPredictionCol(self: S, value: str) -> S:
        """The column of the predicted class (double); ``""``: none."""
        return self._set(predictionCol=value)

    def setProbabilityCol(self: S, value: str) -> S:
        """The column of the class probabilities (an ML vector); ``""``: none."""
        return self._set(probabilityCol=value)

    def setRawPredictionCol(self: S, value: str) -> S:
        """The column of the output blob's raw scores (an ML vector); ``""``: none."""
        return self._set(rawPredictionCol=value)

    def setInputCols(self: S, value: dict[str, str]) -> S:
        """Input blob name -> column, for nets with several inputs."""
        return self._set(inputCols=value)

    def setOutputBlob(self: S, value: str) -> S:
        """The blob whose values are the class scores."""
        return self._set(outputBlob=value)

    def setBatchSize(self: S, value: int) -> S:
        """Examples per solver step and per forward pass."""
        return self._set(batchSize=value)

    def setInputScale(self: S, value: float) -> S:
        """Multiplies the features on the workers (``1/255`` for pixels)."""
        return self._set(inputScale=value)

    def _solver_value(self, param: Param, field: str) -> float:
        if self.isDefined(param):
            return self.getOrDefault(param)
        return float(getattr(loader.parse_solver(self.getSolver(), "solver"), field))

    # -- the effective solver -------------------------------------------------------------------
    def _effective_solver(self) -> caffe_pb2.SolverParameter:
        """The solver Param with batchSize, baseLr, momentum and weightDecay applied."""
        if not self.isDefined(self.solver):
            raise ParamError(f"{type(self).__name__}: the solver Param is not set")
        param = loader.parse_solver(self.getSolver(), "solver")
        for p, field in ((self.baseLr, "base_lr"), (self.momentum, "momentum"),
                         (self.weightDecay, "weight_decay")):
            if self.isDefined(p):
                setattr(param, field, float(self.getOrDefault(p)))
        batch = self.getBatchSize()
        if batch is not None:
            set_batch_size(param.net_param, batch)
        return param

    def _check_values(self) -> None:
        """Refuse out-of-range Params (before any Spark job), naming the Param."""
        checks = [("syncInterval", self.getSyncInterval(), lambda v: v >= 1, ">= 1"),
                  ("rounds", self.getRounds(), lambda v: v >= 0, ">= 0"),
                  ("testInterval", self.getTestInterval(), lambda v: v >= 0, ">= 0"),
                  ("patience", self.getPatience(), lambda v: v >= 0, ">= 0"),
                  ("validationFraction", self.getValidationFraction(),
                   lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
                  ("inputScale", self.getInputScale(),
                   lambda v: math.isfinite(v) and v != 0, "finite and not 0")]
        if self.getWorkers() is not None:
            checks.append(("workers", self.getWorkers(), lambda v: v >= 1, ">= 1"))
        if self.getBatchSize() is not None:
            checks.append(("batchSize", self.getBatchSize(), lambda v: v >= 1, ">= 1"))
        if self.isDefined(self.baseLr):
            checks.append(("baseLr", self.getBaseLr(),
                           lambda v: math.isfinite(v) and v >= 0, "finite and >= 0"))
        for name, value, ok, what in checks:
            if not ok(value):
                raise ParamError(f"{type(self).__name__}: Param {name} must be {what}, "
                                 f"got {value}")


class TrainingSetters(CaffeParams):
    """The setters of the Params only training reads (the estimator's), in Spark's style."""

    def setSolver(self: S, value: Any) -> S:
        """The Caffe solver with its net inline (DSL, ``caffe_pb2`` or prototxt text)."""
        return self._set(solver=value)

    def setLabelCol(self: S, value: str) -> S:
        """The column of class indices that feeds the net's label blob."""
        return self._set(labelCol=value)

    def setWorkers(self: S, value: int) -> S:
        """K, the parallel Caffe solvers."""
        return self._set(workers=value)

    def setSyncInterval(self: S, value: int) -> S:
        """Tau, solver steps per worker per round."""
        return self._set(syncInterval=value)

    def setRounds(self: S, value: int) -> S:
        """Rounds of parameter averaging."""
        return self._set(rounds=value)

    def setOuter(self: S, value: Any) -> S:
        """The outer optimizer applied to the workers' mean (an ``Outer``, or its name)."""
        return self._set(outer=value)

    def setTauSchedule(self: S, value: Any) -> S:
        """Each round's tau (a ``TauSchedule``, or its name)."""
        return self._set(tauSchedule=value)

    def setTestInterval(self: S, value: int) -> S:
        """Score the validation data every this many rounds."""
        return self._set(testInterval=value)

    def setBaseLr(self: S, value: float) -> S:
        """The solver's base_lr."""
        return self._set(baseLr=value)

    def setMomentum(self: S, value: float) -> S:
        """The solver's momentum."""
        return self._set(momentum=value)

    def setWeightDecay(self: S, value: float) -> S:
        """The solver's weight_decay."""
        return self._set(weightDecay=value)

    def setSeed(self: S, value: int) -> S:
        """The random seed of training and of the validation split."""
        return self._set(seed=value)

    def setValidationIndicatorCol(self: S, value: str) -> S:
        """A boolean column marking the validation rows."""
        return self._set(validationIndicatorCol=value)

    def setValidationFraction(self: S, value: float) -> S:
        """A random fraction of the rows held out for validation."""
        return self._set(validationFraction=value)

    def setPatience(self: S, value: int) -> S:
        """Validations without improvement of stoppingMetric before training stops."""
        return self._set(patience=value)

    def setStoppingMetric(self: S, value: str) -> S:
        """The TEST output early stopping watches."""
        return self._set(stoppingMetric=value)


def params_setter(init: Callable[..., None], *, skip: tuple[str, ...] = ()) -> Callable[..., Any]:
    """A ``setParams`` that takes exactly the keywords of the constructor ``init``.

    The keyword list is written once, in the constructor (``@keyword_only``, as
    pyspark's stages have it); ``setParams`` refuses any other keyword with
    Python's own ``TypeError`` and, like the constructor, sets only the Params
    given (``None`` leaves a Param unset). ``skip`` names constructor keywords
    that are not Params.
    """
    sig = inspect.signature(init)
    params = [p for name, p in sig.parameters.items() if name not in skip]

    def setParams(self: S, **kwargs: Any) -> S:
        try:
            inspect.Signature(params).bind(self, **kwargs)
        except TypeError as e:  # a misspelt keyword, as the constructor would say it
            raise TypeError(f"{type(self).__name__}.setParams() {e}") from None
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    setParams.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    setParams.__doc__ = "Set Params by keyword, as the constructor takes them; returns the stage."
    return setParams


def set_batch_size(net: caffe_pb2.NetParameter, batch: int) -> None:
    """Set the first dimension of every ``Input`` layer's shapes (in place)."""
    found = False
    for layer in net.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                if len(shape.dim):
                    shape.dim[0] = int(batch)
                    found = True
    for shape in net.input_shape:
        if len(shape.dim):
            shape.dim[0] = int(batch)
            found = True
    if not found:
        raise ParamError("batchSize: the net has no Input layer whose batch size could be set "
                         "(sparknet feeds nets through Input layers)")
