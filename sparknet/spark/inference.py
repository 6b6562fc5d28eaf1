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

import functools
import hashlib
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.data.rdd import batched
from sparknet.engine import CaffeNet, solver_proto
from sparknet.io import spark_context
from sparknet.proto import caffe_pb2
from sparknet.spark import _comm
from sparknet.spark._messages import NetSpec
from sparknet.spark._model import load_weights
from sparknet.spark._python import prepare_workers
from sparknet.spark._records import (
    DataError,
    ExampleSpec,
    is_dataframe,
)
from sparknet.spark._worker import net_entry, write_flat

log = logging.getLogger("sparknet.spark")

__all__ = ["featurize", "predict"]

_SCALARS = (bool, int, float, str, np.bool_, np.integer, np.floating)


def _solver(net: Any) -> caffe_pb2.SolverParameter:
    """A solver for any way of naming a net: solver, net (proto or DSL) or a prototxt path."""
    if isinstance(net, (str, os.PathLike)):
        from sparknet.proto import loader

        path = Path(net)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such prototxt")
        try:
            param = loader.load_net_prototxt(path)
        except loader.PrototxtError as net_error:  # a solver prototxt, or a broken file
            try:
                return loader.load_solver_prototxt_with_net(path)
            except loader.PrototxtError as solver_error:
                looks_like_net = "layer" in path.read_text(errors="replace")
                raise (net_error if looks_like_net else solver_error) from None
        if not len(param.layer):
            return loader.load_solver_prototxt_with_net(path)
        net = param
    if isinstance(net, caffe_pb2.NetParameter):
        s = caffe_pb2.SolverParameter()
        s.net_param.CopyFrom(net)
        s.base_lr = 0.0
        s.lr_policy = "fixed"
        return s
    to_proto = getattr(net, "to_proto", None)
    if callable(to_proto) and not isinstance(net, caffe_pb2.SolverParameter):
        p = to_proto()
        if isinstance(p, caffe_pb2.NetParameter):
            return _solver(p)
    return solver_proto(net)


def _weights(weights: Any, net: CaffeNet, s3_options: Any) -> np.ndarray:
    """``weights`` (any form :func:`~sparknet.spark._model.load_weights` takes) as a flat vector."""
    if weights is None:
        log.warning("predict: no weights given; using the net's initial (filler) weights")
    else:
        load_weights(net, weights, s3_options)
    return np.array(net.get_weights().flat, np.float32, copy=True)


@dataclass(frozen=True)
class _Plan:
    """How a worker turns one example into inputs, passthrough values and output columns."""

    net: NetSpec
    weights_id: str
    names: tuple[str, ...]  # TEST input blobs, in order
    shapes: dict[str, tuple[int, ...]]
    blobs: tuple[str, ...]
    batch: int
    vectors: bool
    mode: str  # "tuple", "mapping"
    passthrough: tuple[Any, ...]  # tuple positions or mapping keys, in output order
    examples: ExampleSpec
    transforms: dict[str, Callable[..., Any]]
    seed: int


