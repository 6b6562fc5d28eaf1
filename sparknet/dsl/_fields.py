"""The machinery under every DSL class: checked fields that know their proto field.

A DSL class is an attrs class whose fields are declared with :func:`param`. Each
such field has a *kind* that

* checks and normalizes what the user passed (``check``), raising
  :class:`NetDefinitionError` that names the owner and the field;
* writes the value into a protobuf message (``write``), and
* reads it back from one (``read``), giving ``None`` (or ``()`` for repeated
  fields) when the proto leaves the field unset.

``None`` always means "not written": Caffe's own default applies. That is what
makes ``from_proto(p).to_proto() == p`` exact: the DSL remembers which fields a
prototxt spelled out.
"""
from __future__ import annotations

import difflib
import functools
import math
import numbers
import struct
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, NoReturn, TypeVar, dataclass_transform

import attrs
from google.protobuf.message import Message as ProtoMessage

from sparknet.dsl.errors import NetDefinitionError

T = TypeVar("T")

UINT32_MAX = 2**32 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38

_KIND = "sparknet.kind"
_PROTO = "sparknet.proto"
_SCOPE = "sparknet.scope"

Fail = Callable[[str], NoReturn]


# -- kinds -----------------------------------------------------------------------------

class Kind:
    """How one field is checked, written to a proto message and read back."""

    empty: Any = None  # the value meaning "not set"

    def check(self, value: Any, fail: Fail) -> Any:
        raise NotImplementedError

    def write(self, msg: ProtoMessage, name: str, value: Any) -> None:
        setattr(msg, name, value)

    def read(self, msg: ProtoMessage, name: str) -> Any:
        return getattr(msg, name) if msg.HasField(name) else None


def shortest_float32(value: float) -> float:
    """The shortest decimal that is the same float32 as ``value``.

    Caffe's proto floats are float32: reading ``0.01`` back gives
    0.009999999776482582. The DSL shows (and compares) the 0.01 that was
    written; both are the same float32, so the proto is unchanged.
    """
    if not math.isfinite(value):
        return value
    target = struct.pack("<f", value)
    value = struct.unpack("<f", target)[0]  # decide from the float32 itself: idempotent
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == target:
            return candidate
    return value  # pragma: no cover - 9 digits always round-trip a float32


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@attrs.frozen
class Int(Kind):
    """An integer in ``[lo, hi]``; ``what`` says so in errors."""
    lo: int = INT32_MIN
    hi: int = INT32_MAX
    what: str = "an integer"

    def check(self, value: Any, fail: Fail) -> int:
        if not _is_int(value):
            fail(f"must be {self.what}, got {value!r}")
        if not self.lo <= value <= self.hi:
            fail(f"must be {self.what}, got {value}")
        return int(value)


POSITIVE = Int(1, UINT32_MAX, "a positive integer")
NON_NEGATIVE = Int(0, UINT32_MAX, "a non-negative integer")
INT32 = Int()
INT64 = Int(-(2**63), 2**63 - 1)


