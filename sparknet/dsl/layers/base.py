"""What every layer shares: naming, wiring, phase rules, proto conversion, shapes."""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar, dataclass_transform

import attrs
from google.protobuf import text_format

from sparknet._util import shape_str
from sparknet.dsl._fields import (
    BOOL,
    REAL,
    STR,
    Message,
    Repeated,
    _fmt,
    dsl_class,
    fail,
    param,
    read_values,
    write_fields,
)
from sparknet.dsl.enums import Phase
from sparknet.dsl.errors import NetDefinitionError
from sparknet.dsl.params import NetStateRule, ParamSpec, _phase_rule, rules_keep
from sparknet.proto import caffe_pb2

__all__ = ["CAFFE_LAYER_TYPES", "Layer", "RawLayer", "Shape", "layer_class_for"]

#: A blob's shape, as Caffe reports it: ``()`` for a scalar (a loss).
Shape = tuple[int, ...]

#: Every layer type the Caffe sparknet builds (brocolli-caffe 9.0.2) registers.
CAFFE_LAYER_TYPES = frozenset(["AbsVal", "Accuracy", "AnnotatedData", "ArgMax", "BNLL", "BatchNorm", "BatchNormKyle", "BatchReindex", "Bias", "BilinearInterpolate", "Concat", "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "DetectionEvaluate", "DetectionOutput", "Dropout", "DummyData", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HardSigmoid", "HardSwish", "HingeLoss", "Im2col", "ImageData", "Inception", "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MaxUnPool", "MemoryData", "MultiBoxLoss", "MultinomialLogisticLoss", "Normalize", "PReLU", "PSROIPooling", "Pad", "Parameter", "Permute", "PixelShuffle", "Pooling", "Power", "PriorBox", "Proposal", "Python", "RNN", "ReLU", "ReLU6", "Reduction", "Reshape", "Resize", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "SmoothL1Loss", "Softmax", "SoftmaxWithLoss", "Split", "TanH", "Threshold", "Tile", "Unsqueeze", "Upsample", "VideoData", "WindowData"])

#: Types the DSL has no class for whose tops have their bottom's shape.
_SHAPE_PRESERVING = frozenset(
    {"ReLU6", "HardSigmoid", "HardSwish", "Normalize", "BatchNormKyle"})

_REGISTRY: dict[str, type[Layer]] = {}

L = TypeVar("L", bound="Layer")


