"""GoogLeNet (Inception v1): BVLC's ``models/bvlc_googlenet``.

Mirrors ``caffe/models/googlenet/train_val.prototxt`` and ``solver.prototxt``:
nine inception modules and two auxiliary classifiers whose losses weigh 0.3;
``accuracy`` and ``accuracy_top5`` score the main classifier in TEST.
"""
from __future__ import annotations

from sparknet.dsl import (
    AccuracyLayer,
    ConcatLayer,
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

PROTOTXT = "caffe/models/googlenet/train_val.prototxt"
SOLVER_PROTOTXT = "caffe/models/googlenet/solver.prototxt"

_WEIGHTS = Filler.xavier()
_BIAS = Filler.constant(0.2)


def _conv_relu(name: str, bottom: str, outputs: int, kernel: int, relu: str,
               **geometry: int) -> list[Layer]:
    return [ConvolutionLayer(name, [bottom], num_output=outputs, kernel=kernel,
                             params=WEIGHTS_AND_BIASES, weight_filler=_WEIGHTS,
                             bias_filler=_BIAS, **geometry),
            ReLULayer(relu, [name], tops=[name])]


def _max_pool(name: str, bottom: str, stride: int, pad: int | None = None) -> PoolingLayer:
    return PoolingLayer(name, [bottom], pooling=Pooling.MAX, kernel=3, stride=stride, pad=pad)


def _lrn(name: str, bottom: str) -> LRNLayer:
    return LRNLayer(name, [bottom], local_size=5, alpha=0.0001, beta=0.75)


def inception(name: str, bottom: str, *, n1x1: int, n3x3_reduce: int, n3x3: int,
              n5x5_reduce: int, n5x5: int, pool_proj: int) -> list[Layer]:
    """One inception module: four branches concatenated into ``<name>/output``."""
    def branch(suffix: str, source: str, outputs: int, kernel: int, pad: int | None = None
               ) -> list[Layer]:
        return _conv_relu(f"{name}/{suffix}", source, outputs, kernel,
                          f"{name}/relu_{suffix}", pad=pad)
    return [
        *branch("1x1", bottom, n1x1, 1),
        *branch("3x3_reduce", bottom, n3x3_reduce, 1),
        *branch("3x3", f"{name}/3x3_reduce", n3x3, 3, pad=1),
        *branch("5x5_reduce", bottom, n5x5_reduce, 1),
        *branch("5x5", f"{name}/5x5_reduce", n5x5, 5, pad=2),
        _max_pool(f"{name}/pool", bottom, stride=1, pad=1),
        *branch("pool_proj", f"{name}/pool", pool_proj, 1),
        ConcatLayer(f"{name}/output",
                    [f"{name}/{b}" for b in ("1x1", "3x3", "5x5", "pool_proj")]),
    ]


def _classifier(name: str, bottom: str, classes: int) -> InnerProductLayer:
    return InnerProductLayer(name, [bottom], num_output=classes, params=WEIGHTS_AND_BIASES,
                             weight_filler=_WEIGHTS, bias_filler=Filler.constant(0))


def auxiliary(name: str, bottom: str, classes: int) -> list[Layer]:
    """An auxiliary classifier whose loss ``<name>/<name>`` weighs 0.3."""
    return [
        PoolingLayer(f"{name}/ave_pool", [bottom], pooling=Pooling.AVE, kernel=5, stride=3),
        *_conv_relu(f"{name}/conv", f"{name}/ave_pool", 128, 1, f"{name}/relu_conv"),
        InnerProductLayer(f"{name}/fc", [f"{name}/conv"], num_output=1024,
                          params=WEIGHTS_AND_BIASES, weight_filler=_WEIGHTS, bias_filler=_BIAS),
        ReLULayer(f"{name}/relu_fc", [f"{name}/fc"], tops=[f"{name}/fc"]),
        DropoutLayer(f"{name}/drop_fc", [f"{name}/fc"], tops=[f"{name}/fc"], dropout_ratio=0.7),
        _classifier(f"{name}/classifier", f"{name}/fc", classes),
        SoftmaxWithLoss(f"{name}/loss", [f"{name}/classifier", "label"],
                        tops=[f"{name}/{name}"], loss_weight=0.3),
    ]


def net(batch_size: int = 32, test_batch_size: int = 50, classes: int = 1000) -> NetParam:
    """GoogLeNet for ``classes`` classes, ``batch_size`` images per training step."""
    return NetParam(
        "GoogLeNet",
        imagenet_inputs(batch_size, test_batch_size, crop=224),
        _conv_relu("conv1/7x7_s2", "data", 64, 7, "conv1/relu_7x7", stride=2, pad=3),
        _max_pool("pool1/3x3_s2", "conv1/7x7_s2", stride=2),
        _lrn("pool1/norm1", "pool1/3x3_s2"),
        _conv_relu("conv2/3x3_reduce", "pool1/norm1", 64, 1, "conv2/relu_3x3_reduce"),
        _conv_relu("conv2/3x3", "conv2/3x3_reduce", 192, 3, "conv2/relu_3x3", pad=1),
        _lrn("conv2/norm2", "conv2/3x3"),
        _max_pool("pool2/3x3_s2", "conv2/norm2", stride=2),
        inception("inception_3a", "pool2/3x3_s2", n1x1=64, n3x3_reduce=96, n3x3=128,
                  n5x5_reduce=16, n5x5=32, pool_proj=32),
        inception("inception_3b", "inception_3a/output", n1x1=128, n3x3_reduce=128, n3x3=192,
                  n5x5_reduce=32, n5x5=96, pool_proj=64),
        _max_pool("pool3/3x3_s2", "inception_3b/output", stride=2),
        inception("inception_4a", "pool3/3x3_s2", n1x1=192, n3x3_reduce=96, n3x3=208,
                  n5x5_reduce=16, n5x5=48, pool_proj=64),
        auxiliary("loss1", "inception_4a/output", classes),
        inception("inception_4b", "inception_4a/output", n1x1=160, n3x3_reduce=112, n3x3=224,
                  n5x5_reduce=24, n5x5=64, pool_proj=64),
        inception("inception_4c", "inception_4b/output", n1x1=128, n3x3_reduce=128, n3x3=256,
                  n5x5_reduce=24, n5x5=64, pool_proj=64),
        inception("inception_4d", "inception_4c/output", n1x1=112, n3x3_reduce=144, n3x3=288,
                  n5x5_reduce=32, n5x5=64, pool_proj=64),
        auxiliary("loss2", "inception_4d/output", classes),
        inception("inception_4e", "inception_4d/output", n1x1=256, n3x3_reduce=160, n3x3=320,
                  n5x5_reduce=32, n5x5=128, pool_proj=128),
        _max_pool("pool4/3x3_s2", "inception_4e/output", stride=2),
        inception("inception_5a", "pool4/3x3_s2", n1x1=256, n3x3_reduce=160, n3x3=320,
                  n5x5_reduce=32, n5x5=128, pool_proj=128),
        inception("inception_5b", "inception_5a/output", n1x1=384, n3x3_reduce=192, n3x3=384,
                  n5x5_reduce=48, n5x5=128, pool_proj=128),
        PoolingLayer("pool5/7x7_s1", ["inception_5b/output"], pooling=Pooling.AVE, kernel=7,
                     stride=1),
        DropoutLayer("pool5/drop_7x7_s1", ["pool5/7x7_s1"], tops=["pool5/7x7_s1"],
                     dropout_ratio=0.4),
        _classifier("loss3/classifier", "pool5/7x7_s1", classes),
        SoftmaxWithLoss("loss3/loss3", ["loss3/classifier", "label"], loss_weight=1),
        AccuracyLayer("accuracy", ["loss3/classifier", "label"], include=Phase.TEST),
        AccuracyLayer("accuracy_top5", ["loss3/classifier", "label"], top_k=5,
                      include=Phase.TEST),
    )


def solver(batch_size: int = 32, test_batch_size: int = 50, classes: int = 1000
           ) -> SolverParam:
    """BVLC's "quick" GoogLeNet solver: SGD with a polynomial (power 0.5) decay."""
    return SolverParam(
        net(batch_size, test_batch_size, classes),
        test_iter=[1000],
        test_interval=4000,
        test_initialization=False,
        display=40,
        average_loss=40,
        base_lr=0.01,
        lr_policy=LrPolicy.poly(power=0.5),
        max_iter=2400000,
        momentum=0.9,
        weight_decay=0.0002,
        snapshot=40000,
        snapshot_prefix="googlenet_quick",
        solver_mode=SolverMode.CPU,
    )
