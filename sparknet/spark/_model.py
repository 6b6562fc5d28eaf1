"""The net a run trains, as the driver sees it: its solver, inputs, layout, and weights.

:class:`Model` is read once from the solver (its engine
:class:`~sparknet.engine.NetSignature`: input blobs and their shapes, the
batch size, the weight layout, which blobs are class labels, and what the
workers build); :class:`DriverNet` is the driver's own ``CaffeNet`` of it
(initial weights, saving checkpoints), dropped between uses when the model is
large; :func:`save_caffemodel` writes its weights to a path or ``s3://``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from sparknet.engine import CaffeNet, NetSignature, WeightCollection
from sparknet.io import is_s3, open_storage
from sparknet.proto import caffe_pb2
from sparknet.spark._messages import NetSpec
from sparknet.spark.nets import load_weights, solver_of

log = logging.getLogger("sparknet.spark")

#: Above this many bytes of weights the driver's net is rebuilt when needed, not kept.
_KEEP_DRIVER_NET = 64 << 20


@attrs.frozen
class Model:
    """What the driver knows about the net of a run (read once from the solver)."""

    param: caffe_pb2.SolverParameter
    net_spec: NetSpec
    #: inputs, shapes, batch, outputs, label rules, layout: the engine's reading
    signature: NetSignature

    @property
    def solver_key(self) -> str:
        return self.net_spec.key

    @classmethod
    def read(cls, solver: Any, *, seed: int, gpu: bool = False,
             blas_threads: int | None = None) -> tuple[Model, CaffeNet]:
        """The model of ``solver`` and the driver's net built to read it.

        The solver's ``random_seed`` defaults to ``seed``; the workers' copy
        writes no snapshots of its own.
        """
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(solver_of(solver))
        if param.random_seed < 0:
            param.random_seed = seed
        worker = caffe_pb2.SolverParameter()
        worker.CopyFrom(param)
        worker.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
        worker.ClearField("snapshot_prefix")
        worker.snapshot = 0
        spec = NetSpec.of(worker, gpu, blas_threads)
        net = CaffeNet(param)
        signature = net.signature()
        signature.fed("TRAIN")  # ValueError: no inputs, or one without the batch first
        return cls(param, spec, signature), net

    def transforms(self, value: Any, phase: str) -> dict[str, Callable[..., Any]]:
        """A ``transform`` option as blob -> callable (a bare callable: the first input)."""
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        first = self.signature.fed(phase)[0]
        return {first: value}


class DriverNet:
    """The driver's ``CaffeNet`` of the model, rebuilt on demand for large models."""

    def __init__(self, model: Model, net: CaffeNet | None = None):
        self.model = model
        self._net = net

    def get(self) -> CaffeNet:
        if self._net is None:
            self._net = CaffeNet(self.model.param)
        return self._net

    def release(self) -> None:
        """Drop the net when the model is large (it holds weights, diffs, history)."""
        if self.model.signature.num_params * 4 > _KEEP_DRIVER_NET:
            self._net = None

    def flat(self, weights: Any = None, s3_options: Any = None) -> np.ndarray:
        """The initial weights as a flat float32 vector: ``weights`` (any form) or the fillers."""
        net = self.get()
        if weights is not None:
            load_weights(net, weights, s3_options)
        flat = np.array(net.get_weights().flat, np.float32, copy=True)
        self.release()
        return flat

    def save(self, flat: np.ndarray, path: str | os.PathLike) -> None:
        """Write the flat weights as a ``.caffemodel`` at ``path``."""
        net = self.get()
        net.set_weights(WeightCollection.from_flat(self.model.signature.layout, flat))
        save_caffemodel(net, path)
        self.release()


def save_caffemodel(net: CaffeNet, path: str | os.PathLike, s3_options: Any = None) -> str:
    """Write ``net``'s weights as a ``.caffemodel`` at ``path``, local or ``s3://``; returns it.

    Locally this is the engine's one writer, :meth:`CaffeNet.save_weights`
    (atomic; a failed write is an ``OSError`` naming ``path`` and leaves no
    temporary). For S3 that writer fills a local temporary file, which goes up
    as one object; a failure on either side names ``path``.
    """
    if not is_s3(path):
        net.save_weights(path)
        return os.fspath(path)
    base, name = str(path).rsplit("/", 1)
    with tempfile.TemporaryDirectory(prefix="sparknet-weights-") as d:
        try:
            net.save_weights(Path(d) / name)
        except OSError as e:
            raise OSError(e.errno, f"cannot stage {path} for upload in {d}: {e.strerror}",
                          str(path)) from None
        open_storage(base, s3_options).write_file(name, Path(d) / name)
    return str(path)
