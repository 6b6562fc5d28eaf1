"""Caffe nets as Spark ML stages, and batch inference as a column expression.

* :class:`CaffeEstimator` — a ``pyspark.ml`` Estimator whose ``fit`` runs
  :func:`sparknet.spark.train` on a DataFrame's columns; Params in Spark's
  camelCase, tunable with ``ParamGridBuilder``/``TrainValidationSplit``.
* :class:`CaffeModel` — the fitted Transformer: ``rawPrediction``,
  ``probability`` and ``prediction`` columns; saved and loaded alone or in a
  ``PipelineModel`` through Spark's own readers and writers (no JVM needed).
* :func:`caffe_udf` — an Arrow-batched pandas UDF that runs a trained net
  over a column (``select``, ``withColumn``, SQL after registration).

Imports ``spark``, ``engine``, ``data``, ``proto`` and ``dsl``; nothing else
in sparknet imports this package.
"""
from sparknet.ml._params import ParamError
from sparknet.ml.persistence import ModelDirectoryError
from sparknet.ml.scoring import caffe_udf
from sparknet.ml.stages import CaffeEstimator, CaffeModel

__all__ = ["CaffeEstimator", "CaffeModel", "ModelDirectoryError", "ParamError", "caffe_udf"]
