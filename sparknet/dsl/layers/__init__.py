"""Every layer class of the DSL, grouped as Caffe groups them."""
from sparknet.dsl.layers.base import CAFFE_LAYER_TYPES, Layer, RawLayer, Shape, layer_class_for
from sparknet.dsl.layers.common import (
    ArgMaxLayer,
    BatchNormLayer,
    BiasLayer,
    ConcatLayer,
    EltwiseLayer,
    EmbedLayer,
    FlattenLayer,
    InnerProductLayer,
    MVNLayer,
    ReductionLayer,
    ReshapeLayer,
    ScaleLayer,
    SilenceLayer,
    SliceLayer,
    SoftmaxLayer,
    SplitLayer,
    TileLayer,
)
from sparknet.dsl.layers.data import (
    DataLayer,
    DummyDataLayer,
    HDF5DataLayer,
    ImageDataLayer,
    InputLayer,
    MemoryDataLayer,
    RDDLayer,
)
from sparknet.dsl.layers.loss import (
    AccuracyLayer,
    ContrastiveLoss,
    EuclideanLoss,
    HingeLoss,
    SigmoidCrossEntropyLoss,
    SoftmaxWithLoss,
)
from sparknet.dsl.layers.neuron import (
    AbsValLayer,
    BNLLLayer,
    DropoutLayer,
    ELULayer,
    ExpLayer,
    LogLayer,
    PowerLayer,
    PReLULayer,
    ReLULayer,
    SigmoidLayer,
    TanHLayer,
    ThresholdLayer,
)
from sparknet.dsl.layers.vision import (
    ConvolutionLayer,
    CropLayer,
    DeconvolutionLayer,
    LRNLayer,
    PoolingLayer,
)

__all__ = [
    "CAFFE_LAYER_TYPES", "AbsValLayer", "AccuracyLayer", "ArgMaxLayer", "BNLLLayer",
    "BatchNormLayer", "BiasLayer", "ConcatLayer", "ContrastiveLoss", "ConvolutionLayer",
    "CropLayer", "DataLayer", "DeconvolutionLayer", "DropoutLayer", "DummyDataLayer",
    "ELULayer", "EltwiseLayer", "EmbedLayer", "EuclideanLoss", "ExpLayer", "FlattenLayer",
    "HDF5DataLayer", "HingeLoss", "ImageDataLayer", "InnerProductLayer", "InputLayer",
    "LRNLayer", "Layer", "LogLayer", "MVNLayer", "MemoryDataLayer", "PReLULayer",
    "PoolingLayer", "PowerLayer", "RDDLayer", "RawLayer", "ReLULayer", "ReductionLayer",
    "ReshapeLayer", "ScaleLayer", "Shape", "SigmoidCrossEntropyLoss", "SigmoidLayer",
    "SilenceLayer", "SliceLayer", "SoftmaxLayer", "SoftmaxWithLoss", "SplitLayer", "TanHLayer",
    "ThresholdLayer", "TileLayer", "layer_class_for",
]
