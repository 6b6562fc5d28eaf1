"""``CaffeEstimator`` and ``CaffeModel``: Caffe nets as ``pyspark.ml`` stages.

``CaffeEstimator.fit`` maps the DataFrame's columns to the net's input blobs
and calls :func:`sparknet.spark.train` (synchronous parameter averaging over
``workers`` Spark tasks); the fitted :class:`CaffeModel` scores rows with the
Arrow-batched UDF of :mod:`sparknet.ml.scoring` and adds ``prediction``
(double) and ``probability`` (an ML ``Vector``), as Spark's classifiers do.
Both stages are ``MLWritable``/``MLReadable``, alone or inside a
``Pipeline``/``PipelineModel`` (:mod:`sparknet.ml.persistence`).
"""
from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable, MLReadable, MLWritable

from sparknet._util import shape_str
from sparknet.engine import NetSignature, WeightCollection
from sparknet.ml._params import CaffeParams, ParamError, TrainingSetters, params_setter
from sparknet.ml.scoring import (
    broadcast,
    check_size,
    load_weights,
    make_udf,
    scale_inputs,
    score_plan,
)
from sparknet.spark import DataError
from sparknet.spark.nets import signature_of

log = logging.getLogger("sparknet.ml")

__all__ = ["CaffeEstimator", "CaffeModel"]


class _Stopper:
    """Early stopping: ``False`` (stop) after ``patience`` validations without improvement."""

    def __init__(self, metric: str, patience: int):
        self.metric = metric
        self.patience = patience
        self.lower = "loss" in metric.lower()
        self.best: float | None = None
        self.best_round: int | None = None
        self.waited = 0
        self.stopped: int | None = None

    def __call__(self, record: dict) -> bool | None:
        test = record.get("test")
        if not test or self.metric not in test:
            return None
        value = float(test[self.metric])
        if self.best is None or (value < self.best if self.lower else value > self.best):
            self.best, self.best_round, self.waited = value, record["round"], 0
            return None
        self.waited += 1
        if self.waited >= self.patience:
            self.stopped = record["round"]
            log.info("early stopping after round %d: %s has not improved on %.4f (round %d) "
                     "for %d validations", record["round"], self.metric, self.best,
                     self.best_round, self.patience)
            return False
        return None


class _CaffeStage(CaffeParams):
    """What both stages do with the DataFrame: check its columns, map them to input blobs."""

    def _info(self) -> NetSignature:
        key = self.getSolver(), self.getBatchSize()
        cached = getattr(self, "_net_info", None)
        if cached is None or cached[0] != key:
            cached = (key, signature_of(self._effective_solver())[1])
            self._net_info = cached
        return cached[1]

    def _output_blob(self) -> str:
        info = self._info()
        blob = self.getOutputBlob() or info.scores
        if not blob:
            raise ParamError(f"{type(self).__name__}: the net has no classification layer to "
                             "take the scores from; set outputBlob")
        info.check_blob(blob, "outputBlob")
        return blob

    def _mapping(self, info: NetSignature, training: bool) -> dict[str, str]:
        """Input blob -> column: featuresCol, labelCol (training) and inputCols."""
        explicit = self.getInputCols()
        inputs = info.fed("TEST")
        for blob in explicit:
            if blob not in inputs:
                raise ParamError(f"inputCols: '{blob}' is not an input blob of the net "
                                 f"({', '.join(inputs)})")
        data = [n for n in inputs if n != info.label and n not in explicit]
        mapping: dict[str, str] = {}
        if data:
            mapping[data[0]] = self.getFeaturesCol()
        if training and info.label is not None and info.label not in explicit:
            mapping[info.label] = self.getLabelCol()
        mapping.update(explicit if training else
                       {b: c for b, c in explicit.items() if b != info.label})
        if training:
            unfed = [n for n in inputs if n not in mapping]
            if unfed:
                raise ParamError(f"input blob '{unfed[0]}' has no column: name one in inputCols "
                                 f"(input blobs: {', '.join(inputs)})")
        return mapping

    def _check_schema(self, dataset: Any, mapping: Mapping[str, str], info: NetSignature,
                      label_blob: str | None) -> None:
        """Refuse a DataFrame that cannot feed the net, from its schema alone (no Spark job)."""
        from pyspark.sql import types as T

        fields = {f.name: f for f in dataset.schema.fields}
        for blob, col in mapping.items():
            if col not in fields:
                raise DataError(f"column '{col}' (for input blob '{blob}') is not in the "
                                f"DataFrame (columns: {', '.join(dataset.columns)})")
            dt = fields[col].dataType
            shape = info.example_shapes("TEST")[blob]
            if blob == label_blob:
                if not isinstance(dt, (T.NumericType, T.BooleanType)):
                    raise DataError(f"label column '{col}' holds {dt.simpleString()} values; "
                                    f"input blob '{blob}' takes class indices: index the "
                                    f"labels first (pyspark.ml.feature.StringIndexer)")
                continue
            if type(dt).__name__ == "VectorUDT":
                attrs = fields[col].metadata.get("ml_attr", {})
                size = attrs.get("num_attrs")
                if size is None and "attrs" in attrs:
                    size = sum(len(v) for v in attrs["attrs"].values())
                check_size(blob, col, shape, size)
            elif isinstance(dt, T.ArrayType):
                if not isinstance(dt.elementType, T.NumericType):
                    raise DataError(f"column '{col}' is {dt.simpleString()}: input blob "
                                    f"'{blob}' takes numbers")
            elif isinstance(dt, T.StructType):
                if not {"height", "width", "nChannels", "data"} <= set(dt.names):
                    raise DataError(f"column '{col}' is {dt.simpleString()}: a struct must be "
                                    "Spark's image schema (spark.read.format('image'))")
            elif isinstance(dt, T.NumericType) and len(shape) <= 1 and \
                    (not shape or shape[0] == 1):
                pass
            elif not isinstance(dt, T.BinaryType):
                raise DataError(f"column '{col}' is {dt.simpleString()}: input blob '{blob}' "
                                f"takes {shape_str(shape)} per example; give an ML vector, an "
                                "array of numbers, image bytes or an image struct")


