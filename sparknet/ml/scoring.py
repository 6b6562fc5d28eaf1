"""Batch inference as a column expression: a pandas UDF over Arrow batches.

:func:`caffe_udf` turns a trained net into a ``pandas_udf`` usable in
``select``/``withColumn`` and, once registered, in SQL. The worker side is
:class:`sparknet.spark.scoring.Scorer`, the one that ``predict`` and the
training run's tests use too: each Python worker builds the net once (shared
with training) and reads the weights from a broadcast; every Arrow batch then
costs one forward pass per ``batch_size`` rows. Values are converted by the
one conversion the trainer uses (:func:`sparknet.data.to_blobs`): ML vectors
(dense or sparse; Arrow hands them over as their struct), ``array<float>`` and
``array<double>``, raw or encoded image bytes, and the struct of Spark's image
data source.
"""
from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparknet._util import shape_str
from sparknet.data import to_blobs
from sparknet.engine import NetSignature, WeightCollection
from sparknet.proto import caffe_pb2
from sparknet.spark import DataError
from sparknet.spark.nets import built, signature_of, weights_or_fillers
from sparknet.spark.scoring import NetSpec, Scorer, ScoreSpec, broadcast_weights

log = logging.getLogger("sparknet.ml")

__all__ = ["caffe_udf"]


def load_weights(param: caffe_pb2.SolverParameter, weights: Any) -> WeightCollection:
    """The net's weights from any form ``CaffeNet.use_weights`` takes (a ``.caffemodel``
    path may be ``s3://``); ``None``: the fillers, with a warning."""
    return weights_or_fillers(built(param)[1], weights, who="caffe_udf")


def digest(param: caffe_pb2.SolverParameter) -> str:
    """The SHA-1 of the solver's bytes: which net a saved model's weights belong to."""
    return NetSpec.of(param).key


# -- the worker side ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ScorePlan:
    """What every Python worker needs to score Arrow batches (small, picklable)."""

    score: ScoreSpec
    columns: tuple[str, ...]  # the input blob each UDF argument feeds, in order
    scale: dict[str, float]
    mode: str  # "blobs": the blobs' values; "classify": probability and prediction
    softmax: bool = True  # classify: apply a softmax to the scores blob