@dsl_class
class Layer:
    """A Caffe layer: a name, the blobs it reads (bottoms) and writes (tops).

    Not used directly: each Caffe layer type is a subclass (``ConvolutionLayer``,
    ``PoolingLayer`` ...) that adds that type's parameters as checked, typed
    fields. The name and the bottoms are positional; everything else is a
    keyword::

        ConvolutionLayer("conv1", ["data"], num_output=20, kernel=5)

    Attributes:
        name: the layer's name (unique within a phase; it keys the weights).
        bottoms: the blobs the layer reads; one name may be given as a string.
        tops: the blobs it writes; by default one blob named like the layer.
            Give the bottom's name for an in-place layer: ``tops=["ip1"]``.
        params: one ``ParamSpec`` per parameter blob (learning-rate and decay
            multipliers, sharing by name).
        loss_weight: the weight of each top in the loss.
        propagate_down: per bottom, whether to backpropagate into it.
        include: rules under which the layer is part of the net, e.g.
            ``include=Phase.TEST``; ``exclude``: rules under which it is not.
            A layer has one kind or the other, as in Caffe.
    """

    name: str = param(STR, scope="layer", kw_only=False, required=True)
    bottoms: tuple[str, ...] = param(Repeated(STR), proto="bottom", scope="layer",
                                     kw_only=False)
    tops: tuple[str, ...] = param(Repeated(STR), proto="top", scope="layer")
    params: tuple[ParamSpec, ...] = param(Repeated(Message(ParamSpec)), proto="param",
                                          scope="layer")
    loss_weight: tuple[float, ...] = param(Repeated(REAL), scope="layer")
    propagate_down: tuple[bool, ...] = param(Repeated(BOOL), scope="layer")
    include: tuple[NetStateRule, ...] = param(
        Repeated(Message(NetStateRule, coerce=_phase_rule)), scope="layer")
    exclude: tuple[NetStateRule, ...] = param(
        Repeated(Message(NetStateRule, coerce=_phase_rule)), scope="layer")

    #: Caffe's type string, e.g. ``"Convolution"``.
    type: ClassVar[str] = ""
    #: The ``LayerParameter`` field holding this type's parameters.
    param_message: ClassVar[str | None] = None
    #: (min, max) number of bottoms and of tops; ``None``: no maximum.
    bottom_count: ClassVar[tuple[int, int | None]] = (1, 1)
    top_count: ClassVar[tuple[int, int | None]] = (1, 1)
    #: Whether a top may be the bottom it replaces (``ReLU``, ``Dropout`` ...).
    in_place: ClassVar[bool] = False

    # -- construction checks ---------------------------------------------------------
    def __attrs_post_init__(self) -> None:
        if type(self) is Layer:
            raise TypeError("Layer is abstract: use a layer class such as ConvolutionLayer")
        if not self.tops and self.top_count[0] > 0:
            object.__setattr__(self, "tops", (self.name,))
        self._check_counts()
        self._check_wiring()
        if self.include and self.exclude:
            self._fail("exclude", "give include rules or exclude rules, not both (as Caffe)")
        self._check()

    def _check_counts(self) -> None:
        for field, (lo, hi), n in (("bottoms", self.bottom_count, len(self.bottoms)),
                                   ("tops", self.top_count, len(self.tops))):
            if n < lo or (hi is not None and n > hi):
                self._fail(field, f"{self.type} takes {_count_text(lo, hi)} {field[:-1]}"
                           f"{'' if (lo, hi) == (1, 1) else 's'}, got {n} "
                           f"({', '.join(getattr(self, field)) or 'none'})")
        if self.loss_weight and len(self.loss_weight) != len(self.tops):
            self._fail("loss_weight", f"needs one weight per top ({len(self.tops)}), "
                       f"got {len(self.loss_weight)}")
        if self.propagate_down and len(self.propagate_down) != len(self.bottoms):
            self._fail("propagate_down", f"needs one value per bottom "
                       f"({len(self.bottoms)}), got {len(self.propagate_down)}")

    def _check_wiring(self) -> None:
        if len(set(self.tops)) != len(self.tops):
            self._fail("tops", f"names a blob twice: {', '.join(self.tops)}")
        for i, top in enumerate(self.tops):
            if top not in self.bottoms:
                continue
            if not self.in_place:
                self._fail("tops", f"{self.type} cannot compute in place: top '{top}' "
                           "is also a bottom")
            if i >= len(self.bottoms) or self.bottoms[i] != top:
                self._fail("tops", f"an in-place top must replace the bottom at the same "
                           f"position; '{top}' is not bottom {i}")

    def _check(self) -> None:
        """Type-specific checks of the fields (override)."""

    # -- naming in errors ------------------------------------------------------------
    def _describe(self) -> tuple[str, str | None]:
        try:
            name = object.__getattribute__(self, "name")
        except AttributeError:
            return f"{type(self).__name__}", None
        return self._describe_as(name)

    @classmethod
    def _describe_as(cls, name: str) -> tuple[str, str | None]:
        return f"layer '{name}' ({cls.type or cls.__name__})", name

    def _fail(self, field: str | None, message: str) -> NoReturn:
        fail(self, field, message)

    def __repr__(self) -> str:
        parts = [repr(self.name)]
        if self.bottoms:
            parts.append(repr(list(self.bottoms)))
        if self.tops != (self.name,) or not self.top_count[0]:  # not the default tops
            parts.append(f"tops={list(self.tops)!r}")
        common = {"name", "bottoms", "tops"}
        for f in attrs.fields(type(self)):
            value = getattr(self, f.name)
            if f.name in common or not f.repr or value is None or value == ():
                continue
            if f.name in ("include", "exclude") and len(value) == 1 \
                    and value[0] == NetStateRule(value[0].phase):
                value = value[0].phase  # the shorthand: include=Phase.TEST
            parts.append(f"{f.alias}={_fmt(value)}")
        return f"{type(self).__name__}({', '.join(parts)})"

    # -- phases ------------------------------------------------------------------------
    def active_in(self, phase: Phase | str, level: int = 0,
                  stages: Sequence[str] = ()) -> bool:
        """Whether Caffe keeps this layer in a net of ``phase`` (its ``FilterNet``)."""
        return rules_keep(self.include, self.exclude, Phase(phase), level, tuple(stages))

    # -- protobuf ----------------------------------------------------------------------
    def to_proto(self) -> caffe_pb2.LayerParameter:
        """This layer as a ``caffe_pb2.LayerParameter``."""
        lp = caffe_pb2.LayerParameter()
        write_fields(self, lp, "layer")
        lp.type = self.type
        if self.param_message:
            write_fields(self, getattr(lp, self.param_message), "param")
        return lp

    @staticmethod
    def from_proto(lp: caffe_pb2.LayerParameter) -> Layer:
        """The DSL layer for ``lp``, such that ``.to_proto() == lp`` exactly.

        Typed when the DSL has a class for ``lp.type`` and that class spells
        every field ``lp`` sets; otherwise a :class:`RawLayer` keeping ``lp``.
        """
        cls = _REGISTRY.get(lp.type)
        if cls is not None:
            layer = cls._from_proto(lp)
            if layer.to_proto() == lp:
                return layer
        return RawLayer.wrap(lp)

    @classmethod
    def _from_proto(cls: type[L], lp: caffe_pb2.LayerParameter) -> L:
        """Read this class's fields from ``lp`` (fields it does not model are lost)."""
        values = read_values(cls, lp, "layer")
        if cls.param_message:
            values.update(read_values(cls, getattr(lp, cls.param_message), "param"))
        return cls(**values)

    # -- shapes ------------------------------------------------------------------------
    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        """The tops' shapes from the bottoms', by Caffe's arithmetic.

        Raises :class:`NetDefinitionError` where Caffe would fail a ``CHECK``.
        ``None`` marks a shape only the data can tell (a ``DataLayer``'s images).
        """
        raise NotImplementedError(f"{type(self).__name__} does not infer shapes")

    def _axis(self, axis: int, shape: Shape, field: str = "axis") -> int:
        """Caffe's ``CanonicalAxisIndex``: ``axis`` of ``shape``, negatives from the end."""
        n = len(shape)
        if not -n <= axis < n:
            self._fail(field, f"axis {axis} is out of range for the {n}-axis "
                       f"bottom {_shape_text(shape)}")
        return axis % n if n else 0


