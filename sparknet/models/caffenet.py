"""CaffeNet: BVLC's reference variant of AlexNet, the net of SparkNet's ImageNet app.

Mirrors ``caffe/models/caffenet/train_val.prototxt`` and ``solver.prototxt``
(BVLC's ``models/bvlc_reference_caffenet``), with Input layers per phase whose
``transform_param`` asks the data pipeline for 227x227 crops.
"""
from __future__ import annotations

from sparknet.dsl import (
    AccuracyLayer,
    ConvolutionLayer,
    DropoutLayer,
    Filler,
    InnerProductLayer,
    Layer,
    LRNLayer,
    LrPolicy,
    NetParam,
    Phase,
    Pooling,
    PoolingLayer,
    ReLULayer,
    SoftmaxWithLoss,
    SolverMode,
    SolverParam,
)
from sparknet.models._common import WEIGHTS_AND_BIASES, imagenet_inputs

PROTOTXT = "caffe/models/caffenet/train_val.prototxt"
SOLVER_PROTOTXT = "caffe/models/caffenet/solver.prototxt"


def _conv(name: str, bottom: str, outputs: int, kernel: int, *, bias: float,
          **geometry: int) -> list[Layer]:
    """A convolution and its in-place ReLU."""
    return [ConvolutionLayer(name, [bottom], num_output=outputs, kernel=kernel,
                             params=WEIGHTS_AND_BIASES, weight_filler=Filler.gaussian(std=0.01),
                             bias_filler=Filler.constant(bias), **geometry),
            ReLULayer(f"relu{name[-1]}", [name], tops=[name])]


def _pool_norm(index: int, bottom: str) -> list[Layer]:
    """Max pooling, then local response normalization (CaffeNet's order)."""
    return [PoolingLayer(f"pool{index}", [bottom], pooling=Pooling.MAX, kernel=3, stride=2),
            LRNLayer(f"norm{index}", [f"pool{index}"], local_size=5, alpha=0.0001, beta=0.75)]


def _fc(index: int, bottom: str, outputs: int, std: float, bias: float) -> InnerProductLayer:
    return InnerProductLayer(f"fc{index}", [bottom], num_output=outputs,
                             params=WEIGHTS_AND_BIASES, weight_filler=Filler.gaussian(std=std),
                             bias_filler=Filler.constant(bias))


def _fc_relu_drop(index: int, bottom: str) -> list[Layer]:
    name = f"fc{index}"
    return [_fc(index, bottom, 4096, std=0.005, bias=1),
            ReLULayer(f"relu{index}", [name], tops=[name]),
            DropoutLayer(f"drop{index}", [name], tops=[name], dropout_ratio=0.5)]


def net(batch_size: int = 256, test_batch_size: int = 50, classes: int = 1000) -> NetParam:
    """CaffeNet for ``classes`` classes, ``batch_size`` images per training step."""
    return NetParam(
        "CaffeNet",
        imagenet_inputs(batch_size, test_batch_size, crop=227),
        _conv("conv1", "data", 96, 11, stride=4, bias=0),
        _pool_norm(1, "conv1"),
        _conv("conv2", "norm1", 256, 5, pad=2, group=2, bias=1),
        _pool_norm(2, "conv2"),
        _conv("conv3", "norm2", 384, 3, pad=1, bias=0),
        _conv("conv4", "conv3", 384, 3, pad=1, group=2, bias=1),
        _conv("conv5", "conv4", 256, 3, pad=1, group=2, bias=1),
        PoolingLayer("pool5", ["conv5"], pooling=Pooling.MAX, kernel=3, stride=2),
        _fc_relu_drop(6, "pool5"),
        _fc_relu_drop(7, "fc6"),
        _fc(8, "fc7", classes, std=0.01, bias=0),
        AccuracyLayer("accuracy", ["fc8", "label"], include=Phase.TEST),
        SoftmaxWithLoss("loss", ["fc8", "label"]),
    )


def solver(batch_size: int = 256, test_batch_size: int = 50, classes: int = 1000
           ) -> SolverParam:
    """BVLC's CaffeNet solver: SGD, the rate divided by 10 every 100,000 steps."""
    return SolverParam(
        net(batch_size, test_batch_size, classes),
        test_iter=[1000],
        test_interval=1000,
        base_lr=0.01,
        lr_policy=LrPolicy.step(gamma=0.1, stepsize=100000),
        display=20,
        max_iter=450000,
        momentum=0.9,
        weight_decay=0.0005,
        snapshot=10000,
        snapshot_prefix="caffenet_train",
        solver_mode=SolverMode.CPU,
    )
