"""Element-wise layers: each top has its bottom's shape, and may replace it in place."""
from __future__ import annotations

from sparknet.dsl._fields import BOOL, REAL, EnumKind, Float, Message, param
from sparknet.dsl.enums import Engine
from sparknet.dsl.layers.base import Layer, Shape, _shape_text, layer
from sparknet.dsl.params import Filler, as_filler

__all__ = ["AbsValLayer", "BNLLLayer", "DropoutLayer", "ELULayer", "ExpLayer", "LogLayer",
           "PReLULayer", "PowerLayer", "ReLULayer", "SigmoidLayer", "TanHLayer",
           "ThresholdLayer"]


class _Neuron(Layer):
    """One bottom, one top of the same shape; in place allowed."""

    __slots__ = ()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return (bottoms[0],)


def _neuron(type: str, param: str | None = None):
    return layer(type, param=param, bottoms=(1, 1), tops=(1, 1), in_place=True)


def _base_is_e_or_positive(layer: Layer, base: float | None) -> None:
    if base is not None and base != -1 and base <= 0:
        layer._fail("base", f"must be positive, or -1 for e; got {base:g}")


@_neuron("ReLU", "relu_param")
class ReLULayer(_Neuron):
    """``max(x, 0)``, or leaky: ``x if x > 0 else negative_slope * x``.

    Attributes:
        negative_slope: the slope for negative inputs (Caffe's default: 0).
        engine: Caffe's or cuDNN's implementation.
    """

    negative_slope: float | None = param(REAL)
    engine: Engine | None = param(EnumKind(Engine))


@_neuron("PReLU", "prelu_param")
class PReLULayer(_Neuron):
    """ReLU with a learned negative slope per channel (or one shared).

    Attributes:
        filler: initialization of the slopes (Caffe's default: constant 0.25).
        channel_shared: one slope for all channels.
    """

    filler: Filler | None = param(Message(Filler, coerce=as_filler))
    channel_shared: bool | None = param(BOOL)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        if len(bottoms[0]) < 2 and not self.channel_shared:
            self._fail("bottoms", f"PReLU needs a channel axis, '{self.bottoms[0]}' is "
                       f"{_shape_text(bottoms[0])} (or set channel_shared=True)")
        return (bottoms[0],)


@_neuron("ELU", "elu_param")
class ELULayer(_Neuron):
    """``x if x > 0 else alpha * (exp(x) - 1)``.

    Attributes:
        alpha: the scale of the negative part (Caffe's default: 1).
    """

    alpha: float | None = param(REAL)


@_neuron("Sigmoid", "sigmoid_param")
class SigmoidLayer(_Neuron):
    """``1 / (1 + exp(-x))``."""

    engine: Engine | None = param(EnumKind(Engine))


@_neuron("TanH", "tanh_param")
class TanHLayer(_Neuron):
    """``tanh(x)``."""

    engine: Engine | None = param(EnumKind(Engine))


@_neuron("AbsVal")
class AbsValLayer(_Neuron):
    """``abs(x)``."""


@_neuron("BNLL")
class BNLLLayer(_Neuron):
    """The binomial normal log likelihood ``log(1 + exp(x))``."""


@_neuron("Power", "power_param")
class PowerLayer(_Neuron):
    """``(shift + scale * x) ^ power``.

    Attributes:
        power, scale, shift: Caffe's defaults are 1, 1 and 0.
    """

    power: float | None = param(REAL)
    scale: float | None = param(REAL)
    shift: float | None = param(REAL)


@_neuron("Exp", "exp_param")
class ExpLayer(_Neuron):
    """``base ^ (shift + scale * x)``.

    Attributes:
        base: positive, or -1 (Caffe's default) for e.
        scale, shift: Caffe's defaults are 1 and 0.
    """

    base: float | None = param(REAL)
    scale: float | None = param(REAL)
    shift: float | None = param(REAL)

    def _check(self) -> None:
        _base_is_e_or_positive(self, self.base)


@_neuron("Log", "log_param")
class LogLayer(_Neuron):
    """``log_base(shift + scale * x)``.

    Attributes:
        base: positive, or -1 (Caffe's default) for e.
        scale, shift: Caffe's defaults are 1 and 0.
    """

    base: float | None = param(REAL)
    scale: float | None = param(REAL)
    shift: float | None = param(REAL)

    def _check(self) -> None:
        _base_is_e_or_positive(self, self.base)


@_neuron("Dropout", "dropout_param")
class DropoutLayer(_Neuron):
    """Zero each value with probability ``dropout_ratio`` while training.

    Attributes:
        dropout_ratio: in [0, 1) (Caffe's default: 0.5).
    """

    dropout_ratio: float | None = param(Float(lo=0.0, hi=1.0, hi_open=True))


@_neuron("Threshold", "threshold_param")
class ThresholdLayer(_Neuron):
    """``1 if x > threshold else 0``.

    Attributes:
        threshold: Caffe's default is 0.
    """

    threshold: float | None = param(REAL)
