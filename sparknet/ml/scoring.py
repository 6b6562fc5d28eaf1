"""Batch inference as a column expression: a pandas UDF over Arrow batches.

:func:`caffe_udf` turns a trained net into a ``pandas_udf`` usable in
``select``/``withColumn`` and, once registered, in SQL. Each Python worker
builds the net once (the net cache of :mod:`sparknet.spark._worker`, shared
with training and :func:`sparknet.spark.predict`) and reads the weights from
a broadcast file; every Arrow batch then costs one forward pass per
``batch_size`` rows. Values are converted as the trainer converts them
(:func:`sparknet.spark._records.to_array`): arrays, ML vectors, raw or
encoded image bytes, and the struct of Spark's image data source.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparknet._util import shape_str
from sparknet.engine import CaffeNet, WeightCollection
from sparknet.io import read_bytes
from sparknet.proto import caffe_pb2
from sparknet.spark import _comm
from sparknet.spark._messages import NetSpec
from sparknet.spark._records import DataError, fit, label_rules, to_array
from sparknet.spark._worker import net_entry, write_flat

log = logging.getLogger("sparknet.ml")

__all__ = ["NetInfo", "caffe_udf"]


# -- what the driver learns about a net ---------------------------------------------------------

@dataclass(frozen=True)
class NetInfo:
    """A net's TEST-phase inputs and outputs, as Caffe computed them (driver side)."""

    inputs: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]  # per example
    batch: int
    blobs: tuple[str, ...]
    blob_shapes: dict[str, tuple[int, ...]]
    label: str | None  # the input blob a classification layer reads as class indices
    scores: str | None  # the blob that layer reads as scores
    softmax_tops: frozenset[str]
    num_params: int
    layout: tuple

    @classmethod
    def of(cls, param: caffe_pb2.SolverParameter) -> NetInfo:
        net = CaffeNet(param)
        shapes = {n: tuple(s) for n, s in net.test_input_shapes.items()}
        names = tuple(net.test_input_names)
        if not names:
            raise ValueError("the net's TEST phase has no input blobs: sparknet feeds Input "
                             "layers")
        blob_shapes = net.blob_shapes("TEST")
        rules = label_rules(param.net_param, "TEST", names, blob_shapes)
        if not rules:
            rules = label_rules(param.net_param, "TRAIN", tuple(net.input_names),
                                net.blob_shapes("TRAIN"))
        tops = frozenset(t for layer in param.net_param.layer if layer.type == "Softmax"
                         for t in layer.top)
        return cls(names, {n: s[1:] for n, s in shapes.items()}, int(shapes[names[0]][0]),
                   tuple(net.blob_names("TEST")), blob_shapes,
                   rules[0].blob if rules else None, rules[0].scores if rules else None,
                   tops, int(net.num_params), net.weight_layout)

    def check_blob(self, blob: str, what: str = "blob") -> None:
        if blob not in self.blobs:
            raise ValueError(f"{what} '{blob}': the net has no such blob in its TEST phase "
                             f"(blobs: {', '.join(self.blobs)})")

    def values(self, blob: str) -> int:
        return math.prod(self.blob_shapes[blob][1:])


def load_weights(param: caffe_pb2.SolverParameter, weights: Any) -> WeightCollection:
    """The net's weights from any form ``CaffeNet.use_weights`` takes (a ``.caffemodel``
    path may be ``s3://``); ``None``: the fillers, with a warning."""
    net = CaffeNet(param)
    if not net.use_weights(weights, fetch=read_bytes):
        log.warning("no weights given; using the net's initial (filler) weights")
    return net.get_weights()


def digest(param: caffe_pb2.SolverParameter) -> str:
    return hashlib.sha1(param.SerializeToString(deterministic=True)).hexdigest()


# -- the worker side ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ScorePlan:
    """What every Python worker needs to score batches (small, picklable)."""

    net: NetSpec
    weights_id: str
    columns: tuple[str, ...]  # the input blob each UDF argument feeds, in order
    inputs: tuple[str, ...]  # every TEST input blob (the rest are fed zeros)
    shapes: dict[str, tuple[int, ...]]
    batch: int
    blobs: tuple[str, ...]
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


