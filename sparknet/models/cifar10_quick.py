"""CIFAR-10 "quick": Caffe's small net for 32x32 colour images.

Mirrors ``caffe/models/cifar10_quick/train_val.prototxt`` and ``solver.prototxt``
(Caffe's ``examples/cifar10/cifar10_quick_*``).
"""
from __future__ import annotations

from sparknet.dsl import (
    AccuracyLayer,
    ConvolutionLayer,
    Filler,
    InnerProductLayer,
    InputLayer,
    LrPolicy,
    NetParam,
    ParamSpec,
    Phase,
    Pooling,
    PoolingLayer,
    ReLULayer,
    SoftmaxWithLoss,
    SolverMode,
    SolverParam,
)

PROTOTXT = "caffe/models/cifar10_quick/train_val.prototxt"
SOLVER_PROTOTXT = "caffe/models/cifar10_quick/solver.prototxt"

_LR = (ParamSpec(lr_mult=1), ParamSpec(lr_mult=2))


def _conv(name: str, bottom: str, outputs: int, std: float) -> ConvolutionLayer:
    return ConvolutionLayer(name, [bottom], num_output=outputs, kernel=5, stride=1, pad=2,
                            params=_LR, weight_filler=Filler.gaussian(std=std),
                            bias_filler=Filler.constant())


def _fc(name: str, bottom: str, outputs: int) -> InnerProductLayer:
    return InnerProductLayer(name, [bottom], num_output=outputs, params=_LR,
                             weight_filler=Filler.gaussian(std=0.1),
                             bias_filler=Filler.constant())


def net(batch_size: int = 100) -> NetParam:
    """CIFAR-10 quick fed ``batch_size`` images per step (both phases)."""
    return NetParam(
        "CIFAR10_quick",
        InputLayer("data", shape=(batch_size, 3, 32, 32)),
        InputLayer("label", shape=(batch_size, 1)),
        _conv("conv1", "data", 32, std=0.0001),
        PoolingLayer("pool1", ["conv1"], pooling=Pooling.MAX, kernel=3, stride=2),
        ReLULayer("relu1", ["pool1"], tops=["pool1"]),
        _conv("conv2", "pool1", 32, std=0.01),
        ReLULayer("relu2", ["conv2"], tops=["conv2"]),
        PoolingLayer("pool2", ["conv2"], pooling=Pooling.AVE, kernel=3, stride=2),
        _conv("conv3", "pool2", 64, std=0.01),
        ReLULayer("relu3", ["conv3"], tops=["conv3"]),
        PoolingLayer("pool3", ["conv3"], pooling=Pooling.AVE, kernel=3, stride=2),
        _fc("ip1", "pool3", 64),
        _fc("ip2", "ip1", 10),
        AccuracyLayer("accuracy", ["ip2", "label"], include=Phase.TEST),
        SoftmaxWithLoss("loss", ["ip2", "label"]),
    )


def solver(batch_size: int = 100) -> SolverParam:
    """Caffe's CIFAR-10 quick solver: SGD at a fixed rate of 0.001."""
    return SolverParam(
        net(batch_size),
        test_iter=[100],
        test_interval=500,
        base_lr=0.001,
        momentum=0.9,
        weight_decay=0.004,
        lr_policy=LrPolicy.fixed(),
        display=100,
        max_iter=4000,
        snapshot=4000,
        snapshot_prefix="cifar10_quick",
        solver_mode=SolverMode.CPU,
    )
