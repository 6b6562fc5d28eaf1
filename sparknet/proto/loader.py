"""Prototxt in and out: load nets and solvers, put sparknet's inputs in place of
Caffe's data layers, write prototxt back.

The functions here work on ``caffe_pb2`` messages only (this package depends on
protobuf alone); a DSL object is accepted wherever a message is, through its
``to_proto()``. :class:`ProtoLoader` gathers them under SparkNet's names, so a
SparkNet script ports line by line::

    netp = ProtoLoader.load_net_prototxt("caffe/models/caffenet/train_val.prototxt")
    netp = ProtoLoader.replace_data_layers(netp, 256, 50, 3, 227, 227)
    solver = ProtoLoader.load_solver_prototxt_with_net(
        "caffe/models/caffenet/solver.prototxt", netp, snapshot_prefix=None)
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import text_format
from google.protobuf.message import Message

from sparknet._util import UserError
from sparknet.io import atomic_file
from sparknet.proto import caffe_pb2
from sparknet.proto.rules import active_phases, net_state

__all__ = [
    "DATA_LAYER_TYPES",
    "DataLayerInfo",
    "ProtoLoader",
    "PrototxtError",
    "as_message",
    "data_layers",
    "load_net_prototxt",
    "load_solver_prototxt",
    "load_solver_prototxt_with_net",
    "net_needs_upgrade",
    "parse_net",
    "parse_solver",
    "replace_data_layers",
    "save_prototxt",
    "to_prototxt",
    "transform_params",
    "upgrade_net",
    "upgrade_solver",
]

PathLike = str | os.PathLike[str]
M = TypeVar("M", bound=Message)

#: Layer types that read data themselves; ``replace_data_layers`` replaces them.
DATA_LAYER_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData",
                              "DummyData", "AnnotatedData", "VideoData", "JavaData"})

#: Fields of later BVLC Caffe that this Caffe's schema lacks, and what to do instead.
LATE_BVLC_FIELDS = {
    "round_mode": "this Caffe spells it 'ceil_mode' (round_mode: FLOOR is ceil_mode: false; "
                  "CEIL is the default)",
    "clip_param": "this Caffe has no Clip layer",
    "swish_param": "this Caffe has no Swish layer",
    "weights": "load initial weights with CaffeNet.load_weights instead",
    "layer_wise_reduce": "it tunes multi-GPU reduction, which sparknet does not use; "
                         "remove it",
}

_SCHEMA = "brocolli-caffe 9.0.2"


class PrototxtError(UserError, ValueError):
    """A prototxt that does not parse; the message starts ``file:line:column:``.

    Attributes:
        path: the file (or ``"<prototxt>"`` for text).
        line, column: 1-based position of the error, where protobuf reports one.
        field: the unknown field's name, for an unknown field.
    """

    def __init__(self, message: str, path: str, line: int | None = None,
                 column: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path, self.line, self.column, self.field = path, line, column, field


# -- parsing ---------------------------------------------------------------------------

_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_LOCATION = re.compile(r"^(\d+)(?::(\d+))? : ")


def _parse(text: str, message: M, source: str) -> M:
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        line, column = e.GetLine(), e.GetColumn()
        detail = _LOCATION.sub("", str(e))
        where = f"{source}:{line}:{column}" if line else source
        unknown = _UNKNOWN_FIELD.search(detail)
        if unknown:
            message_type, name = unknown.groups()
            explanation = (f"field '{name}' is unknown to this Caffe's schema "
                           f"({message_type} in {_SCHEMA})")
            if name in LATE_BVLC_FIELDS:
                explanation += (f": it is a later BVLC Caffe addition; "
                                f"{LATE_BVLC_FIELDS[name]}")
            raise PrototxtError(f"{where}: {explanation}", source, line, column,
                                name) from None
        raise PrototxtError(f"{where}: {detail}", source, line, column) from None
    return message


def parse_net(text: str, source: str = "<prototxt>") -> caffe_pb2.NetParameter:
    """A ``NetParameter`` from prototxt text, as written (not upgraded)."""
    return _parse(text, caffe_pb2.NetParameter(), source)


def parse_solver(text: str, source: str = "<prototxt>") -> caffe_pb2.SolverParameter:
    """A ``SolverParameter`` from prototxt text, as written (not upgraded)."""
    return _parse(text, caffe_pb2.SolverParameter(), source)


def _read(path: PathLike) -> str:
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PrototxtError(f"{os.fspath(path)}:{line}: not prototxt text (byte {e.start} is "
                            "not UTF-8); is it a binary file, such as a .caffemodel?",
                            os.fspath(path), line) from None


def load_net_prototxt(path: PathLike, *, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Read a net prototxt (SparkNet's ``loadNetPrototxt``).

    Like Caffe reading a file, a net in the V1 format (``layers {}``) or with
    legacy ``input:`` fields is upgraded, unless ``upgrade=False``. Parse
    errors raise :class:`PrototxtError` naming the file, line and column.
    """
    net = parse_net(_read(path), os.fspath(path))
    if upgrade and net_needs_upgrade(net):
        net = upgrade_net(net, source=os.fspath(path))
    return net