def _column(values: Any, blob: str, shape: tuple[int, ...], n: int) -> np.ndarray:
    """A batch of one column (a pandas Series or, for a struct, a DataFrame) as (n, *shape)."""
    import pandas as pd

    if isinstance(values, pd.DataFrame):  # a struct column: Spark's image schema
        from pyspark.sql import Row

        rows = [Row(**r) for r in values.to_dict("records")]
        items = [to_array(r, shape, blob) for r in rows]
    else:
        items = list(values)
        if items and all(isinstance(v, np.ndarray) and v.dtype != object for v in items):
            first = items[0]
            if first.size == math.prod(shape) and all(v.shape == first.shape for v in items):
                return np.stack(items).reshape(n, *shape)  # the fast path: numeric arrays
        items = [to_array(v, shape, blob) for v in items]
    return np.stack([fit(a, shape, blob, f"row {i} of the batch") for i, a in enumerate(items)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def score_batches(plan: ScorePlan, weights_bc: Any, batches: Iterator[Any]) -> Iterator[Any]:
    """The UDF's body: each Arrow batch (Series, tuple of Series) -> the output batch."""
    import pandas as pd

    entry = net_entry(plan.net)
    net = entry.net
    if entry.weights_id != plan.weights_id:
        write_flat(net, _comm.flat_from_broadcast(weights_bc))
        entry.weights_id = plan.weights_id
        entry.tag = None  # not a training round's state any more
    for batch in batches:
        cols = batch if isinstance(batch, tuple) else (batch,)
        n = len(cols[0])
        if n == 0:
            yield _empty(plan)
            continue
        given = {blob: _column(c, blob, plan.shapes[blob], n)
                 for blob, c in zip(plan.columns, cols)}
        given = scale_inputs(plan.scale, given)
        outs: dict[str, list[np.ndarray]] = {b: [] for b in plan.blobs}
        for lo in range(0, n, plan.batch):
            hi = min(n, lo + plan.batch)
            inputs = {name: (given[name][lo:hi] if name in given else
                             np.zeros((hi - lo, *plan.shapes[name]), np.float32))
                      for name in plan.inputs}
            out = net.forward(inputs, list(plan.blobs))
            for b in plan.blobs:
                outs[b].append(out[b].reshape(hi - lo, -1))
        flat = {b: np.concatenate(v) if len(v) > 1 else v[0] for b, v in outs.items()}
        if plan.mode == "classify":
            scores = flat[plan.blobs[0]].astype(np.float64)
            prob = _softmax(scores) if plan.softmax else scores
            yield pd.DataFrame({"probability": list(prob),
                                "prediction": scores.argmax(axis=1).astype(np.float64)})
        elif len(plan.blobs) == 1:
            yield pd.Series(list(flat[plan.blobs[0]]))
        else:
            yield pd.DataFrame({b: list(flat[b]) for b in plan.blobs})


def _empty(plan: ScorePlan) -> Any:
    import pandas as pd

    if plan.mode == "classify":
        return pd.DataFrame({"probability": [], "prediction": []})
    if len(plan.blobs) == 1:
        return pd.Series([], dtype=object)
    return pd.DataFrame({b: [] for b in plan.blobs})


def return_type(plan: ScorePlan) -> Any:
    from pyspark.sql import types as T

    array = T.ArrayType(T.FloatType(), False)
    if plan.mode == "classify":
        return T.StructType([T.StructField("probability", T.ArrayType(T.DoubleType(), False)),
                             T.StructField("prediction", T.DoubleType())])
    if len(plan.blobs) == 1:
        return array
    return T.StructType([T.StructField(b, array) for b in plan.blobs])


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
        from sparknet.spark.inference import _solver

        param = _solver(model[0])
        info = NetInfo.of(param)
        flat = load_weights(param, model[1]).flat
        if blob is None:
            blob = info.scores or info.blobs[-1]
    blobs = (blob,) if isinstance(blob, str) else tuple(blob)
    if not blobs:
        raise ValueError("blob is empty: name at least one blob")
    for b in blobs:
        info.check_blob(b)
    columns = tuple(inputs) if inputs is not None else (info.inputs[0],)
    for c in columns:
        if c not in info.inputs:
            raise ValueError(f"inputs: '{c}' is not an input blob of the net "
                             f"({', '.join(info.inputs)})")
    plan = score_plan(param, info, columns, blobs, batch_size, input_scale, gpu, blas_threads,
                      "blobs")
    return make_udf(plan, model._broadcast() if flat is None else broadcast(flat))


def score_plan(param: caffe_pb2.SolverParameter, info: NetInfo, columns: Sequence[str],
               blobs: Sequence[str], batch_size: int | None, input_scale: float | None,
               gpu: bool, blas_threads: int | None, mode: str,
               softmax: bool = True) -> ScorePlan:
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    solver = param.SerializeToString(deterministic=True)
    scale = {}
    if input_scale is not None and float(input_scale) != 1.0:
        scale[columns[0]] = float(input_scale)
    return ScorePlan(NetSpec(solver, hashlib.sha1(solver).hexdigest(), gpu, blas_threads),
                     uuid.uuid4().hex, tuple(columns), info.inputs, dict(info.shapes),
                     int(batch_size or info.batch), tuple(blobs), scale, mode, softmax)


def broadcast(flat: np.ndarray) -> Any:
    from pyspark import SparkContext

    sc = SparkContext._active_spark_context
    if sc is None:
        raise RuntimeError("caffe_udf needs an active SparkSession (the weights are broadcast)")
    return _comm.broadcast_flat(sc, flat)


def check_size(blob: str, column: str, shape: tuple[int, ...], size: int | None) -> None:
    """A vector column whose size Spark knows must hold the blob's values (no job run)."""
    if size is not None and size != math.prod(shape):
        raise DataError(f"column '{column}' holds vectors of size {size}; input blob '{blob}' "
                        f"takes {shape_str(shape)} per example ({math.prod(shape)} values)")
