"""A typed Python DSL for Caffe nets and solvers, compiling to ``caffe_pb2``.

Define a net as Python values; every mistake Caffe would reject (or run
wrongly) is a :class:`NetDefinitionError` at the line that makes it::

    from sparknet.dsl import (NetParam, RDDLayer, ConvolutionLayer, PoolingLayer,
        Pooling, InnerProductLayer, ReLULayer, SoftmaxWithLoss)

    net = NetParam("LeNet",
        RDDLayer("data", shape=(64, 1, 28, 28)),
        RDDLayer("label", shape=(64, 1)),
        ConvolutionLayer("conv1", ["data"], kernel=(5, 5), num_output=20),
        PoolingLayer("pool1", ["conv1"], pooling=Pooling.MAX, kernel=(2, 2), stride=(2, 2)),
        ConvolutionLayer("conv2", ["pool1"], kernel=(5, 5), num_output=50),
        PoolingLayer("pool2", ["conv2"], pooling=Pooling.MAX, kernel=(2, 2), stride=(2, 2)),
        InnerProductLayer("ip1", ["pool2"], num_output=500),
        ReLULayer("relu1", ["ip1"]),
        InnerProductLayer("ip2", ["relu1"], num_output=10),
        SoftmaxWithLoss("loss", ["ip2", "label"]))
    proto = net.to_proto()          # caffe_pb2.NetParameter
    text = net.to_prototxt()
    shapes = net.shapes()           # blob name -> shape, per phase

Conventions:

* A layer's name and bottoms are positional; every other field is a keyword,
  named as in ``caffe.proto`` except ``bottoms``/``tops``/``params`` (lists),
  ``kernel``/``stride``/``pad``/``dilation`` (an int or an ``(h, w)`` pair,
  covering ``kernel_size``/``kernel_h``/``kernel_w`` ...) and ``pooling``
  (``pool``).
* A field left ``None`` is not written, so Caffe's default applies, and a
  prototxt read with :meth:`NetParam.from_proto` writes back identically.
* Values are frozen: change one with ``attrs.evolve(layer, num_output=64)``.
"""
from sparknet.dsl.enums import (
    Backend,
    EltwiseOp,
    Engine,
    HingeNorm,
    LossNormalization,
    NormRegion,
    Phase,
    Pooling,
    ReductionOp,
    Regularization,
    ShareMode,
    SnapshotFormat,
    SolverMode,
    SolverType,
    VarianceNorm,
)
from sparknet.dsl.errors import NetDefinitionError, NetDefinitionWarning
from sparknet.dsl.layers import *  # noqa: F403 - the layer classes are the DSL
from sparknet.dsl.layers import __all__ as _layers
from sparknet.dsl.net import NetParam
from sparknet.dsl.params import (
    Filler,
    LossParam,
    NetState,
    NetStateRule,
    ParamSpec,
    TransformParam,
)
from sparknet.dsl.solver import LrPolicy, SolverParam

__all__ = [  # noqa: PLE0604 - _layers is the layer classes' names, a list of str
    "Backend", "EltwiseOp", "Engine", "Filler", "HingeNorm", "LossNormalization", "LossParam",
    "LrPolicy", "NetDefinitionError", "NetDefinitionWarning", "NetParam", "NetState", "NetStateRule", "NormRegion",
    "ParamSpec", "Phase", "Pooling", "ReductionOp", "Regularization", "ShareMode",
    "SnapshotFormat", "SolverMode", "SolverParam", "SolverType", "TransformParam",
    "VarianceNorm", *_layers,
]