def load_solver_prototxt(path: PathLike, *, upgrade: bool = True) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt as written (SparkNet's ``loadSolverPrototxt``).

    The deprecated ``solver_type`` enum is upgraded to ``type``, as Caffe does,
    unless ``upgrade=False``.
    """
    solver = parse_solver(_read(path), os.fspath(path))
    return upgrade_solver(solver, source=os.fspath(path)) if upgrade else solver


def as_message(obj: Any, message_type: type[M]) -> M:
    """``obj`` as a ``message_type`` message: the message itself, its serialized
    bytes, or anything with a ``to_proto()`` that returns one (a DSL object).

    Raises ``TypeError`` naming what was given otherwise.
    """
    if isinstance(obj, message_type):
        return obj
    name = f"caffe_pb2.{message_type.__name__}"
    if isinstance(obj, (bytes, bytearray, memoryview)):
        message = message_type()
        message.ParseFromString(bytes(obj))
        return message
    to_proto = getattr(obj, "to_proto", None)
    if callable(to_proto):
        message = to_proto()
        if isinstance(message, message_type):
            return message
        raise TypeError(f"{type(obj).__name__}.to_proto() returned {type(message).__name__}, "
                        f"not a {name}")
    raise TypeError(f"expected a {name} or an object with to_proto(), got {type(obj).__name__}")


def load_solver_prototxt_with_net(path: PathLike, net_param: Any = None,
                                  snapshot_prefix: str | None = None
                                  ) -> caffe_pb2.SolverParameter:
    """Read a solver with its one net inlined as ``net_param`` (SparkNet's
    ``loadSolverPrototxtWithNet(path, net, snapshotPrefix)``).

    ``net_param`` (a ``NetParameter`` or a DSL ``NetParam``) becomes the one
    net, holding both phases; whatever net the file names (``net``,
    ``train_net``, ``test_net`` ...) is dropped. Without it, the net the file
    names is read and inlined: the net path is tried as written (against the
    working directory, as Caffe does), then against the solver's folder and
    each folder above it, so ``net: "caffe/models/lenet/lenet_train_test.prototxt"``
    is found from anywhere in the repository. ``snapshot_prefix``, if given,
    replaces the file's.
    """
    solver = load_solver_prototxt(path)
    if net_param is not None:
        net = as_message(net_param, caffe_pb2.NetParameter)
    elif solver.HasField("net_param"):
        net = _copy(solver.net_param)
    elif solver.HasField("train_net_param"):
        net = _copy(solver.train_net_param)
    else:
        name = solver.net or solver.train_net
        if not name:
            raise ValueError(f"{os.fspath(path)}: the solver names no net "
                             "(net, train_net or net_param)")
        if solver.test_net or solver.test_net_param:
            raise ValueError(f"{os.fspath(path)}: separate train and test net files are not "
                             "supported; merge them into one net with include { phase } rules")
        net = load_net_prototxt(_find(name, Path(path)))
    for field_name in ("net", "train_net", "test_net", "train_net_param", "test_net_param"):
        solver.ClearField(field_name)
    solver.net_param.CopyFrom(net)
    if snapshot_prefix is not None:
        solver.snapshot_prefix = snapshot_prefix
    return solver


def _find(name: str, solver_path: Path) -> Path:
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    tried = [Path.cwd() / candidate]
    folder = solver_path.resolve().parent
    tried += [base / candidate for base in (folder, *folder.parents)]
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{solver_path}: net file '{name}' not found (looked in the "
                            f"working directory and in {folder} and the folders above it)")


def _copy(message: M) -> M:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


# -- writing -------------------------------------------------------------------------

def to_prototxt(message: Any) -> str:
    """Prototxt text for a message (or a DSL object with ``to_proto()``)."""
    if not isinstance(message, Message):
        message = message.to_proto()
    return text_format.MessageToString(message)


def save_prototxt(message: Any, path: PathLike, *, header: str | None = None) -> None:
    """Write a message (or DSL object) as prototxt, atomically.

    Through :func:`sparknet._util.atomic_file`: readers see the old file or
    the new one, never half of one; a failed write names ``path``. ``header``
    lines are written first, as ``#`` comments.
    """
    text = to_prototxt(message)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + text
    with atomic_file(path, "w") as out:
        out.write(text)


# -- upgrades, as Caffe applies them when it reads a file -------------------------------

def net_needs_upgrade(net: caffe_pb2.NetParameter) -> bool:
    """Whether ``net`` uses the V1 ``layers`` or the legacy ``input`` fields."""
    return bool(len(net.layers) or len(net.input))


def upgrade_net(net: caffe_pb2.NetParameter, source: str = "<net>") -> caffe_pb2.NetParameter:
    """A copy of ``net`` upgraded as Caffe's ``UpgradeNetAsNeeded`` does.

    * V1 ``layers`` (enum types, ``blobs_lr``, ``weight_decay`` ...) become
      ``layer`` entries (string types, ``param { lr_mult decay_mult }``); the
      deprecated transformation fields of V1 data layers move into
      ``transform_param``.
    * The legacy ``input`` / ``input_shape`` / ``input_dim`` fields become an
      ``Input`` layer named ``input``, first in the net.

    The V0 format (``layers { layer { ... } }``) is refused: upgrade it with
    Caffe's ``upgrade_net_proto_text`` tool first. Unlike Caffe, the three
    ``param`` entries of old BatchNorm layers are kept: this Caffe's BatchNorm
    does not mask its statistics from the solver itself.
    """
    net = _copy(net)
    if len(net.layers):
        if len(net.layer):
            raise ValueError(f"{source}: the net has both 'layer' (current) and 'layers' (V1) "
                             "entries; use one format")
        v1 = list(net.layers)
        for old in v1:
            if old.HasField("layer"):
                raise ValueError(f"{source}: layer '{old.name or old.layer.name}' is in Caffe's "
                                 "V0 format; upgrade the file with Caffe's "
                                 "upgrade_net_proto_text tool first")
        net.ClearField("layers")
        for old in v1:
            net.layer.append(_upgrade_v1_layer(old, source))
    if len(net.input):
        _upgrade_inputs(net, source)
    return net


_V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

#: V1 data layers whose own parameters held the transformation fields.
_V1_DATA_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                   "WINDOW_DATA": "window_data_param"}
_V1_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _upgrade_v1_layer(old: caffe_pb2.V1LayerParameter, source: str) -> caffe_pb2.LayerParameter:
    new = caffe_pb2.LayerParameter()
    new.bottom.extend(old.bottom)
    new.top.extend(old.top)
    if old.HasField("name"):
        new.name = old.name
    new.include.extend(old.include)
    new.exclude.extend(old.exclude)
    type_name = caffe_pb2.V1LayerParameter.LayerType.Name(old.type)
    if old.HasField("type"):
        if type_name not in _V1_TYPES:  # pragma: no cover - the enum is closed
            raise ValueError(f"{source}: layer '{old.name}': unknown V1 type {type_name}")
        new.type = _V1_TYPES[type_name]
    new.blobs.extend(old.blobs)

    def spec(i: int) -> caffe_pb2.ParamSpec:
        while len(new.param) <= i:
            new.param.add()
        return new.param[i]
    for i, name in enumerate(old.param):
        spec(i).name = name
    for i, mode in enumerate(old.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(
            caffe_pb2.V1LayerParameter.DimCheckMode.Name(mode))
    for i, lr in enumerate(old.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(old.weight_decay):
        spec(i).decay_mult = decay
    new.loss_weight.extend(old.loss_weight)
    for descriptor, value in old.ListFields():
        if descriptor.name.endswith("_param") and \
                descriptor.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
            getattr(new, descriptor.name).CopyFrom(value)
    data_param = _V1_DATA_PARAMS.get(type_name)
    if data_param and new.HasField(data_param):
        params = getattr(new, data_param)
        for name in _V1_TRANSFORM_FIELDS:
            if params.HasField(name):
                setattr(new.transform_param, name, getattr(params, name))
                params.ClearField(name)
    return new


def _upgrade_inputs(net: caffe_pb2.NetParameter, source: str) -> None:
    shapes = [tuple(s.dim) for s in net.input_shape]
    dims = list(net.input_dim)
    if shapes or dims:
        if shapes and len(shapes) != len(net.input):
            raise ValueError(f"{source}: {len(net.input)} inputs but {len(shapes)} input_shape")
        if not shapes and len(dims) != 4 * len(net.input):
            raise ValueError(f"{source}: {len(net.input)} inputs need {4 * len(net.input)} "
                             f"input_dim values, got {len(dims)}")
        layer = caffe_pb2.LayerParameter(name="input", type="Input", top=list(net.input))
        for i in range(len(net.input)):
            shape = shapes[i] if shapes else tuple(dims[4 * i:4 * i + 4])
            layer.input_param.shape.add().dim.extend(shape)
        layers = [layer, *net.layer]
        net.ClearField("layer")
        net.layer.extend(layers)
    for name in ("input", "input_shape", "input_dim"):
        net.ClearField(name)


def upgrade_solver(solver: caffe_pb2.SolverParameter, source: str = "<solver>"
                   ) -> caffe_pb2.SolverParameter:
    """``solver`` with the deprecated ``solver_type`` enum turned into ``type``."""
    if not solver.HasField("solver_type"):
        return solver
    if solver.HasField("type"):
        raise ValueError(f"{source}: give 'type' or the deprecated 'solver_type', not both")
    solver = _copy(solver)
    solver.type = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                   "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}[
        caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
    solver.ClearField("solver_type")
    return solver


# -- data layers ------------------------------------------------------------------------

@dataclass(frozen=True)
class DataLayerInfo:
    """Where a net's data comes from, for sparknet's data pipeline.

    Attributes:
        name, type: the layer's name and Caffe type.
        phases: the phases it feeds (``"TRAIN"``, ``"TEST"``).
        tops: its tops, images first.
        batch_size: its batch size, where the layer says (Data, ImageData ...).
        source: the database, list or file it reads, where it says.
        transform_param: its crop / mirror / mean / scale settings (empty if none).
    """

    name: str
    type: str
    phases: tuple[str, ...]
    tops: tuple[str, ...]
    batch_size: int | None = None
    source: str | None = None
    transform_param: caffe_pb2.TransformationParameter = field(
        default_factory=caffe_pb2.TransformationParameter)


_SOURCE_PARAMS = ("data_param", "image_data_param", "hdf5_data_param", "window_data_param",
                  "memory_data_param")


def _data_layer_indices(net: caffe_pb2.NetParameter) -> list[int]:
    found = [i for i, layer in enumerate(net.layer) if layer.type in DATA_LAYER_TYPES]
    return found or [i for i, layer in enumerate(net.layer) if layer.type == "Input"]


def _transform_of(layer: caffe_pb2.LayerParameter) -> caffe_pb2.TransformationParameter:
    """The layer's ``transform_param``, with deprecated per-source fields folded in."""
    transform = _copy(layer.transform_param)
    for name in ("data_param", "image_data_param", "window_data_param"):
        if layer.HasField(name):
            params = getattr(layer, name)
            for key in _V1_TRANSFORM_FIELDS:
                if params.HasField(key) and not transform.HasField(key):
                    setattr(transform, key, getattr(params, key))
    return transform


def data_layers(net: Any) -> list[DataLayerInfo]:
    """The layers that bring data into ``net``, found by type and phase.

    Caffe's reading layers (Data, ImageData, HDF5Data ...); if there are none,
    the Input layers (a net already prepared for sparknet).
    """
    net = as_message(net, caffe_pb2.NetParameter)
    found = []
    for i in _data_layer_indices(net):
        layer = net.layer[i]
        batch, source = None, None
        for name in _SOURCE_PARAMS:
            if layer.HasField(name):
                params = getattr(layer, name)
                batch = params.batch_size if params.HasField("batch_size") else None
                source = getattr(params, "source", None) or None
        found.append(DataLayerInfo(layer.name, layer.type,
                                   active_phases(layer, [net_state(net)] * 2),
                                   tuple(layer.top), batch, source, _transform_of(layer)))
    return found


def transform_params(net: Any) -> dict[str, caffe_pb2.TransformationParameter]:
    """Per phase, the transformation of the layer feeding the images."""
    result: dict[str, caffe_pb2.TransformationParameter] = {}
    for info in data_layers(net):
        for phase in info.phases:
            if phase not in result and info.transform_param.ListFields():
                result[phase] = info.transform_param
    return result


def replace_data_layers(net: Any, train_batch: int, test_batch: int, channels: int,
                        height: int, width: int, *, label_shape: Sequence[int] = (1,)
                        ) -> caffe_pb2.NetParameter:
    """A copy of ``net`` fed by Input layers instead of Caffe's data layers.

    Data layers are found by type (Data, ImageData, HDF5Data, MemoryData,
    WindowData, DummyData ...) and phase, wherever they are in the net. Each
    of their tops becomes an Input layer named like the top, in the layer's
    place: the image top ``(batch, channels, height, width)``, label tops
    ``(batch, 1)`` (``(batch, *label_shape)``: a segmentation net's labels are
    ``label_shape=(1, height, width)``), with ``train_batch`` in the TRAIN net
    and ``test_batch`` in the TEST net. Both common forms work: one data layer per phase with
    tops ``data`` and ``label``, and separate layers for images and labels.
    Within a phase the first top whose name does not contain ``label`` is
    the image top.

    The data layer's ``transform_param`` (crop, mirror, mean, scale) moves to
    the image Input layer, where the data pipeline finds it (see
    :func:`data_layers`); Caffe ignores it there. A net that already has
    Input layers and no data layers has those re-shaped, so applying this
    twice is harmless.
    """
    for what, value in (("train_batch", train_batch), ("test_batch", test_batch),
                        ("channels", channels), ("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not all(isinstance(d, int) and d > 0 for d in label_shape):
        raise ValueError(f"label_shape must be positive integers, got {tuple(label_shape)}")
    source = as_message(net, caffe_pb2.NetParameter)
    indices = set(_data_layer_indices(source))
    if not indices:
        raise ValueError(f"net '{source.name}' has no data layers to replace (no "
                         f"{', '.join(sorted(DATA_LAYER_TYPES))} or Input layer)")
    batch = {"TRAIN": train_batch, "TEST": test_batch}
    image_seen = {"TRAIN": False, "TEST": False}
    result = _copy(source)
    result.ClearField("layer")
    for i, layer in enumerate(source.layer):
        if i not in indices:
            result.layer.append(layer)
            continue
        phases = active_phases(layer, [net_state(source)] * 2)
        if not phases:
            result.layer.append(layer)  # feeds neither phase (another stage): keep it
            continue
        groups = [phases] if len(phases) == 1 or train_batch == test_batch \
            else [(p,) for p in phases]
        for group in groups:
            taken = any(image_seen[p] for p in group)
            for top in layer.top:
                image = not taken and "label" not in top.lower()
                taken = taken or image
                new = result.layer.add(name=top, type="Input", top=[top])
                n = batch[group[0]]
                new.input_param.shape.add().dim.extend(
                    (n, channels, height, width) if image else (n, *label_shape))
                if len(group) == len(phases):
                    new.include.extend(layer.include)
                    new.exclude.extend(layer.exclude)
                else:
                    new.include.add().phase = caffe_pb2.Phase.Value(group[0])
                if image:
                    transform = _transform_of(layer)
                    if transform.ListFields():
                        new.transform_param.CopyFrom(transform)
            for p in group:
                image_seen[p] = image_seen[p] or taken
    return result


# -- SparkNet's names ------------------------------------------------------------------

class ProtoLoader:
    """Prototxt loading and saving under SparkNet's names (all static).

    Each function exists in PEP 8 spelling and in SparkNet's camelCase:
    ``load_net_prototxt`` / ``loadNetPrototxt``, ``replace_data_layers`` /
    ``replaceDataLayers``, ``load_solver_prototxt_with_net`` /
    ``loadSolverPrototxtWithNet`` ...
    """

    load_net_prototxt = staticmethod(load_net_prototxt)
    load_solver_prototxt = staticmethod(load_solver_prototxt)
    load_solver_prototxt_with_net = staticmethod(load_solver_prototxt_with_net)
    replace_data_layers = staticmethod(replace_data_layers)
    data_layers = staticmethod(data_layers)
    transform_params = staticmethod(transform_params)
    save_prototxt = staticmethod(save_prototxt)
    to_prototxt = staticmethod(to_prototxt)
    parse_net = staticmethod(parse_net)
    parse_solver = staticmethod(parse_solver)

    loadNetPrototxt = load_net_prototxt
    loadSolverPrototxt = load_solver_prototxt
    loadSolverPrototxtWithNet = load_solver_prototxt_with_net
    replaceDataLayers = replace_data_layers
    dataLayers = data_layers
    transformParams = transform_params
    savePrototxt = save_prototxt
    toPrototxt = to_prototxt
