"""Inference and feature extraction on Spark: one DataFrame column per requested blob.

:func:`predict` runs the TEST phase of a net over an RDD or DataFrame of
examples on the workers and returns a DataFrame; :func:`featurize` is the
same with ML vectors as the default output (SparkNet's FeaturizerApp). The
weights are broadcast once; each Python worker builds the net once and keeps
it for later tasks.

Output rows keep the example's scalar fields (a label, an id) and, for a
DataFrame, every column that is not an array fed to the net (``keep_inputs``
keeps those too), followed by one column per blob: the blob's values for that
example, flattened in C order.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparknet.data.rdd import batched
from sparknet.spark import connect
from sparknet.spark._python import prepare_workers
from sparknet.spark._records import (
    DataError,
    ExampleSpec,
    is_dataframe,
)
from sparknet.spark._worker import apply_transforms
from sparknet.spark.nets import built, weights_or_fillers
from sparknet.spark.scoring import Scorer, ScoreSpec, broadcast_weights

log = logging.getLogger("sparknet.spark")

__all__ = ["featurize", "predict"]

_SCALARS = (bool, int, float, str, np.bool_, np.integer, np.floating)


@dataclass(frozen=True)
class _Plan:
    """How a worker turns one example into inputs, passthrough values and output columns."""

    score: ScoreSpec
    vectors: bool
    mode: str  # "tuple", "mapping"
    passthrough: tuple[Any, ...]  # tuple positions or mapping keys, in output order
    examples: ExampleSpec
    transforms: dict[str, Callable[..., Any]]
    seed: int


def _predict_task(plan: _Plan, weights_bc: Any, partition: int,
                  records: Iterable[Any]) -> Iterator[tuple]:
    spec = plan.score
    scorer = Scorer.of(spec, weights_bc)
    if plan.vectors:
        from pyspark.ml.linalg import DenseVector

    def run(pending: list[tuple[dict[str, np.ndarray], tuple]], count: int) -> Iterator[tuple]:
        n = len(pending)
        inputs = {}
        for name in spec.inputs:
            given = [p[0].get(name) for p in pending]
            if any(g is not None for g in given):  # an example without it: zeros
                inputs[name] = np.stack([g if g is not None else
                                         np.zeros(spec.shapes[name], np.float32) for g in given])
        apply_transforms(plan.transforms, inputs, [plan.seed, partition, count])
        flat = scorer.outputs(spec, inputs, n)
        for i, (_, keep) in enumerate(pending):
            if plan.vectors:
                values = tuple(DenseVector(flat[b][i].astype(np.float64)) for b in spec.blobs)
            else:
                values = tuple(flat[b][i].tolist() for b in spec.blobs)
            yield keep + values

    def examples() -> Iterator[tuple[dict[str, np.ndarray], tuple]]:
        for i, record in enumerate(records):
            where = f"example {i} of partition {partition}"
            if plan.mode == "tuple":
                arrays = plan.examples.convert(tuple(record[:len(spec.inputs)]), where)
                keep = tuple(_plain(record[k]) if k < len(record) else None
                             for k in plan.passthrough)
            else:
                arrays = plan.examples.convert(record, where)
                row = record.asDict() if hasattr(record, "asDict") else record
                keep = tuple(_plain(row.get(k)) for k in plan.passthrough)
            yield arrays, keep

    count = 0  # examples so far: with (seed, partition) it seeds each batch's transforms
    for pending in batched(examples(), spec.batch):
        count += len(pending)
        yield from run(pending, count)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _spark_type(value: Any) -> Any:
    from pyspark.sql import types as T

    if isinstance(value, (bool, np.bool_)):
        return T.BooleanType()
    if isinstance(value, (int, np.integer)):
        return T.LongType()
    if isinstance(value, (float, np.floating)):
        return T.DoubleType()
    return T.StringType()


def predict(spark: Any, net: Any, weights: Any, data: Any, blobs: Sequence[str] = ("prob",),
            *, batch_size: int | None = None, output: str = "array", keep_inputs: bool = False,
            preprocess: Callable[[dict[str, np.ndarray]], Mapping[str, Any]] | None = None,
            transform: Callable[..., Any] | Mapping[str, Callable[..., Any]] | None = None,
            seed: int = 0, gpu: bool = False, blas_threads: int | None = None,
            s3_options: Any = None) -> Any:
    """Run ``net`` (TEST phase) over ``data`` on the workers; a DataFrame of the ``blobs``.

    Parameters
    ----------
    spark
        A ``SparkSession`` (or ``SparkContext``), or a Spark Connect session (then
        ``data`` is a DataFrame).
    net
        A solver or net: ``caffe_pb2`` message, DSL object, or a prototxt path.
    weights
        What ``train``'s ``init_weights`` takes: a ``WeightCollection``, a
        dict of layer name -> arrays, a :class:`~sparknet.spark.TrainResult`,
        a ``.caffemodel`` path (local or ``s3://``); or ``None`` for the fillers.
    data
        An RDD of examples (tuples in input-blob order, or dicts keyed by blob
        name) or a DataFrame with columns named after the input blobs.
        Inputs an example lacks (a label, say) are fed as zeros.
    blobs
        The blobs to return, one column each (``array<float>``, or an ML
        ``Vector`` with ``output="vector"``).
    batch_size
        Examples per forward pass (default: the TEST input's batch size).
    keep_inputs
        Keep the array inputs in the output too (default: only scalars and
        other columns pass through).
    preprocess, transform, seed
        As in :func:`~sparknet.spark.train`: per-example (once) and per-batch.
    """
    from pyspark import RDD
    from pyspark.sql import SparkSession
    from pyspark.sql import types as T

    sc = connect.context(spark, "predict")  # a SparkContext, or a Spark Connect client's
    client = connect.is_client(sc)
    prepare_workers(sc)  # WorkerPythonError before any work when they lack this sparknet
    session = (spark if client or isinstance(spark, SparkSession)
               else SparkSession.builder.getOrCreate())
    if isinstance(blobs, str):
        blobs = [blobs]
    blobs = tuple(blobs)
    if not blobs:
        raise ValueError("blobs is empty: name at least one blob to return")
    if output not in ("array", "vector"):
        raise ValueError(f"output must be 'array' or 'vector', got {output!r}")
    param, driver = built(net)  # NetDefinitionError before Caffe sees a bad net
    signature = driver.signature()
    names = signature.fed("TEST")
    for b in blobs:  # named as the data's columns are: "the net has no blob 'x'"
        if b not in signature.blob_shapes:
            raise ValueError(f"the net has no blob '{b}' in its TEST phase "
                             f"(blobs: {', '.join(signature.blobs)})")
    spec = ScoreSpec.of(param, signature, blobs, batch_size, gpu=gpu, blas_threads=blas_threads)
    flat = weights_or_fillers(driver, weights, s3_options).flat
    del driver
    example_shapes = spec.shapes

    if is_dataframe(data):
        df = data
        fields = {f.name: f for f in df.schema.fields}
        fed = [n for n in names if n in fields]
        if not fed:
            raise DataError(f"the DataFrame has no column named after an input blob "
                            f"({', '.join(names)}); columns: {', '.join(df.columns)}")
        array_types = (T.ArrayType, T.BinaryType, T.StructType)
        passthrough = tuple(c for c in df.columns if keep_inputs or c not in fed
                            or not (isinstance(fields[c].dataType, array_types)
                                    or type(fields[c].dataType).__name__ == "VectorUDT"))
        pass_fields = [fields[c] for c in passthrough]
        rdd = None if client else df.rdd
        mode = "mapping"
    elif isinstance(data, RDD):
        rdd = data
        first = rdd.take(1)
        if not first:
            raise DataError("predict: the data is empty")
        rec = first[0]
        if hasattr(rec, "asDict"):
            rec = rec.asDict()
        if isinstance(rec, Mapping):
            mode = "mapping"
            keys = list(rec)
            passthrough = tuple(k for k in keys if (keep_inputs and k in names) or
                                isinstance(rec[k], _SCALARS) or rec[k] is None)
            pass_fields = [T.StructField(str(k), _spark_type(rec[k]), True) for k in passthrough]
        elif isinstance(rec, (tuple, list)):
            if keep_inputs:
                raise ValueError("keep_inputs needs named fields: give dicts or a DataFrame")
            mode = "tuple"
            cols = list(names) + ["label"]
            passthrough = tuple(i for i, v in enumerate(rec) if isinstance(v, _SCALARS))
            pass_fields = [T.StructField(cols[i] if i < len(cols) else f"_{i}",
                                         _spark_type(rec[i]), True) for i in passthrough]
        else:
            mode = "tuple"
            rdd = rdd.map(lambda x: (x,))
            passthrough = ()
            pass_fields = []
    else:
        raise TypeError(f"data must be an RDD or a DataFrame, got {type(data).__name__}")

    taken = {f.name for f in pass_fields}
    clash = [b for b in blobs if b in taken]
    if clash:
        raise ValueError(f"the data already has a column named '{clash[0]}'")
    vector_type = None
    if output == "vector":
        from pyspark.ml.linalg import VectorUDT

        vector_type = VectorUDT()
    blob_fields = [T.StructField(b, vector_type if vector_type is not None else
                                 T.ArrayType(T.FloatType(), False), False) for b in blobs]
    schema = T.StructType(list(pass_fields) + blob_fields)

    transforms: dict[str, Callable[..., Any]] = {}
    if transform is not None:
        transforms = dict(transform) if isinstance(transform, Mapping) else {names[0]: transform}
    examples = ExampleSpec(names, dict(example_shapes), (), preprocess, False, "data")
    plan = _Plan(spec, output == "vector", mode, passthrough, examples, transforms, int(seed))
    bc = broadcast_weights(sc, flat)  # on a Connect client: the weights inside the query
    if client:  # mapInArrow over the DataFrame
        task = functools.partial(_predict_task, dataclasses.replace(plan, vectors=False), bc)
        frame = connect.predict_frame(data, task, schema, blobs if output == "vector" else ())
    else:
        rows = rdd.mapPartitionsWithIndex(functools.partial(_predict_task, plan, bc))
        frame = session.createDataFrame(rows, schema, verifySchema=False)
    log.info("predict: %s -> columns %s (%d values per example)", ", ".join(names),
             ", ".join(blobs), sum(signature.values(b) for b in blobs))
    return frame


def featurize(spark: Any, net: Any, weights: Any, data: Any, blobs: Sequence[str],
              *, output: str = "vector", **kwargs: Any) -> Any:
    """Extract the features of any blobs (SparkNet's FeaturizerApp): ML vectors by default.

    Same arguments as :func:`predict`; ``output="array"`` gives ``array<float>``.
    """
    return predict(spark, net, weights, data, blobs, output=output, **kwargs)