@attrs.frozen
class Float(Kind):
    """A finite number, optionally bounded, stored as the float32 Caffe keeps.

    ``0.1`` stays ``0.1``; a value with more digits than a float32 holds is
    rounded to it, so a value read back from the proto equals the one given.
    """
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: Any, fail: Fail) -> float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            fail(f"must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            fail(f"must be a finite float32, got {value}")
        value = shortest_float32(value)  # what Caffe will hold
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high:
            fail(f"must be {self.describe()}, got {value:g}")
        return value

    def read(self, msg: ProtoMessage, name: str) -> float | None:
        return shortest_float32(getattr(msg, name)) if msg.HasField(name) else None

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return (f"in {'(' if self.lo_open else '['}{self.lo:g}, "
                    f"{self.hi:g}{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


REAL = Float()
POSITIVE_REAL = Float(lo=0.0, lo_open=True)
NON_NEGATIVE_REAL = Float(lo=0.0)


class Bool(Kind):
    def check(self, value: Any, fail: Fail) -> bool:
        if not isinstance(value, bool):
            fail(f"must be True or False, got {value!r}")
        return value


BOOL = Bool()


@attrs.frozen
class Str(Kind):
    """A string; non-empty unless ``allow_empty``."""
    allow_empty: bool = False

    def check(self, value: Any, fail: Fail) -> str:
        if not isinstance(value, str):
            fail(f"must be a string, got {value!r}")
        if not value and not self.allow_empty:
            fail("must not be empty")
        return value


STR = Str()
ANY_STR = Str(allow_empty=True)


@attrs.frozen
class EnumKind(Kind):
    """A member of a DSL enum; its name (or value) as a string is accepted too."""
    enum: type[Enum]

    def check(self, value: Any, fail: Fail) -> Enum:
        if isinstance(value, self.enum):
            return value
        if isinstance(value, str):
            for member in self.enum:
                if value in (member.name, member.value) or value.upper() == member.name:
                    return member
        choices = ", ".join(f"{self.enum.__name__}.{m.name}" for m in self.enum)
        fail(f"must be one of {choices}, got {value!r}")

    def write(self, msg: ProtoMessage, name: str, value: Enum) -> None:
        enum_type = msg.DESCRIPTOR.fields_by_name[name].enum_type
        setattr(msg, name, enum_type.values_by_name[value.name].number)

    def read(self, msg: ProtoMessage, name: str) -> Enum | None:
        if not msg.HasField(name):
            return None
        enum_type = msg.DESCRIPTOR.fields_by_name[name].enum_type
        return self.enum[enum_type.values_by_number[getattr(msg, name)].name]


@attrs.frozen
class Message(Kind):
    """A nested DSL value object (a ``Filler``, ``TransformParam`` ...).

    ``coerce`` may turn a shorthand (say the string ``"xavier"``) into one.
    """
    cls: type
    coerce: Callable[[Any], Any] | None = None

    def check(self, value: Any, fail: Fail) -> Any:
        if self.coerce is not None and not isinstance(value, self.cls):
            try:
                value = self.coerce(value)
            except NetDefinitionError as e:
                fail(str(e))
        if not isinstance(value, self.cls):
            fail(f"must be a {self.cls.__name__}, got {value!r}")
        return value

    def write(self, msg: ProtoMessage, name: str, value: Any) -> None:
        self.write_into(getattr(msg, name), value)

    @staticmethod
    def write_into(sub: ProtoMessage, value: Any) -> None:
        sub.SetInParent()
        write_fields(value, sub)

    def read(self, msg: ProtoMessage, name: str) -> Any:
        return read_fields(self.cls, getattr(msg, name)) if msg.HasField(name) else None


@attrs.frozen
class Repeated(Kind):
    """A repeated proto field: a tuple of ``item``; a lone item is accepted too."""
    item: Kind
    min_len: int = 0
    empty: Any = ()

    def check(self, value: Any, fail: Fail) -> tuple:
        if _is_sequence(value):
            items = tuple(value)
        else:
            items = (value,)
        if len(items) < self.min_len:
            fail(f"needs at least {self.min_len} value(s), got {len(items)}")
        return tuple(self.item.check(v, _indexed(fail, i, len(items))) for i, v in
                     enumerate(items))

    def write(self, msg: ProtoMessage, name: str, value: tuple) -> None:
        target = getattr(msg, name)
        if isinstance(self.item, (Message, BlobShapeKind)):
            for v in value:
                self.item.write_into(target.add(), v)
        elif isinstance(self.item, EnumKind):
            enum_type = msg.DESCRIPTOR.fields_by_name[name].enum_type
            target.extend(enum_type.values_by_name[v.name].number for v in value)
        else:
            target.extend(value)

    def read(self, msg: ProtoMessage, name: str) -> tuple:
        items = getattr(msg, name)
        if isinstance(self.item, Message):
            return tuple(read_fields(self.item.cls, v) for v in items)
        if isinstance(self.item, BlobShapeKind):
            return tuple(tuple(v.dim) for v in items)
        if isinstance(self.item, EnumKind):
            enum_type = msg.DESCRIPTOR.fields_by_name[name].enum_type
            return tuple(self.item.enum[enum_type.values_by_number[v].name] for v in items)
        if isinstance(self.item, Float):
            return tuple(shortest_float32(v) for v in items)
        return tuple(items)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _indexed(fail: Fail, i: int, n: int) -> Fail:
    if n == 1:
        return fail

    def fail_at(message: str) -> NoReturn:
        fail(f"[{i}] {message}")
    return fail_at


@attrs.frozen
class BlobShapeKind(Kind):
    """A Caffe ``BlobShape``: a tuple of dims, each at least ``min_dim``."""
    min_dim: int = 1

    def check(self, value: Any, fail: Fail) -> tuple[int, ...]:
        if not _is_sequence(value) or not all(_is_int(d) for d in value):
            fail(f"must be a shape (a tuple of integers), got {value!r}")
        low = [d for d in value if d < self.min_dim]
        if low:
            allowed = {1: "positive", 0: "non-negative", -1: ">= -1"}[self.min_dim]
            fail(f"dimensions must be {allowed}, got {tuple(value)}")
        return tuple(int(d) for d in value)

    def write(self, msg: ProtoMessage, name: str, value: tuple[int, ...]) -> None:
        self.write_into(getattr(msg, name), value)

    @staticmethod
    def write_into(sub: ProtoMessage, value: tuple[int, ...]) -> None:
        sub.SetInParent()
        sub.dim.extend(value)

    def read(self, msg: ProtoMessage, name: str) -> tuple[int, ...] | None:
        return tuple(getattr(msg, name).dim) if msg.HasField(name) else None


@attrs.frozen
class Spatial(Kind):
    """Kernel, stride, pad or dilation: one value for every axis, or one per axis.

    What you write is what Caffe gets: an int ``k`` becomes ``kernel_size: k``;
    an ``(h, w)`` pair becomes ``kernel_h: h  kernel_w: w``; any other tuple
    (N-d convolution) becomes repeated ``kernel_size`` values. ``repeated``
    says whether the proto's single field is repeated (Convolution) or not
    (Pooling, which is 2-D only). ``h``/``w`` may be absent (``dilation``).
    """
    single: str
    h: str | None
    w: str | None
    repeated: bool
    lo: int = 1

    def check(self, value: Any, fail: Fail) -> int | tuple[int, ...]:
        what = "a positive integer" if self.lo == 1 else "a non-negative integer"
        if _is_sequence(value):
            if not value or not all(_is_int(v) and v >= self.lo for v in value):
                fail(f"must be {what} or a tuple of them, got {value!r}")
            value = tuple(int(v) for v in value)
            if len(value) == 1:
                return value[0]
            if len(value) != 2 and not self.repeated:
                fail(f"must be one value or an (h, w) pair, got {value!r}")
            return value
        if not _is_int(value) or value < self.lo or value > UINT32_MAX:
            fail(f"must be {what} or a tuple of them, got {value!r}")
        return int(value)

    def write(self, msg: ProtoMessage, name: str, value: int | tuple[int, ...]) -> None:
        if isinstance(value, int):
            if self.repeated:
                getattr(msg, self.single).append(value)
            else:
                setattr(msg, self.single, value)
        elif len(value) == 2 and self.h is not None:
            setattr(msg, self.h, value[0])
            setattr(msg, self.w, value[1])
        else:
            getattr(msg, self.single).extend(value)

    def read(self, msg: ProtoMessage, name: str) -> int | tuple[int, ...] | None:
        if self.h is not None and (msg.HasField(self.h) or msg.HasField(self.w)):
            # A missing half takes the proto default, as Caffe does; writing it
            # back spells both, so such a layer round-trips as a RawLayer.
            return (getattr(msg, self.h), getattr(msg, self.w))
        if self.repeated:
            values = tuple(getattr(msg, self.single))
            if not values:
                return None
            return values[0] if len(values) == 1 else values
        return getattr(msg, self.single) if msg.HasField(self.single) else None


def per_axis(value: int | tuple[int, ...] | None, axes: int, default: int) -> list[int] | None:
    """Caffe's expansion of a spatial field to ``axes`` values (None: wrong count)."""
    if value is None:
        return [default] * axes
    if isinstance(value, int):
        return [value] * axes
    return list(value) if len(value) == axes else None


# -- fields and classes -----------------------------------------------------------------

def param(kind: Kind, *, proto: str | None = None, default: Any = None,
          required: bool = False, scope: str = "param", kw_only: bool = True) -> Any:
    """Declare a checked field of a DSL class, written to proto field ``proto``.

    ``proto`` defaults to the attribute's own name. ``scope`` says which message
    of a layer the field lives in: ``"param"`` (the layer type's ``*_param``
    message) or ``"layer"`` (the ``LayerParameter`` itself). Fields are
    keyword-only unless ``kw_only=False``.
    """
    if default is None and kind.empty is not None:
        default = kind.empty
    return attrs.field(
        default=attrs.NOTHING if required else default,
        kw_only=kw_only,
        converter=attrs.Converter(_converter(kind), takes_self=True, takes_field=True),
        metadata={_KIND: kind, _PROTO: proto, _SCOPE: scope},
    )


def _converter(kind: Kind) -> Callable[[Any, Any, attrs.Attribute], Any]:
    def convert(value: Any, owner: Any, field: attrs.Attribute) -> Any:
        if value is None or (kind.empty == () and value == ()):
            return kind.empty
        return kind.check(value, lambda message: fail(owner, field.alias, message))
    return convert


def owner_context(owner: Any) -> tuple[str, str | None]:
    """How an error names a DSL object: ``("layer 'conv1' (Convolution)", "conv1")``."""
    describe = getattr(owner, "_describe", None)
    if describe is not None:
        return describe()
    return type(owner).__name__, None


def fail(owner: Any, field: str | None, message: str) -> NoReturn:
    """Raise a :class:`NetDefinitionError` naming ``owner`` and ``field``."""
    where, layer = owner_context(owner)
    prefix = f"{where}, field '{field}'" if field else where
    raise NetDefinitionError(f"{prefix}: {message}", layer=layer, field=field)


def kind_of(field: attrs.Attribute) -> Kind | None:
    return field.metadata.get(_KIND)


def proto_name(field: attrs.Attribute) -> str:
    return field.metadata.get(_PROTO) or field.name


def fields_in(cls: type, scope: str) -> list[attrs.Attribute]:
    """The proto-backed fields of ``cls`` living in ``scope``."""
    return [f for f in attrs.fields(cls) if kind_of(f) is not None
            and f.metadata.get(_SCOPE) == scope]


def write_fields(obj: Any, msg: ProtoMessage, scope: str = "param") -> None:
    """Write every set field of ``obj`` in ``scope`` into ``msg``."""
    for f in fields_in(type(obj), scope):
        value = getattr(obj, f.name)
        if value is None or value == ():
            continue
        kind_of(f).write(msg, proto_name(f), value)


def read_values(cls: type, msg: ProtoMessage, scope: str = "param") -> dict[str, Any]:
    """Keyword arguments for ``cls`` from the fields of ``msg`` in ``scope``."""
    values = {}
    for f in fields_in(cls, scope):
        value = kind_of(f).read(msg, proto_name(f))
        if value is not None and value != ():
            values[f.alias] = value
    return values


def read_fields(cls: type[T], msg: ProtoMessage) -> T:
    """An instance of the value class ``cls`` from its proto message."""
    return cls(**read_values(cls, msg))


@dataclass_transform(frozen_default=True, field_specifiers=(attrs.field, param))
def dsl_class(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen attrs class whose constructor rejects unknown keywords.

    attrs would raise ``TypeError`` for a misspelled keyword; the DSL raises
    :class:`NetDefinitionError` instead, naming the object and suggesting the
    field that was probably meant.
    """
    cls = attrs.frozen(cls, repr=False)
    _guard_init(cls)
    if cls.__repr__ is object.__repr__:
        cls.__repr__ = _compact_repr
    return cls


def _compact_repr(self: Any) -> str:
    """Like attrs' repr, but only the fields that differ from their default."""
    parts, keywords = [], False
    for f in attrs.fields(type(self)):
        if not f.repr:
            continue
        value = getattr(self, f.name)
        unset = value is None or value == () or value == f.default
        if unset:
            keywords = keywords or not f.kw_only
            continue
        if f.kw_only or keywords:
            parts.append(f"{f.alias}={_fmt(value)}")
        else:
            parts.append(_fmt(value))
    return f"{type(self).__name__}({', '.join(parts)})"


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 1 for 1.0: the DSL takes either
    if isinstance(value, Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, tuple):
        inner = ", ".join(_fmt(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _guard_init(cls: type) -> None:
    init = cls.__init__
    fields = [f for f in attrs.fields(cls) if f.init]
    names = [f.alias for f in fields]
    positional = [f.alias for f in fields if not f.kw_only]
    required = [f.alias for f in fields if f.default is attrs.NOTHING]

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(positional) or any(k in kwargs for k in positional[:len(args)]) \
                or any(k not in names for k in kwargs) \
                or any(k not in kwargs and k not in positional[:len(args)] for k in required):
            _explain_call(cls, self, args, kwargs, names, positional, required)
        init(self, *args, **kwargs)

    cls.__init__ = __init__


def _explain_call(cls: type, obj: Any, args: tuple, kwargs: dict, names: list[str],
                  positional: list[str], required: list[str]) -> NoReturn:
    # Name the object as well as possible before it exists.
    if "name" in positional and positional.index("name") < len(args):
        kwargs = {**kwargs, "name": args[positional.index("name")]}
    sketch = _Sketch(cls, kwargs.get("name"))
    for key in kwargs:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = (f"did you mean '{close[0]}'?" if close else
                    f"its fields are {', '.join(names)}")
            fail(sketch, key, f"{cls.__name__} has no such field; {hint}")
    if len(args) > len(positional):
        fail(sketch, None, f"{cls.__name__} takes {len(positional)} positional argument(s) "
             f"({', '.join(positional) or 'none'}), got {len(args)}; "
             "give the other fields by keyword")
    for key in positional[:len(args)]:
        if key in kwargs and key != "name":
            fail(sketch, key, "given both by position and by keyword")
    for key in required:
        if key not in kwargs and key not in positional[:len(args)]:
            fail(sketch, key, "is required")
    raise AssertionError("unreachable")  # pragma: no cover


@attrs.define
class _Sketch:
    """Stands in for an object that could not be built, to name it in errors."""
    cls: type
    name: Any

    def _describe(self) -> tuple[str, str | None]:
        describe = getattr(self.cls, "_describe_as", None)
        if describe is not None and isinstance(self.name, str):
            return describe(self.name)
        return self.cls.__name__, None

