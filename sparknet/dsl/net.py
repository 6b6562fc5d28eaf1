"""``NetParam``: a whole net, checked as Caffe would build it, with its shapes."""
from __future__ import annotations

import difflib
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, overload

import attrs

from sparknet.dsl._fields import BOOL, STR, Message, fail, param, read_fields, write_fields
from sparknet.dsl.enums import Phase
from sparknet.dsl.errors import NetDefinitionError, NetDefinitionWarning
from sparknet.dsl.layers.base import Layer, Shape
from sparknet.dsl.params import NetState
from sparknet.proto import caffe_pb2, loader

__all__ = ["NetParam"]

BlobShapes = dict[str, Shape | None]


@attrs.frozen(init=False, repr=False)
class NetParam:
    """A Caffe net: a name and its layers, in order.

    ::

        net = NetParam("LeNet",
            RDDLayer("data", shape=(64, 1, 28, 28)),
            RDDLayer("label", shape=(64, 1)),
            ConvolutionLayer("conv1", ["data"], kernel=(5, 5), num_output=20),
            ...
            SoftmaxWithLoss("loss", ["ip2", "label"]))
        net.to_proto()      # caffe_pb2.NetParameter
        net.to_prototxt()   # the same, as prototxt text
        net.shapes()        # {"TRAIN": {"data": (64, 1, 28, 28), ...}, "TEST": {...}}

    Layers may also be given as (nested) lists, which are spliced in, so a
    function can return a block of layers (an inception module, a residual
    unit). Building a ``NetParam`` builds both the TRAIN and the TEST net the
    way Caffe would, keeping for each phase the layers whose ``include`` /
    ``exclude`` rules allow it, and raises :class:`NetDefinitionError` for a
    bottom no earlier layer produces, a top produced twice, two layers of one
    name, or shapes Caffe would reject (a kernel larger than its input, a
    concat of mismatched blobs ...). So a ``NetParam`` that exists is one
    Caffe accepts.

    Attributes:
        name: the net's name.
        layers: the layers, in order.
        force_backward: backpropagate into every layer, even without a loss.
        state: the net's level and stages, matched against layers' rules.
        debug_info: Caffe prints per-layer statistics.
    """

    name: str | None = param(STR)
    layers: tuple[Layer, ...] = attrs.field(default=())
    force_backward: bool | None = param(BOOL)
    state: NetState | None = param(Message(NetState))
    debug_info: bool | None = param(BOOL)
    _shapes: dict[str, BlobShapes] = attrs.field(init=False, eq=False, hash=False,
                                                   repr=False, alias="_shapes")

    def __init__(self, name: str | None = None, *layers: Layer | Iterable[Any],
                 force_backward: bool | None = None, state: NetState | None = None,
                 debug_info: bool | None = None, **unknown: Any) -> None:
        if "layers" in unknown:  # attrs.evolve passes them by keyword
            if layers:
                raise NetDefinitionError("NetParam, field 'layers': given both positionally "
                                         "and by keyword", field="layers")
            layers = (unknown.pop("layers"),)
        for key in unknown:
            known = ("force_backward", "state", "debug_info")
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"it takes {', '.join(known)}"
            raise NetDefinitionError(f"NetParam, field '{key}': no such field; {hint}",
                                     field=key)
        if name is not None and not isinstance(name, str):
            raise NetDefinitionError(f"NetParam, field 'name': the first argument is the "
                                     f"net's name (a string), got {name!r}", field="name")
        self.__attrs_init__(name=name, layers=tuple(_flatten(layers)),
                            force_backward=force_backward, state=state, debug_info=debug_info)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_shapes", {phase.value: self._build_phase(phase)
                                             for phase in Phase})
        self._warn_shared_names()

    def _state(self) -> tuple[int, tuple[str, ...]]:
        return ((self.state.level or 0) if self.state else 0,
                tuple(self.state.stage) if self.state else ())

    def _build_phase(self, phase: Phase) -> BlobShapes:
        """Build ``phase``'s net in the net's own state, or in the stages its rules name.

        A net without a ``state`` whose layers are included only in some stage
        (BVLC's MNIST autoencoder has a TEST data layer per stage, chosen by the
        solver's ``test_state``) cannot be built in that phase without one;
        Caffe builds it in each stage the solver names. Then every state that
        the layers' ``include`` rules name for this phase must build, and the
        shapes are those of the first.
        """
        try:
            return self._build(phase, *self._state())
        except NetDefinitionError as e:
            if self.state is not None or e.field != "bottoms":  # not a blob a stage makes
                raise
            states = list(dict.fromkeys(
                (rule.min_level or 0, tuple(rule.stage)) for layer in self.layers
                for rule in layer.include
                if (rule.stage or rule.min_level) and rule.phase in (None, phase)))
            if not states:
                raise
        shapes = [self._build(phase, level, stages) for level, stages in states]
        return shapes[0]

    def _warn_shared_names(self) -> None:
        """Warn about layers that share a name in one phase's net (Caffe accepts them)."""
        shared: dict[str, list[Layer]] = {}
        for phase in Phase:
            by_name: dict[str, list[Layer]] = {}
            for layer in self.layers_in(phase):
                by_name.setdefault(layer.name, []).append(layer)
            for name, layers in by_name.items():
                if len(layers) > 1 and name not in shared:
                    shared[name] = layers
        for name, layers in shared.items():
            types = ", ".join(layer.type for layer in layers)
            warnings.warn(f"{self._describe()[0]}: {len(layers)} layers of one net are named "
                          f"'{name}' ({types}); Caffe accepts this, but it matches weights "
                          "to layers by name (a .caffemodel, a WeightCollection), so layers "
                          "with weights need names of their own", NetDefinitionWarning,
                          stacklevel=5)

    def _describe(self) -> tuple[str, str | None]:
        return f"net '{self.name}'" if self.name else "NetParam", None

    def __repr__(self) -> str:
        inner = "".join(f"\n    {layer!r}," for layer in self.layers)
        return f"NetParam({self.name!r},{inner}\n)"

    # -- the phases, as Caffe builds them ----------------------------------------------
    def layers_in(self, phase: Phase | str) -> tuple[Layer, ...]:
        """The layers Caffe keeps in the net of ``phase``, in order."""
        return self._layers_in(phase, *self._state())

    def _layers_in(self, phase: Phase | str, level: int,
                   stages: tuple[str, ...]) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.active_in(phase, level, stages))

    def _build(self, phase: Phase, level: int, stages: tuple[str, ...]) -> BlobShapes:
        shapes: BlobShapes = {}
        producer: dict[str, str] = {}
        layers = self._layers_in(phase, level, stages)
        # How errors name this net: the phase, and the state when it is not the net's own.
        net = str(phase)
        if (level, stages) != self._state():
            net += (f" (level {level}, stage {', '.join(stages)})" if stages
                    else f" (level {level})")
        self._check_in_place_splits(layers, net)
        for layer in layers:
            for blob in layer.bottoms:
                if blob not in shapes:
                    close = difflib.get_close_matches(blob, list(shapes), n=1)
                    hint = (f"; did you mean '{close[0]}'?" if close else
                            f"; the blobs so far are {', '.join(shapes) or 'none'}")
                    fail(layer, "bottoms", f"no earlier layer of the {net} net produces "
                         f"'{blob}'{hint}")
            for i, blob in enumerate(layer.tops):
                in_place = i < len(layer.bottoms) and layer.bottoms[i] == blob
                if blob in shapes and not in_place:
                    fail(layer, "tops", f"blob '{blob}' is already produced by layer "
                         f"'{producer[blob]}' in the {net} net")
            bottoms = tuple(shapes[b] for b in layer.bottoms)
            if any(shape is None for shape in bottoms):
                tops: tuple[Shape | None, ...] = (None,) * len(layer.tops)
            else:
                try:
                    tops = layer.infer(bottoms)  # type: ignore[arg-type]
                except NetDefinitionError as e:
                    where = f" (in the {net} net)" if self._phased() else ""
                    raise NetDefinitionError(f"{e}{where}", layer=e.layer,
                                             field=e.field) from None
            for blob, shape in zip(layer.tops, tops):
                shapes[blob] = shape
                producer.setdefault(blob, layer.name)
        return shapes

    @staticmethod
    def _check_in_place_splits(layers: tuple[Layer, ...], net: str) -> None:
        """An in-place layer must be the only reader of the blob it overwrites.

        Caffe gives a blob read by several layers a Split layer and renames
        the readers' bottoms; an in-place reader's top then keeps the old name
        and Caffe fails with "Top blob produced by multiple sources".
        """
        version: dict[str, tuple[int, int]] = {}  # blob -> (layer, top) that wrote it last
        readers: dict[tuple[int, int], list[str]] = {}
        in_place: list[tuple[Layer, str, tuple[int, int]]] = []
        for position, layer in enumerate(layers):
            for i, blob in enumerate(layer.bottoms):
                if blob not in version:
                    return  # an unknown bottom: _build reports it
                readers.setdefault(version[blob], []).append(layer.name)
                if i < len(layer.tops) and layer.tops[i] == blob:
                    in_place.append((layer, blob, version[blob]))
            for j, blob in enumerate(layer.tops):
                version[blob] = (position, j)
            for j, weight in enumerate(layer.loss_weight[:len(layer.tops)]):
                if weight:  # a weighted loss counts as a reader, as in Caffe
                    readers.setdefault((position, j), []).append(f"{layer.name}'s loss")
        for layer, blob, source in in_place:
            others = [name for name in readers[source] if name != layer.name]
            if len(readers[source]) > 1:
                also = (f"layer(s) {', '.join(repr(o) for o in others)} also read it" if others
                        else "it reads the blob twice")
                fail(layer, "tops", f"computes '{blob}' in place, but {also} in the {net} "
                     "net; Caffe splits a blob with several readers and then fails "
                     "('produced by multiple sources'): give this top its own name")

    def _phased(self) -> bool:
        """Whether the TRAIN and TEST nets differ (so errors should say which)."""
        return any(layer.include or layer.exclude for layer in self.layers)

    @overload
    def shapes(self) -> dict[str, BlobShapes]: ...

    @overload
    def shapes(self, phase: Phase | str) -> BlobShapes: ...

    def shapes(self, phase: Phase | str | None = None) -> Any:
        """Each blob's shape, as Caffe will compute it: per phase, or for ``phase``.

        ``shapes()`` maps ``"TRAIN"`` and ``"TEST"`` to ``{blob: shape}``;
        ``shapes("TEST")`` gives one of those. A loss is ``()``. ``None`` marks
        a shape only the data can tell (the images of a ``DataLayer``) and
        everything computed from it.
        """
        if phase is None:
            return {p: dict(s) for p, s in self._shapes.items()}
        return dict(self._shapes[Phase(phase).value])

    # -- protobuf ----------------------------------------------------------------------
    def to_proto(self) -> caffe_pb2.NetParameter:
        """This net as a ``caffe_pb2.NetParameter``."""
        proto = caffe_pb2.NetParameter()
        write_fields(self, proto)
        proto.layer.extend(layer.to_proto() for layer in self.layers)
        return proto

    def to_prototxt(self) -> str:
        """This net as prototxt text."""
        return loader.to_prototxt(self.to_proto())

    def to_python(self, variable: str = "net") -> str:
        """Python source that builds this net with the DSL: a prototxt converter.

        ``exec`` of the text defines ``variable`` as a ``NetParam`` equal to
        this one; it imports what it uses from :mod:`sparknet.dsl`.
        """
        import sparknet.dsl as dsl  # the package, which imports this module

        options = [f"{key}={_python(value)}" for key, value in (
            ("force_backward", self.force_backward), ("state", self.state),
            ("debug_info", self.debug_info)) if value is not None]
        body = [_wrap(f"    {arg},") for arg in
                (repr(self.name), *map(repr, self.layers), *options)]
        code = f"{variable} = NetParam(\n" + "\n".join(body) + "\n)\n"
        names = sorted(set(re.findall(r"\b([A-Z]\w*)\b", code)) & set(dsl.__all__))
        header = _wrap(f"from sparknet.dsl import {', '.join(names)}", indent="    ",
                       parenthesize=True)
        if "caffe_pb2." in code:
            header = ("from google.protobuf import text_format\n\n" + header
                      + "\nfrom sparknet.proto import caffe_pb2")
        return f"{header}\n\n{code}"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this net as a prototxt file (atomically)."""
        loader.save_prototxt(self.to_proto(), path)

    @classmethod
    def from_proto(cls, proto: caffe_pb2.NetParameter) -> NetParam:
        """The DSL net for any ``NetParameter``.

        ``NetParam.from_proto(p).to_proto() == p`` for every current-format
        net. A net in Caffe's V1 format (``layers { type: CONVOLUTION }``) or
        with the legacy ``input:`` fields is first upgraded the way Caffe
        upgrades it when it reads the file (the result is then the upgraded
        net); the older V0 format is refused.
        """
        if not isinstance(proto, caffe_pb2.NetParameter):
            raise TypeError(f"expected a caffe_pb2.NetParameter, got {type(proto).__name__}")
        if loader.net_needs_upgrade(proto):
            proto = loader.upgrade_net(proto)
        values = read_fields(_NetFields, proto)
        return cls(values.name, *(Layer.from_proto(lp) for lp in proto.layer),
                   force_backward=values.force_backward, state=values.state,
                   debug_info=values.debug_info)

    @classmethod
    def from_prototxt(cls, text: str, source: str = "<prototxt>") -> NetParam:
        """The DSL net for prototxt text (``source`` names it in parse errors)."""
        return cls.from_proto(loader.parse_net(text, source))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NetParam:
        """The DSL net of a prototxt file.

        A definition error names the file and the line of the offending
        layer's ``name:``, as well as the layer and field.
        """
        try:
            return cls.from_proto(loader.load_net_prototxt(path))
        except NetDefinitionError as e:
            raise _located(e, path) from None

    @classmethod
    def check(cls, proto: caffe_pb2.NetParameter | caffe_pb2.SolverParameter,
              path: str | os.PathLike[str] | None = None) -> None:
        """Check a net that did not come from the DSL before Caffe builds it.

        The DSL's own rules and shape arithmetic, applied to a ``NetParameter``
        (or a solver's inline net) loaded from prototxt: a kernel larger than
        its padded input, a zero or negative dimension, a bottom no layer
        makes ... raise :class:`NetDefinitionError` with the message a net
        written in Python gets, naming the layer and field, and ``path``'s line
        when the net was read from ``path``. Caffe's own messages for the same
        mistakes (``Check failed: shape[i] >= 0``) name neither the cause nor
        the field. A solver that builds its nets in states of its own
        (``train_state``/``test_state``) is left to Caffe.
        """
        if isinstance(proto, caffe_pb2.SolverParameter):
            if proto.HasField("train_state") or len(proto.test_state):
                return
            if proto.HasField("net_param"):
                proto = proto.net_param
            elif proto.HasField("train_net_param"):
                proto = proto.train_net_param
            else:
                return  # a net named by file: Caffe reads it
        try:
            cls.from_proto(proto)
        except NetDefinitionError as e:
            if path is None:
                raise
            raise _located(e, path) from None


def _located(error: NetDefinitionError, path: str | os.PathLike[str]) -> NetDefinitionError:
    """``error`` prefixed with the prototxt file and the line of its layer's ``name:``."""
    where = os.fspath(path)
    if error.layer is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = ""
        # the layer's name: on a line of its own, or right after "layer {"
        found = re.search(rf'(?:^|{{)[ \t]*(name:\s*["\']{re.escape(error.layer)}["\'])',
                          text, re.MULTILINE)
        if found:
            where += f":{text.count(chr(10), 0, found.start(1)) + 1}"
    return NetDefinitionError(f"{where}: {error}", layer=error.layer, field=error.field)


@attrs.frozen
class _NetFields:
    """The scalar fields of a NetParameter, read generically."""
    name: str | None = param(STR)
    force_backward: bool | None = param(BOOL)
    state: NetState | None = param(Message(NetState))
    debug_info: bool | None = param(BOOL)


def _python(value: Any) -> str:
    return repr(value)


def _wrap(line: str, indent: str = "        ", width: int = 99,
          parenthesize: bool = False) -> str:
    """Break a long line of Python after its outermost commas, to fit ``width``.

    The line is a call (or, with ``parenthesize``, an import list to wrap in
    parentheses); breaks go only where no bracket or string is open.
    """
    if len(line) <= width:
        return line
    if parenthesize:
        head, _, tail = line.partition(" import ")
        items = tail.split(", ")
        rows, row = [], ""
        for item in items:
            if row and len(indent + row + item) + 2 > width:
                rows.append(row.rstrip())
                row = ""
            row += item + ", "
        rows.append(row.rstrip().rstrip(","))
        return f"{head} import (\n" + "\n".join(indent + r for r in rows) + "\n)"
    lead = len(line) - len(line.lstrip())
    depth, quote, cuts, start = 0, "", [], None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            if start is None:
                start = i + 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 1:
            cuts.append(i + 1)
    if start is None or not cuts:
        return line
    pieces, last = [], start
    for cut in cuts:
        pieces.append(line[last:cut].strip())
        last = cut
    pieces.append(line[last:].strip())
    pad = " " * (lead + 4)
    out, row = [line[:start]], ""
    for piece in pieces:
        if row and len(pad + row + " " + piece) > width:
            out.append(pad + row)
            row = piece
        else:
            row = f"{row} {piece}".strip()
    out.append(pad + row)
    return "\n".join(out)


def _flatten(items: Iterable[Any]) -> Iterable[Layer]:
    for item in items:
        if isinstance(item, Layer):
            yield item
        elif isinstance(item, Iterable) and not isinstance(item, (str, bytes, Mapping)):
            yield from _flatten(item)
        else:
            raise NetDefinitionError(f"NetParam, field 'layers': expected layers (or lists "
                                     f"of layers), got {item!r}", field="layers")
