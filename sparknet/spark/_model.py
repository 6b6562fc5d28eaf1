"""The net a run trains, as the driver sees it: its solver, inputs, layout, and weights.

:class:`Model` is read once from the solver (input blobs and their shapes,
the batch size, the weight layout, which blobs are class labels);
:class:`DriverNet` is the driver's own ``CaffeNet`` of it (initial weights,
saving checkpoints), dropped between uses when the model is large; and
:func:`load_weights` is the one way weights given by a user (``train``'s
``init_weights``, ``predict``'s ``weights``) reach a net.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from sparknet.engine import CaffeError, CaffeNet, WeightCollection, solver_proto
from sparknet.io import read_bytes
from sparknet.proto import caffe_pb2
from sparknet.spark._messages import NetSpec
from sparknet.spark._records import LabelRule, label_rules, shape_str

log = logging.getLogger("sparknet.spark")

#: Above this many bytes of weights the driver's net is rebuilt when needed, not kept.
_KEEP_DRIVER_NET = 64 << 20


@attrs.frozen
class Model:
    """What the driver knows about the net of a run (read once from the solver)."""

    param: caffe_pb2.SolverParameter
    net_spec: NetSpec
    names: tuple[str, ...]
    example_shapes: dict[str, tuple[int, ...]]
    batch: int
    test_names: tuple[str, ...]
    test_example_shapes: dict[str, tuple[int, ...]]
    test_batch: int
    test_outputs: tuple[str, ...]
    layout: Any
    num_params: int
    train_rules: tuple[LabelRule, ...]
    test_rules: tuple[LabelRule, ...]

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
        param.CopyFrom(solver_proto(solver))
        if param.random_seed < 0:
            param.random_seed = seed
        worker = caffe_pb2.SolverParameter()
        worker.CopyFrom(param)
        worker.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
        worker.ClearField("snapshot_prefix")
        worker.snapshot = 0
        worker_bytes = worker.SerializeToString(deterministic=True)
        spec = NetSpec(worker_bytes, hashlib.sha1(worker_bytes).hexdigest(), gpu, blas_threads)
        net = CaffeNet(param)
        names = tuple(net.input_names)
        if not names:
            raise ValueError("the net has no input blobs: sparknet feeds Input layers (replace "
                             "Data layers, e.g. ProtoLoader.replace_data_layers)")
        shapes = {n: tuple(s) for n, s in net.input_shapes.items()}
        batch = int(shapes[names[0]][0])
        for n in names:
            if not shapes[n] or shapes[n][0] != batch:
                raise ValueError(f"input blob '{n}' has shape {shape_str(shapes[n])}; every "
                                 f"input must have the batch size {batch} first")
        test_shapes = {n: tuple(s) for n, s in net.test_input_shapes.items()}
        test_names = tuple(net.test_input_names)
        layout = net.weight_layout
        model = cls(
            param=param, net_spec=spec, names=names,
            example_shapes={n: s[1:] for n, s in shapes.items()}, batch=batch,
            test_names=test_names,
            test_example_shapes={n: s[1:] for n, s in test_shapes.items()},
            test_batch=int(next(iter(test_shapes.values()))[0]) if test_shapes else batch,
            test_outputs=tuple(net.test_output_names), layout=layout,
            num_params=sum(math.prod(s) for _, shapes_ in layout for s in shapes_),
            train_rules=tuple(label_rules(param.net_param, "TRAIN", names,
                                          net.blob_shapes("TRAIN"))),
            test_rules=tuple(label_rules(param.net_param, "TEST", test_names,
                                         net.blob_shapes("TEST"))))
        return model, net

    @property
    def test_inputs(self) -> tuple[str, ...]:
        """The blobs the test phase feeds (the training inputs when it has none of its own)."""
        return self.test_names or self.names

    def transforms(self, value: Any, phase: str) -> dict[str, Callable[..., Any]]:
        """A ``transform`` option as blob -> callable (a bare callable: the first input)."""
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
        first = self.names[0] if phase == "TRAIN" else self.test_inputs[0]
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
        if self.model.num_params * 4 > _KEEP_DRIVER_NET:
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
        net.set_weights(WeightCollection.from_flat(self.model.layout, flat))
        save_caffemodel(net, path)
        self.release()


def load_weights(net: CaffeNet, weights: Any, s3_options: Any = None) -> None:
    """Set ``net``'s weights from what a user gave (``train(init_weights=)``,
    ``predict(weights=)``, ``TrainResult.load``).

    Any form :meth:`CaffeNet.use_weights` takes: a :class:`WeightCollection`,
    a mapping of layer name -> arrays, anything with a ``weights`` attribute
    holding one (a ``TrainResult``, a fitted ``CaffeModel``), or a
    ``.caffemodel`` path, local, ``s3://`` or any Hadoop URI (read with
    ``s3_options``; layers matched by name, as Caffe does). A missing file
    raises ``FileNotFoundError`` naming it.
    """
    if weights is None:
        raise TypeError("weights must be a WeightCollection, a dict of layer name -> arrays, "
                        "a TrainResult or a .caffemodel path or URI; got None")
    net.use_weights(weights, fetch=functools.partial(read_bytes, s3=s3_options))


def save_caffemodel(net: CaffeNet, path: str | os.PathLike) -> None:
    """``net.save_weights(path)``; a failed write (disk full) is an ``OSError`` naming ``path``.

    Caffe's own message for it names neither the file nor the cause. The
    engine writes atomically, so an older file at ``path`` stays whole.
    """
    try:
        net.save_weights(path)
    except CaffeError as e:
        # the engine writes "<path>.tmp<pid>" and renames it; a failed write leaves it
        Path(f"{os.fspath(path)}.tmp{os.getpid()}").unlink(missing_ok=True)
        raise OSError(f"cannot write {os.fspath(path)}: Caffe failed to write the weights "
                      f"(disk full or over a quota?): {e}") from None