class CaffeEstimator(Estimator, _CaffeStage, TrainingSetters, DefaultParamsWritable,
                     DefaultParamsReadable):
    """Fits a Caffe net on a DataFrame with sparknet's distributed trainer.

    ``featuresCol`` feeds the net's first input blob (an ML ``Vector``,
    ``array<float>``/``array<double>``, encoded image bytes, raw pixel bytes or
    an image struct, reshaped to the blob), ``labelCol`` the blob its
    classification layer reads as class indices; ``inputCols`` maps further
    blobs to columns. ``workers``, ``syncInterval``, ``rounds``, ``outer`` and
    ``tauSchedule`` are K, tau, the rounds, the outer optimizer and the tau
    schedule of :func:`sparknet.spark.train`; ``batchSize``, ``baseLr``,
    ``momentum`` and ``weightDecay`` override the solver. A validation set
    (``validationIndicatorCol``, or a random ``validationFraction``) is scored
    every ``testInterval`` rounds; with ``patience`` > 0 training stops after
    that many validations without improvement of ``stoppingMetric``.

    Every Param is a keyword of the constructor and of ``setParams``, and has a
    getter and a setter (``getRounds()``, ``setRounds(4)``), as in Spark's own
    estimators; a keyword left out (or ``None``) keeps the Param's default.

    >>> est = CaffeEstimator(solver=lenet.solver(batch_size=64), workers=2, rounds=12)
    >>> model = est.setSyncInterval(25).fit(train_df)   # a CaffeModel
    """

    @keyword_only
    def __init__(self, *, solver: Any = None, featuresCol: str = "features",
                 labelCol: str = "label", predictionCol: str = "prediction",
                 probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                 inputCols: dict[str, str] | None = None, outputBlob: str = "",
                 workers: int | None = None, syncInterval: int = 50, rounds: int = 10,
                 outer: Any = None, tauSchedule: Any = None,
                 testInterval: int = 1, batchSize: int | None = None,
                 baseLr: float | None = None, momentum: float | None = None,
                 weightDecay: float | None = None, seed: int | None = None,
                 inputScale: float = 1.0, validationIndicatorCol: str | None = None,
                 validationFraction: float = 0.0, patience: int = 0,
                 stoppingMetric: str = "accuracy") -> None:
        super().__init__()
        self.setParams(**self._input_kwargs)

    setParams = params_setter(__init__)

    def write(self) -> Any:
        """An ``MLWriter`` of the Params (Spark's ML metadata), which needs no JVM."""
        from sparknet.ml.persistence import CaffeEstimatorWriter

        return CaffeEstimatorWriter(self)

    def _fit(self, dataset: Any) -> CaffeModel:
        from pyspark.sql import SparkSession

        from sparknet.spark import train

        self._check_values()
        param = self._effective_solver()
        info = self._info()
        mapping = self._mapping(info, training=True)
        self._check_schema(dataset, mapping, info, info.label)
        patience = self.getPatience()
        val_col = (self.getValidationIndicatorCol()
                   if self.isDefined(self.validationIndicatorCol) else None)
        fraction = self.getValidationFraction()
        if val_col is not None and val_col not in dataset.columns:
            raise DataError(f"validationIndicatorCol '{val_col}' is not in the DataFrame "
                            f"(columns: {', '.join(dataset.columns)})")
        has_val = val_col is not None or fraction > 0
        if patience and not has_val:
            raise ParamError("CaffeEstimator: Param patience needs validation data: set "
                             "validationIndicatorCol or validationFraction")
        metric = self.getStoppingMetric()
        if patience:
            outputs = info.test_outputs
            if metric not in outputs:
                raise ParamError(f"CaffeEstimator: Param stoppingMetric '{metric}' is not an "
                                 f"output of the TEST net ({', '.join(outputs)})")

        from pyspark.sql import functions as F

        select = [F.col(c).alias(b) for b, c in mapping.items()]
        seed = int(self.getSeed()) % (2 ** 31)
        if val_col is not None:
            flag = F.col(val_col).cast("boolean")
            train_df = dataset.where(~flag).select(*select)
            val_df = dataset.where(flag).select(*select)
        elif fraction > 0:
            train_part, val_part = dataset.randomSplit([1.0 - fraction, fraction], seed)
            train_df, val_df = train_part.select(*select), val_part.select(*select)
        else:
            train_df, val_df = dataset.select(*select), None
        data_blob = next(b for b in mapping if b != info.label)
        scale = self.getInputScale()
        preprocess = (functools.partial(scale_inputs, {data_blob: scale}) if scale != 1.0
                      else None)
        stopper = _Stopper(metric, patience) if patience else None
        spark = SparkSession.getActiveSession() or dataset.sparkSession
        try:
            result = train(spark, param, train_df, test_data=val_df,
                           workers=self.getWorkers(), sync_interval=self.getSyncInterval(),
                           rounds=self.getRounds(), outer=self.getOuter(),
                           tau_schedule=self.getTauSchedule(),
                           test_interval=self.getTestInterval() if val_df is not None else None,
                           seed=seed, preprocess=preprocess, callback=stopper, progress=False)
        except DataError as e:
            cols = ", ".join(f"'{c}' feeds '{b}'" for b, c in mapping.items())
            raise DataError(f"{e} (columns: {cols})") from e
        model = CaffeModel(weights=result.weights)
        self._copyValues(model)
        model._set(solver=self.getSolver())
        model._history = result.history
        model._stopped_round = stopper.stopped if stopper is not None else None
        return model