def _predict_task(plan: _Plan, weights_bc: Any, partition: int,
                  records: Iterable[Any]) -> Iterator[tuple]:
    entry = net_entry(plan.net)
    net = entry.net
    if entry.weights_id != plan.weights_id:
        write_flat(net, _comm.flat_from_broadcast(weights_bc))
        entry.weights_id = plan.weights_id
        entry.tag = None  # the weights changed: a training round restores its own state
    if plan.vectors:
        from pyspark.ml.linalg import DenseVector

    def run(pending: list[tuple[dict[str, np.ndarray], tuple]], count: int) -> Iterator[tuple]:
        n = len(pending)
        inputs = {}
        for name in plan.names:
            given = [p[0].get(name) for p in pending]
            if all(g is None for g in given):
                inputs[name] = np.zeros((n, *plan.shapes[name]), np.float32)
            else:
                inputs[name] = np.stack([g if g is not None else
                                         np.zeros(plan.shapes[name], np.float32) for g in given])
        for name, fn in plan.transforms.items():
            if name in inputs:
                if hasattr(fn, "rng"):
                    fn.rng = np.random.default_rng([plan.seed, partition, count])
                inputs[name] = fn(inputs[name])
        out = net.forward(inputs, list(plan.blobs))
        flat = {b: out[b].reshape(n, -1) for b in plan.blobs}
        for i, (_, keep) in enumerate(pending):
            if plan.vectors:
                values = tuple(DenseVector(flat[b][i].astype(np.float64)) for b in plan.blobs)
            else:
                values = tuple(flat[b][i].tolist() for b in plan.blobs)
            yield keep + values

    def examples() -> Iterator[tuple[dict[str, np.ndarray], tuple]]:
        for i, record in enumerate(records):
            where = f"example {i} of partition {partition}"
            if plan.mode == "tuple":
                arrays = plan.examples.convert(tuple(record[:len(plan.names)]), where)
                keep = tuple(_plain(record[k]) if k < len(record) else None
                             for k in plan.passthrough)
            else:
                arrays = plan.examples.convert(record, where)
                row = record.asDict() if hasattr(record, "asDict") else record
                keep = tuple(_plain(row.get(k)) for k in plan.passthrough)
            yield arrays, keep

    count = 0  # examples so far: with (seed, partition) it seeds each batch's transforms
    for pending in batched(examples(), plan.batch):
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
        A ``SparkSession`` (or ``SparkContext``).
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

    sc = spark_context(spark)
    prepare_workers(sc)  # WorkerPythonError before any work when they lack this sparknet
    session = spark if isinstance(spark, SparkSession) else SparkSession.builder.getOrCreate()
    if isinstance(blobs, str):
        blobs = [blobs]
    blobs = tuple(blobs)
    if not blobs:
        raise ValueError("blobs is empty: name at least one blob to return")
    if output not in ("array", "vector"):
        raise ValueError(f"output must be 'array' or 'vector', got {output!r}")
    param = _solver(net)
    driver = CaffeNet(param)
    test_shapes = {n: tuple(s) for n, s in driver.test_input_shapes.items()}
    names = tuple(driver.test_input_names)
    if not names:
        raise ValueError("the net's TEST phase has no input blobs: sparknet feeds Input layers")
    available = driver.blob_names("TEST")
    unknown = [b for b in blobs if b not in available]
    if unknown:
        raise ValueError(f"the net has no blob '{unknown[0]}' in its TEST phase "
                         f"(blobs: {', '.join(available)})")
    out_shapes = driver.blob_shapes("TEST")
    flat = _weights(weights, driver, s3_options)
    del driver
    batch = int(batch_size or test_shapes[names[0]][0])
    example_shapes = {n: s[1:] for n, s in test_shapes.items()}
    solver_bytes = param.SerializeToString(deterministic=True)
    key = hashlib.sha1(solver_bytes).hexdigest()

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
        rdd = df.rdd
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
    examples = ExampleSpec(names, example_shapes, (), preprocess, False, "data")
    plan = _Plan(NetSpec(solver_bytes, key, gpu, blas_threads), uuid.uuid4().hex, names,
                 example_shapes, blobs, batch, output == "vector", mode, passthrough, examples,
                 transforms, int(seed))
    bc = _comm.broadcast_flat(sc, flat)
    rows = rdd.mapPartitionsWithIndex(functools.partial(_predict_task, plan, bc))
    frame = session.createDataFrame(rows, schema, verifySchema=False)
    log.info("predict: %s -> columns %s (%d values per example)", ", ".join(names),
             ", ".join(blobs), sum(math.prod(out_shapes[b][1:]) for b in blobs))
    return frame


def featurize(spark: Any, net: Any, weights: Any, data: Any, blobs: Sequence[str],
              *, output: str = "vector", **kwargs: Any) -> Any:
    """Extract the features of any blobs (SparkNet's FeaturizerApp): ML vectors by default.

    Same arguments as :func:`predict`; ``output="array"`` gives ``array<float>``.
    """
    return predict(spark, net, weights, data, blobs, output=output, **kwargs)