def _count_text(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"at least {lo}"
    if lo == hi:
        return str(lo)
    return f"{lo} or {hi}" if hi == lo + 1 else f"{lo} to {hi}"


def _shape_text(shape: Shape | None) -> str:
    return "(unknown)" if shape is None else shape_str(shape)


def count(shape: Shape, start: int = 0, end: int | None = None) -> int:
    """Caffe's ``Blob::count(start, end)``: the product of those dimensions."""
    return math.prod(shape[start:end])


@dataclass_transform(frozen_default=True, field_specifiers=(attrs.field, param))
def layer(type: str, *, param: str | None = None, bottoms: tuple[int, int | None] = (1, 1),
          tops: tuple[int, int | None] = (1, 1), in_place: bool = False,
          register: bool = True) -> Callable[[type[L]], type[L]]:
    """Declare a layer class for Caffe layer ``type`` (a class decorator).

    ``param`` is the ``LayerParameter`` field holding the type's parameters;
    ``bottoms`` and ``tops`` bound how many blobs it takes; ``in_place`` says
    whether a top may overwrite its bottom.
    """
    def decorate(cls: type[L]) -> type[L]:
        if type:  # RawLayer declares ``type`` as a field instead
            cls.type = type
        cls.param_message = param
        cls.bottom_count = bottoms
        cls.top_count = tops
        cls.in_place = in_place
        cls = dsl_class(cls)
        if register:
            _REGISTRY[type] = cls
        return cls
    return decorate


def layer_class_for(type: str) -> type[Layer] | None:
    """The DSL class for Caffe layer type ``type``, if there is one."""
    return _REGISTRY.get(type)


# -- the escape hatch -----------------------------------------------------------------

_COMMON = ("name", "type", "bottom", "top", "param", "loss_weight", "propagate_down",
           "include", "exclude")


@layer("", bottoms=(0, None), tops=(0, None), in_place=True, register=False)
class RawLayer(Layer):
    """A layer the DSL keeps as Caffe wrote it: any type, any parameters.

    ``from_proto`` gives one for layer types the DSL has no class for, and for
    layers that spell a field in a way the typed class would not write back
    identically; nothing of the prototxt is lost. Build one by hand for a layer
    type of this Caffe that the DSL does not model::

        RawLayer("norm", ["conv4_3"], tops=["norm"], type="Normalize",
                 proto=caffe_pb2.LayerParameter(norm_param={"across_spatial": False}))

    Unlike typed layers, a ``RawLayer`` has no default tops: give them.
    Shapes are inferred where the type is known to the DSL or keeps its
    bottom's shape; otherwise the tops' shapes are unknown (``None``).

    Attributes:
        type: the Caffe layer type; it must be one this Caffe build has.
        proto: every other ``LayerParameter`` field (the ``*_param`` message,
            ``transform_param``, pretrained ``blobs`` ...). The fields above
            (name, bottoms, tops, params ...) are given as fields, not here.
    """

    type: str = param(STR, required=True)  # type: ignore[assignment]
    proto: caffe_pb2.LayerParameter = attrs.field(
        factory=caffe_pb2.LayerParameter, kw_only=True, hash=False, repr=False)

    def _check(self) -> None:
        if self.type not in CAFFE_LAYER_TYPES:
            close = difflib.get_close_matches(self.type, CAFFE_LAYER_TYPES, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            self._fail("type", f"this Caffe (brocolli-caffe 9.0.2) has no layer type "
                       f"'{self.type}'{hint}")
        if not isinstance(self.proto, caffe_pb2.LayerParameter):
            self._fail("proto", f"must be a caffe_pb2.LayerParameter, "
                       f"got {type(self.proto).__name__}")
        given = [f for f in _COMMON if _has(self.proto, f)]
        if given:
            self._fail("proto", f"sets {', '.join(given)}: give those as the layer's "
                       "own fields")

    def _describe(self) -> tuple[str, str | None]:
        try:
            name = object.__getattribute__(self, "name")
            kind = object.__getattribute__(self, "type")
        except AttributeError:
            return "RawLayer", None
        return f"layer '{name}' ({kind})", name

    @classmethod
    def _describe_as(cls, name: str) -> tuple[str, str | None]:
        return f"layer '{name}' (RawLayer)", name

    def __repr__(self) -> str:
        text = super().__repr__()
        if self.proto.ListFields():
            rest = text_format.MessageToString(self.proto, as_one_line=True)
            text = (f"{text[:-1]}, proto=text_format.Parse({rest!r}, "
                    "caffe_pb2.LayerParameter()))")
        return text

    def to_proto(self) -> caffe_pb2.LayerParameter:
        lp = caffe_pb2.LayerParameter()
        lp.CopyFrom(self.proto)
        write_fields(self, lp, "layer")
        lp.type = self.type
        return lp

    @classmethod
    def wrap(cls, lp: caffe_pb2.LayerParameter) -> RawLayer:
        """A ``RawLayer`` holding ``lp`` as it is."""
        rest = caffe_pb2.LayerParameter()
        rest.CopyFrom(lp)
        for f in _COMMON:
            rest.ClearField(f)
        return cls(**read_values(cls, lp, "layer"), type=lp.type, proto=rest)

    def typed(self) -> Layer | None:
        """The typed layer with the same meaning, if the DSL has a class for it."""
        cls = _REGISTRY.get(self.type)
        if cls is None:
            return None
        try:
            return cls._from_proto(self.to_proto())
        except NetDefinitionError:
            return None

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        typed = self.typed()
        if typed is not None:
            return typed.infer(bottoms)
        if self.type in _SHAPE_PRESERVING and bottoms:
            return (bottoms[0],) * len(self.tops)
        return (None,) * len(self.tops)


def _has(msg: Any, field: str) -> bool:
    descriptor = msg.DESCRIPTOR.fields_by_name[field]
    # protobuf >= 6.31 deprecates `label` for `is_repeated`; older runtimes have only `label`
    repeated = getattr(descriptor, "is_repeated", None)
    if repeated is None:
        repeated = descriptor.label == descriptor.LABEL_REPEATED
    if repeated:
        return len(getattr(msg, field)) > 0
    return msg.HasField(field)