class CaffeModel(Model, _CaffeStage, MLWritable, MLReadable):
    """A trained Caffe net as a Transformer: adds ``prediction`` and ``probability``.

    ``transform`` runs the TEST net over ``featuresCol`` through the
    Arrow-batched UDF of :func:`~sparknet.ml.caffe_udf`: ``probability`` is
    the softmax of ``outputBlob`` (as is, when a Softmax layer computes it)
    as an ML ``DenseVector``, ``rawPrediction`` the blob's own values (an ML
    ``DenseVector``), ``prediction`` their argmax as a double. Any output is
    skipped when its column Param is set to ``""``.

    ``weights`` is anything :meth:`CaffeNet.use_weights` takes (a
    ``WeightCollection``, a ``TrainResult``, a ``.caffemodel`` path, also
    ``s3://``). The keywords are the Params that change what ``transform``
    produces, each with a getter and a setter (``setProbabilityCol``...).
    """

    @keyword_only
    def __init__(self, *, solver: Any = None, weights: Any = None,
                 featuresCol: str = "features", predictionCol: str = "prediction",
                 probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                 inputCols: dict[str, str] | None = None, outputBlob: str = "",
                 batchSize: int | None = None, inputScale: float = 1.0,
                 **training: Any) -> None:
        super().__init__()
        params = dict(self._input_kwargs)
        params.pop("weights", None)
        if training:
            warnings.warn(f"CaffeModel({', '.join(f'{k}=...' for k in training)}): training "
                          "Params are set on CaffeEstimator (a fitted model keeps the values "
                          "it was fitted with); passing them to CaffeModel is deprecated",
                          DeprecationWarning, stacklevel=3)
        self._set(**{k: v for k, v in params.items() if v is not None})
        self._weights: WeightCollection | None = None
        self._history: list[dict] = []
        self._stopped_round: int | None = None
        self._bc: tuple[str, Any] | None = None
        if weights is not None:
            self._set_weights(weights)

    setParams = params_setter(__init__, skip=("weights", "training"))

    # -- weights ----------------------------------------------------------------------------
    def _set_weights(self, weights: Any) -> None:
        held = getattr(weights, "weights", None)  # a TrainResult
        if isinstance(held, WeightCollection):
            weights = held
        if not isinstance(weights, WeightCollection):
            weights = load_weights(self._effective_solver(), weights)
        self._weights = weights
        self._bc = None

    @property
    def weights(self) -> WeightCollection:
        """The trained weights (layer name -> parameter arrays)."""
        if self._weights is None:
            raise ValueError("this CaffeModel has no weights")
        return self._weights

    @property
    def history(self) -> list[dict]:
        """The training run's history (one record per round; empty for a loaded model)."""
        return list(self._history)

    @property
    def stoppedRound(self) -> int | None:
        """The round after which early stopping ended training, or None."""
        return self._stopped_round

    def _flat(self) -> np.ndarray:
        return np.ascontiguousarray(self.weights.flat, np.float32)

    def _broadcast(self) -> Any:
        from pyspark import SparkContext

        sc = SparkContext._active_spark_context
        key = f"{id(sc)}:{id(self._weights)}"
        if self._bc is None or self._bc[0] != key:
            self._bc = (key, broadcast(self._flat()))
        return self._bc[1]

    def save_caffemodel(self, path: str) -> None:
        """Write the weights as a Caffe ``.caffemodel`` (a local path)."""
        from sparknet.engine import CaffeNet

        net = CaffeNet(self._effective_solver())
        net.set_weights(self.weights)
        net.save_weights(path)

    # -- Transformer ----------------------------------------------------------------------------
    def _transform(self, dataset: Any) -> Any:
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        self._check_values()
        info = self._info()
        blob = self._output_blob()
        mapping = self._mapping(info, training=False)
        self._check_schema(dataset, mapping, info, None)
        outputs = [c for c in (self.getRawPredictionCol(), self.getProbabilityCol(),
                               self.getPredictionCol()) if c]
        clash = [c for c in outputs if c in dataset.columns]
        if clash:
            raise DataError(f"the DataFrame already has a column '{clash[0]}'; set "
                            "rawPredictionCol/probabilityCol/predictionCol to other names")
        blobs = list(mapping)
        scale = self.getInputScale()
        # The worker returns the blob's own values (as doubles) and their argmax; the
        # probabilities are their softmax, unless a Softmax layer computed the blob already.
        plan = score_plan(self._effective_solver(), info, blobs, (blob,), self.getBatchSize(),
                          scale, False, None, "classify", softmax=False)
        udf = make_udf(plan, self._broadcast())
        _rows_for_udts(dataset)
        tmp = f"__sparknet_{self.uid}"
        out = dataset.withColumn(tmp, udf(*[F.col(mapping[b]) for b in blobs]))
        raw = F.col(f"{tmp}.probability")
        if self.getRawPredictionCol():
            out = out.withColumn(self.getRawPredictionCol(), array_to_vector(raw))
        if self.getProbabilityCol():
            prob = raw if blob in info.softmax_tops else _softmax(raw)
            out = out.withColumn(self.getProbabilityCol(), array_to_vector(prob))
        if self.getPredictionCol():
            out = out.withColumn(self.getPredictionCol(), F.col(f"{tmp}.prediction"))
        return out.drop(tmp)

    # -- persistence ----------------------------------------------------------------------------
    def write(self) -> Any:
        """An ``MLWriter``: Spark metadata, the net and solver prototxt, a ``.caffemodel``."""
        from sparknet.ml.persistence import CaffeModelWriter

        return CaffeModelWriter(self)

    @classmethod
    def read(cls) -> Any:
        """An ``MLReader`` for directories written by :meth:`write`."""
        from sparknet.ml.persistence import CaffeModelReader

        return CaffeModelReader(cls)


