"""Distributed training and inference of Caffe nets on Spark.

* :func:`train` — SparkNet's synchronous parameter averaging (or
  :class:`EASGD`) over K workers, each training ``sync_interval`` steps per
  round on its own partition, cached on its executor; testing, logging,
  checkpoints (local or S3) and resume.
* :func:`predict` / :func:`featurize` — run a net over an RDD or DataFrame
  and get a DataFrame with one column per requested blob.

Only ``engine``, ``data``, ``proto`` and ``dsl`` are imported from here;
nothing below this package imports it.
"""
from sparknet.spark._python import WorkerPythonError, prepare_workers
from sparknet.spark._records import DataError
from sparknet.spark.outer import Outer
from sparknet.spark.schedule import TauSchedule
from sparknet.spark.trainer import (
    EASGD,
    Averaging,
    TrainingDiverged,
    TrainResult,
    train,
)

__all__ = [
    "EASGD",
    "Averaging",
    "DataError",
    "Outer",
    "TauSchedule",
    "TrainResult",
    "TrainingDiverged",
    "WorkerPythonError",
    "featurize",
    "predict",
    "prepare_workers",
    "train",
]


def __getattr__(name: str):  # inference pulls in pyspark.sql: load it on first use
    if name in ("predict", "featurize"):
        from sparknet.spark import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'sparknet.spark' has no attribute {name!r}")
