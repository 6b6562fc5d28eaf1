"""What a training run gives back: :class:`TrainResult`, or :class:`TrainingDiverged`."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparknet.engine import CaffeNet, WeightCollection
from sparknet.proto import caffe_pb2
from sparknet.spark._model import save_caffemodel
from sparknet.spark._runlog import plot_history
from sparknet.spark.nets import built, load_weights

__all__ = ["TrainResult", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The training loss (or the weights) became NaN or infinite; the run stopped.

    ``round`` is the 1-based round, ``partition`` the worker's partition,
    ``checkpoint`` the last good checkpoint (or ``None``).
    """

    def __init__(self, message: str, *, round: int, partition: int | None,
                 checkpoint: str | None, history: list[dict]):
        super().__init__(message)
        self.round = round
        self.partition = partition
        self.checkpoint = checkpoint
        self.history = history


@dataclass
class TrainResult:
    """What :func:`~sparknet.spark.train` returns.

    ``weights``: the averaged (EASGD: centre) weights. ``history``: one dict
    per round — ``round``, ``time`` (seconds since the start of training),
    ``loss`` (mean training loss of the round over all workers and steps),
    ``images``, ``images_per_second``, ``seconds`` (``round``, ``broadcast``
    (until the slowest worker had the weights), ``compute``, ``save`` (the
    workers' solver state, for retries), ``collect``, ``average``, and
    ``test``/``checkpoint`` when they ran), ``partitions`` (one dict per
    worker: ``partition``, ``host``, ``pid``, ``state``, ``attempt``,
    ``compute``), when they happened ``state_reset``, ``rerun`` and
    ``retried`` (lists of partitions) and, when tested, ``test`` (TEST output
    blob -> mean over the test set). Plain dicts, so that they go to JSON as
    they are (``history.jsonl``, checkpoints). ``log_path``, ``history_path``,
    ``plot_path``: the files written to ``output_dir``. ``checkpoint``: the
    last checkpoint written. ``exchange``: how the weights travelled,
    ``"socket"`` or ``"spark"``.
    """

    weights: WeightCollection
    history: list[dict]
    solver: caffe_pb2.SolverParameter
    log_path: Path | None = None
    history_path: Path | None = None
    plot_path: Path | None = None
    checkpoint: str | None = None
    s3_options: Any = field(default=None, repr=False)
    exchange: str | None = None

    @property
    def rounds(self) -> int:
        return self.history[-1]["round"] if self.history else 0

    @property
    def test(self) -> dict[str, Any] | None:
        """The last test metrics, if the run tested."""
        return next((h["test"] for h in reversed(self.history) if h.get("test")), None)

    def net(self) -> CaffeNet:
        """A local :class:`CaffeNet` of the solver, holding the trained weights."""
        net = CaffeNet(self.solver)
        net.set_weights(self.weights)
        return net

    def save(self, path: str | os.PathLike) -> str:
        """Write the weights as a ``.caffemodel`` (a local path or ``s3://``); returns it."""
        return save_caffemodel(self.net(), path, self.s3_options)

    @classmethod
    def load(cls, path: str | os.PathLike, solver: Any, *,
             s3_options: Any = None) -> TrainResult:
        """The result :meth:`save` wrote to ``path`` (local or ``s3://``), for ``solver``.

        A ``.caffemodel`` holds only the weights: the history is empty and
        ``checkpoint`` is ``path``.
        """
        param, net = built(solver)  # a prototxt-born net is checked by the DSL first
        load_weights(net, path, s3_options)
        return cls(net.get_weights(), [], param, checkpoint=os.fspath(path),
                   s3_options=s3_options)

    def predict(self, spark: Any, data: Any, blobs: Sequence[str] = ("prob",),
                **options: Any) -> Any:
        """:func:`~sparknet.spark.predict` with this result's net and weights.

        ``options`` are ``predict``'s keywords (``batch_size``, ``output``,
        ``transform``...); ``s3_options`` defaults to this result's.
        """
        from sparknet.spark.inference import predict

        options.setdefault("s3_options", self.s3_options)
        return predict(spark, self.solver, self, data, blobs, **options)

    def plot(self, path: str | os.PathLike) -> Path:
        """Plot loss and test metrics against time into a PNG."""
        return plot_history(self.history, path)
