"""Caffe's enumerations as Python enums.

Each member's *name* is the name of Caffe's enum value, so a member converts to
and from ``caffe_pb2`` by name; wherever the DSL takes an enum it also accepts
that name as a string (``pooling="AVE"``). The enums are ``StrEnum``\\ s:
``Phase.TRAIN == "TRAIN"``.
"""
from __future__ import annotations

from enum import StrEnum

__all__ = [
    "Backend", "EltwiseOp", "Engine", "HingeNorm", "LossNormalization", "NormRegion",
    "Phase", "Pooling", "ReductionOp", "Regularization", "ShareMode", "SnapshotFormat",
    "SolverMode", "SolverType", "VarianceNorm",
]


class Phase(StrEnum):
    """The net a layer belongs to: the training net or the test net."""
    TRAIN = "TRAIN"
    TEST = "TEST"


class Pooling(StrEnum):
    """How a ``PoolingLayer`` reduces each window."""
    MAX = "MAX"
    AVE = "AVE"
    STOCHASTIC = "STOCHASTIC"


class EltwiseOp(StrEnum):
    """The element-wise operation of an ``EltwiseLayer``."""
    PROD = "PROD"
    SUM = "SUM"
    MAX = "MAX"


class NormRegion(StrEnum):
    """Where an ``LRNLayer`` normalizes: across channels or within one channel."""
    ACROSS_CHANNELS = "ACROSS_CHANNELS"
    WITHIN_CHANNEL = "WITHIN_CHANNEL"


class Engine(StrEnum):
    """Which implementation Caffe uses for a layer (``CUDNN`` needs a cuDNN build)."""
    DEFAULT = "DEFAULT"
    CAFFE = "CAFFE"
    CUDNN = "CUDNN"


class VarianceNorm(StrEnum):
    """The fan a ``xavier`` or ``msra`` filler scales by."""
    FAN_IN = "FAN_IN"
    FAN_OUT = "FAN_OUT"
    AVERAGE = "AVERAGE"


class Backend(StrEnum):
    """The database a ``DataLayer`` reads (Caffe's default is ``LEVELDB``)."""
    LEVELDB = "LEVELDB"
    LMDB = "LMDB"


class HingeNorm(StrEnum):
    """The norm of a ``HingeLoss``."""
    L1 = "L1"
    L2 = "L2"


class LossNormalization(StrEnum):
    """What a loss is divided by (``LossParam.normalization``)."""
    FULL = "FULL"
    VALID = "VALID"
    BATCH_SIZE = "BATCH_SIZE"
    NONE = "NONE"


class ReductionOp(StrEnum):
    """The operation of a ``ReductionLayer``."""
    SUM = "SUM"
    ASUM = "ASUM"
    SUMSQ = "SUMSQ"
    MEAN = "MEAN"


class ShareMode(StrEnum):
    """How strictly shared parameters must agree in shape (``ParamSpec.share_mode``)."""
    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"


class SolverType(StrEnum):
    """Caffe's solvers; each value is the solver's Caffe ``type`` string."""
    SGD = "SGD"
    NESTEROV = "Nesterov"
    ADAGRAD = "AdaGrad"
    RMSPROP = "RMSProp"
    ADADELTA = "AdaDelta"
    ADAM = "Adam"


class SolverMode(StrEnum):
    """Where a stand-alone Caffe runs the solver (sparknet's engine picks per call)."""
    CPU = "CPU"
    GPU = "GPU"


class SnapshotFormat(StrEnum):
    """The file format of Caffe's snapshots."""
    HDF5 = "HDF5"
    BINARYPROTO = "BINARYPROTO"


class Regularization(StrEnum):
    """The weight-decay norm (``SolverParam.regularization_type``)."""
    L1 = "L1"
    L2 = "L2"
