"""LeNet for MNIST-sized (1x28x28) digits: Caffe's ``examples/mnist`` net.

Mirrors ``caffe/models/lenet/lenet_train_test.prototxt`` and
``lenet_solver.prototxt``. Pixels arrive scaled to [0, 1] by sparknet's loaders.
"""
from __future__ import annotations

from sparknet.dsl import (
    AccuracyLayer,
    ConvolutionLayer,
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

PROTOTXT = "caffe/models/lenet/lenet_train_test.prototxt"
SOLVER_PROTOTXT = "caffe/models/lenet/lenet_solver.prototxt"

_LR = (ParamSpec(lr_mult=1), ParamSpec(lr_mult=2))
_FILL = {"weight_filler": "xavier", "bias_filler": "constant"}


def net(batch_size: int = 64) -> NetParam:
    """LeNet fed ``batch_size`` images per step (both phases)."""
    return NetParam(
        "LeNet",
        InputLayer("data", shape=(batch_size, 1, 28, 28)),
        InputLayer("label", shape=(batch_size, 1)),
        ConvolutionLayer("conv1", ["data"], num_output=20, kernel=5, stride=1, params=_LR,
                         **_FILL),
        PoolingLayer("pool1", ["conv1"], pooling=Pooling.MAX, kernel=2, stride=2),
        ConvolutionLayer("conv2", ["pool1"], num_output=50, kernel=5, stride=1, params=_LR,
                         **_FILL),
        PoolingLayer("pool2", ["conv2"], pooling=Pooling.MAX, kernel=2, stride=2),
        InnerProductLayer("ip1", ["pool2"], num_output=500, params=_LR, **_FILL),
        ReLULayer("relu1", ["ip1"], tops=["ip1"]),
        InnerProductLayer("ip2", ["ip1"], num_output=10, params=_LR, **_FILL),
        AccuracyLayer("accuracy", ["ip2", "label"], include=Phase.TEST),
        SoftmaxWithLoss("loss", ["ip2", "label"]),
    )


def solver(batch_size: int = 64) -> SolverParam:
    """Caffe's LeNet solver: SGD with momentum and the ``inv`` schedule."""
    return SolverParam(
        net(batch_size),
        base_lr=0.01,
        momentum=0.9,
        weight_decay=0.0005,
        lr_policy=LrPolicy.inv(gamma=0.0001, power=0.75),
        display=100,
        max_iter=10000,
        snapshot=5000,
        snapshot_prefix="lenet",
        random_seed=1,
        solver_mode=SolverMode.CPU,
    )
