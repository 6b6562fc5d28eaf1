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
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

#: Each public name and the module that holds it. They load on first use (PEP 562):
#: a Spark worker unpickling one of this package's task functions imports this
#: package first, and only needs the modules its task runs, not the trainer's and
#: everything under it (0.3 CPU-seconds in every new Python worker).
_HOMES = {
    "EASGD": "trainer", "Averaging": "trainer", "TrainingDiverged": "trainer",
    "TrainResult": "trainer", "train": "trainer", "DataError": "_records",
    "Outer": "outer", "TauSchedule": "schedule", "WorkerPythonError": "_python",
    "prepare_workers": "_python", "predict": "inference", "featurize": "inference",
}

__all__ = [
    "EASGD", "Averaging", "DataError", "Outer", "TauSchedule", "TrainResult",
    "TrainingDiverged", "WorkerPythonError", "featurize", "predict", "prepare_workers", "train",
]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from sparknet.spark._python import WorkerPythonError, prepare_workers
    from sparknet.spark._records import DataError
    from sparknet.spark.inference import featurize, predict
    from sparknet.spark.outer import Outer
    from sparknet.spark.schedule import TauSchedule
    from sparknet.spark.trainer import EASGD, Averaging, TrainingDiverged, TrainResult, train


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is not None:
        value = getattr(importlib.import_module(f"sparknet.spark.{home}"), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"sparknet.spark.{name}"):
        # a public module as an attribute (sparknet.spark.trainer), as when this package
        # imported them all
        value = importlib.import_module(f"sparknet.spark.{name}")
    else:
        raise AttributeError(f"module 'sparknet.spark' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