def _softmax(scores: Any) -> Any:
    """The softmax of an array<double> column, in Spark SQL: the largest score, then the sum
    of ``exp(score - largest)``, then each ``exp(score - largest)`` over that sum (O(n))."""
    from pyspark.sql import functions as F

    return F.aggregate(
        scores, F.lit(float("-inf")), lambda top, v: F.greatest(top, v),
        lambda top: F.aggregate(scores, F.lit(0.0), lambda total, v: total + F.exp(v - top),
                                lambda total: F.transform(scores,
                                                          lambda v: F.exp(v - top) / total)))


#: Spark 4's columnar input to Arrow UDFs fails on any ML vector column of the rows fed
#: (UNSUPPORTED_DATATYPE for a Parquet scan with a vector column); its row path does not.
COLUMNAR_INPUT = "spark.sql.execution.arrow.pythonUDF.columnarInput.enabled"


def _rows_for_udts(dataset: Any) -> None:
    """Turn off Spark's columnar Arrow-UDF input when the rows hold a UDT (a vector)."""
    if not any(type(f.dataType).__name__.endswith("UDT") for f in dataset.schema.fields):
        return
    conf = dataset.sparkSession.conf
    if str(conf.get(COLUMNAR_INPUT, "true")).lower() == "false":
        return
    log.warning("setting %s=false for this session: Spark's columnar input to Arrow UDFs "
                "cannot carry the ML vector columns of this DataFrame", COLUMNAR_INPUT)
    conf.set(COLUMNAR_INPUT, "false")
