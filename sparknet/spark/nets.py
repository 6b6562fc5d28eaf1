"""Nets and weights as the Spark side takes them from a user, checked once.

* :func:`solver_of` — any way of naming a net (a solver or net as a
  ``caffe_pb2`` message or DSL object, a prototxt path) as a solver, its net
  checked by the DSL's rules and shape arithmetic before Caffe builds it;
* :func:`signature_of` — that solver and its :class:`~sparknet.engine.NetSignature`
  (inputs, shapes, batch, outputs, label and scores blobs, layout);
* :func:`load_weights` / :func:`weights_or_fillers` — weights in any form
  (a ``WeightCollection``, a ``TrainResult``, a fitted ``CaffeModel``, a
  ``.caffemodel`` path, local, ``s3://`` or any Hadoop URI) into a net.

``train``, ``predict``/``featurize`` and the ML stages all go through here.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from sparknet.dsl import NetParam
from sparknet.engine import CaffeNet, NetSignature, WeightCollection, solver_proto
from sparknet.io import read_bytes
from sparknet.proto import caffe_pb2, loader

log = logging.getLogger("sparknet.spark")

__all__ = ["built", "load_weights", "signature_of", "solver_of", "weights_or_fillers"]


def solver_of(net: Any) -> caffe_pb2.SolverParameter:
    """A solver for any way of naming a net, its net checked before Caffe sees it.

    ``net`` is a ``caffe_pb2.SolverParameter`` or ``NetParameter``, a DSL
    ``SolverParam``/``NetParam`` (anything with ``to_proto()``), or the path of
    a net or solver prototxt. A bare net gets a solver that does not learn
    (``base_lr`` 0), for scoring. A net that did not come from the DSL is
    checked by the DSL's rules (:meth:`NetParam.check`): a kernel larger than
    its input or a zero dimension raises ``NetDefinitionError`` naming the
    layer, the field and, for a prototxt path, the file and line.
    """
    if isinstance(net, (str, os.PathLike)):
        return _from_prototxt(Path(net))
    to_proto = getattr(net, "to_proto", None)
    if callable(to_proto) and not isinstance(net, (caffe_pb2.SolverParameter,
                                                   caffe_pb2.NetParameter)):
        p = to_proto()  # a DSL object: its constructor checked it already
        return _scoring_solver(p) if isinstance(p, caffe_pb2.NetParameter) else solver_proto(p)
    if isinstance(net, caffe_pb2.NetParameter):
        NetParam.check(net)
        return _scoring_solver(net)
    param = caffe_pb2.SolverParameter()
    param.CopyFrom(solver_proto(net))  # the caller's own message stays the caller's
    NetParam.check(param)
    return param


def _from_prototxt(path: Path) -> caffe_pb2.SolverParameter:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prototxt")
    try:
        param = loader.load_net_prototxt(path)
    except loader.PrototxtError as net_error:  # a solver prototxt, or a broken file
        try:
            return _checked_solver_file(path)
        except loader.PrototxtError as solver_error:
            looks_like_net = "layer" in path.read_text(errors="replace")
            raise (net_error if looks_like_net else solver_error) from None
    if not len(param.layer):
        return _checked_solver_file(path)
    NetParam.check(param, path)
    return _scoring_solver(param)


def _checked_solver_file(path: Path) -> caffe_pb2.SolverParameter:
    """A solver prototxt with its net inlined, checked (lines named when the net is inline)."""
    param = loader.load_solver_prototxt_with_net(path)
    written = loader.load_solver_prototxt(path)
    inline = written.HasField("net_param") or written.HasField("train_net_param")
    NetParam.check(param, path if inline else None)
    return param


def _scoring_solver(net: caffe_pb2.NetParameter) -> caffe_pb2.SolverParameter:
    s = caffe_pb2.SolverParameter()
    s.net_param.CopyFrom(net)
    s.base_lr = 0.0
    s.lr_policy = "fixed"
    return s


def built(net: Any) -> tuple[caffe_pb2.SolverParameter, CaffeNet]:
    """:func:`solver_of` ``net``, and the driver's ``CaffeNet`` of it."""
    param = solver_of(net)
    return param, CaffeNet(param)


def signature_of(net: Any) -> tuple[caffe_pb2.SolverParameter, NetSignature]:
    """:func:`solver_of` ``net``, and the signature of the nets Caffe builds from it."""
    param, caffe_net = built(net)
    return param, caffe_net.signature()


def load_weights(net: CaffeNet, weights: Any, s3_options: Any = None) -> None:
    """Set ``net``'s weights from what a user gave (``train(init_weights=)``,
    ``predict(weights=)``, ``TrainResult.load``, a ``CaffeModel``'s).

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


def weights_or_fillers(net: CaffeNet, weights: Any, s3_options: Any = None, *,
                       who: str = "predict") -> WeightCollection:
    """``weights`` (as :func:`load_weights` takes them) in ``net``, returned; ``None``
    keeps the net's initial (filler) weights, with a warning naming ``who`` asked."""
    if weights is None:
        log.warning("%s: no weights given; using the net's initial (filler) weights", who)
    else:
        load_weights(net, weights, s3_options)
    return net.get_weights()