def scale_inputs(scale: dict[str, float], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Multiply the named blobs' values (float32), as the trainer's ``preprocess`` does."""
    out = dict(arrays)
    for name, factor in scale.items():
        if name in out:
            out[name] = out[name].astype(np.float32) * np.float32(factor)
    return out


def _column(values: Any, blob: str, shape: tuple[int, ...]) -> np.ndarray:
    """A batch of one column as ``(n, *shape)``, by the one conversion of values.

    A struct column (Spark's image schema, or an ML vector, which Arrow
    carries as its struct) comes as a pandas DataFrame: one dict per row.
    """
    import pandas as pd

    if isinstance(values, pd.DataFrame):
        values = values.to_dict("records")
    return to_blobs(list(values), shape, blob, f"column for input blob '{blob}': row")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def score_batches(plan: ScorePlan, weights_bc: Any, batches: Iterator[Any]) -> Iterator[Any]:
    """The UDF's body: each Arrow batch (Series, tuple of Series) -> the output batch."""
    import pandas as pd

    spec = plan.score
    scorer = Scorer.of(spec, weights_bc)
    for batch in batches:
        cols = batch if isinstance(batch, tuple) else (batch,)
        n = len(cols[0])
        if n == 0:
            yield _empty(plan)
            continue
        given = {blob: _column(c, blob, spec.shapes[blob]) for blob, c in zip(plan.columns, cols)}
        flat = scorer.outputs(spec, scale_inputs(plan.scale, given), n)
        if plan.mode == "classify":
            scores = flat[spec.blobs[0]].astype(np.float64)
            prob = _softmax(scores) if plan.softmax else scores
            yield pd.DataFrame({"probability": list(prob),
                                "prediction": scores.argmax(axis=1).astype(np.float64)})
        elif len(spec.blobs) == 1:
            yield pd.Series(list(flat[spec.blobs[0]]))
        else:
            yield pd.DataFrame({b: list(flat[b]) for b in spec.blobs})


def _empty(plan: ScorePlan) -> Any:
    import pandas as pd

    if plan.mode == "classify":
        return pd.DataFrame({"probability": [], "prediction": []})
    if len(plan.score.blobs) == 1:
        return pd.Series([], dtype=object)
    return pd.DataFrame({b: [] for b in plan.score.blobs})


def return_type(plan: ScorePlan) -> Any:
    from pyspark.sql import types as T

    array = T.ArrayType(T.FloatType(), False)
    if plan.mode == "classify":
        return T.StructType([T.StructField("probability", T.ArrayType(T.DoubleType(), False)),
                             T.StructField("prediction", T.DoubleType())])
    if len(plan.score.blobs) == 1:
        return array
    return T.StructType([T.StructField(b, array) for b in plan.score.blobs])


def make_udf(plan: ScorePlan, weights_bc: Any) -> Any:
    """The pandas UDF (scalar iterator) that runs :func:`score_batches`."""
    from pyspark.rdd import PythonEvalType
    from pyspark.sql.functions import pandas_udf

    fn = functools.partial(score_batches, plan, weights_bc)
    with warnings.catch_warnings():  # the explicit type is right for any argument types
        warnings.simplefilter("ignore", UserWarning)
        udf = pandas_udf(fn, return_type(plan), PythonEvalType.SQL_SCALAR_PANDAS_ITER_UDF)
    udf._sparknet_broadcast = weights_bc  # keep it alive as long as the UDF
    return udf


# -- the public function --------------------------------------------------------------------------

def caffe_udf(model: Any, blob: str | Sequence[str] | None = None, batch_size: int | None = None,
              *, inputs: Sequence[str] | None = None, input_scale: float | None = None,
              gpu: bool = False, blas_threads: int | None = None) -> Any:
    """An Arrow-batched pandas UDF that runs a trained Caffe net over a column.

    Args:
        model: a fitted :class:`~sparknet.ml.CaffeModel`, or a ``(solver_or_net,
            weights)`` pair as :func:`sparknet.spark.predict` takes them (weights:
            a ``WeightCollection``, a ``TrainResult`` or a ``.caffemodel`` path).
        blob: the blob to return (``array<float>``, the example's values in C
            order); several blobs give a struct with one field per blob
            (``select(f(...).alias("f")).select("f.*")`` makes them columns).
            Default: the model's ``outputBlob``, or the net's last blob.
        batch_size: rows per forward pass (default: the net's TEST batch size).
        inputs: the input blob each argument of the UDF feeds, in order
            (default: the first input blob; inputs not fed are zeros).
        input_scale: multiplies the first input's values (default: the model's
            ``inputScale``, else 1).
        gpu: run the net on the executor's GPU.
        blas_threads: threads Caffe's BLAS uses in each task.

    Returns:
        A ``pandas_udf``: ``df.select(f("features"))``, or
        ``spark.udf.register("scores", f)`` and ``SELECT scores(features) ...``.
    """
    from sparknet.ml.stages import CaffeModel

    if isinstance(model, CaffeModel):
        param = model._effective_solver()
        flat = None  # the model broadcasts its weights once, for transform and every UDF
        if blob is None:
            blob = model._output_blob()
        if input_scale is None:
            input_scale = model.getInputScale()
        info = model._info()
    else:
        if not (isinstance(model, tuple) and len(model) == 2):
            raise TypeError("caffe_udf takes a CaffeModel or a (solver, weights) pair, got "
                            f"{type(model).__name__}")
        param, info = signature_of(model[0])  # NetDefinitionError before Caffe sees a bad net
        flat = load_weights(param, model[1]).flat
        if blob is None:
            blob = info.scores or info.blobs[-1]
    blobs = (blob,) if isinstance(blob, str) else tuple(blob)
    if not blobs:
        raise ValueError("blob is empty: name at least one blob")
    fed = info.fed("TEST")
    columns = tuple(inputs) if inputs is not None else (fed[0],)
    for c in columns:
        if c not in fed:
            raise ValueError(f"inputs: '{c}' is not an input blob of the net "
                             f"({', '.join(fed)})")
    plan = score_plan(param, info, columns, blobs, batch_size, input_scale, gpu, blas_threads,
                      "blobs")
    return make_udf(plan, model._broadcast() if flat is None else broadcast(flat))


def score_plan(param: caffe_pb2.SolverParameter, info: NetSignature, columns: Sequence[str],
               blobs: Sequence[str], batch_size: int | None, input_scale: float | None,
               gpu: bool, blas_threads: int | None, mode: str,
               softmax: bool = True) -> ScorePlan:
    """The plan of a UDF scoring ``blobs`` from ``columns`` (``info``: the net's signature)."""
    spec = ScoreSpec.of(param, info, blobs, batch_size, gpu=gpu, blas_threads=blas_threads)
    scale = {}
    if input_scale is not None and float(input_scale) != 1.0:
        scale[columns[0]] = float(input_scale)
    return ScorePlan(spec, tuple(columns), scale, mode, softmax)


def broadcast(flat: np.ndarray) -> Any:
    """The weights as the UDF reads them: a broadcast, or inside the UDF on Spark Connect."""
    from pyspark import SparkContext

    from sparknet.spark.connect import share_weights

    shipped = share_weights(flat)  # a Connect client has no broadcasts
    if shipped is not None:
        return shipped
    sc = SparkContext._active_spark_context
    if sc is None:
        raise RuntimeError("caffe_udf needs an active SparkSession (the weights are broadcast)")
    return broadcast_weights(sc, flat)


def check_size(blob: str, column: str, shape: tuple[int, ...], size: int | None) -> None:
    """A vector column whose size Spark knows must hold the blob's values (no job run)."""
    if size is not None and size != math.prod(shape):
        raise DataError(f"column '{column}' holds vectors of size {size}; input blob '{blob}' "
                        f"takes {shape_str(shape)} per example ({math.prod(shape)} values)")
