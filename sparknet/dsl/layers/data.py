"""Layers that bring data into a net: Input (how sparknet feeds nets), and Caffe's
own readers (Data, ImageData, MemoryData, HDF5Data, DummyData)."""
from __future__ import annotations

from typing import Any

from google.protobuf.message import Message as ProtoMessage

from sparknet.dsl._fields import (
    ANY_STR,
    BOOL,
    NON_NEGATIVE,
    POSITIVE,
    STR,
    BlobShapeKind,
    EnumKind,
    Fail,
    Kind,
    Message,
    Repeated,
    _is_sequence,
    param,
)
from sparknet.dsl.enums import Backend
from sparknet.dsl.layers.base import Layer, Shape, layer
from sparknet.dsl.params import Filler, TransformParam, as_filler

__all__ = ["DataLayer", "DummyDataLayer", "HDF5DataLayer", "ImageDataLayer", "InputLayer",
           "MemoryDataLayer", "RDDLayer"]


class _InputShapes(Kind):
    """One shape for every top, ``(64, 1, 28, 28)``, or one shape per top."""

    def check(self, value: Any, fail: Fail) -> Shape | tuple[Shape, ...]:
        if _is_sequence(value) and value and all(_is_sequence(v) for v in value):
            return tuple(BlobShapeKind().check(v, fail) for v in value)
        return BlobShapeKind().check(value, fail)

    def write(self, msg: ProtoMessage, name: str, value: Any) -> None:
        shapes = value if value and isinstance(value[0], tuple) else (value,)
        for shape in shapes:
            BlobShapeKind.write_into(getattr(msg, name).add(), shape)

    def read(self, msg: ProtoMessage, name: str) -> Any:
        shapes = tuple(tuple(s.dim) for s in getattr(msg, name))
        if not shapes:
            return None
        return shapes[0] if len(shapes) == 1 else shapes


def _transform() -> Any:
    return param(Message(TransformParam), proto="transform_param", scope="layer")


@layer("Input", param="input_param", bottoms=(0, 0), tops=(1, None))
class InputLayer(Layer):
    """Blobs the caller fills: how sparknet feeds a net (SparkNet's ``RDDLayer``).

    ::

        InputLayer("data", shape=(64, 1, 28, 28))
        InputLayer("input", tops=["data", "label"], shape=[(64, 3, 32, 32), (64, 1)])

    Attributes:
        shape: the shape of every top, or a sequence of shapes, one per top.
        transform_param: preprocessing the data pipeline applies before feeding
            (Caffe itself ignores it on an Input layer).
    """

    shape: Shape | tuple[Shape, ...] | None = param(_InputShapes())
    transform_param: TransformParam | None = _transform()

    def _check(self) -> None:
        _check_shape_count(self)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        if self.shape is None:
            return (None,) * len(self.tops)
        return _per_top(self.shape, len(self.tops))


def _per_top(shape: Shape | tuple[Shape, ...], tops: int) -> tuple[Shape, ...]:
    """Caffe's rule: one shape serves every top; otherwise one shape per top."""
    if shape and isinstance(shape[0], tuple):
        return shape if len(shape) == tops else shape[:1] * tops  # type: ignore[return-value]
    return (shape,) * tops  # type: ignore[return-value]


def _check_shape_count(layer: Layer) -> None:
    shape = layer.shape  # type: ignore[attr-defined]
    if shape and isinstance(shape[0], tuple) and len(shape) not in (1, len(layer.tops)):
        layer._fail("shape", f"gives {len(shape)} shapes for {len(layer.tops)} tops; "
                    "give one shape for all tops, or one per top")


#: SparkNet's name for the layer that takes a net's input from an RDD.
RDDLayer = InputLayer


@layer("Data", param="data_param", bottoms=(0, 0), tops=(1, 2))
class DataLayer(Layer):
    """Caffe reading ``Datum`` records from an LMDB or LevelDB database.

    Tops: the images, then (optionally) the labels. The image shape is in the
    database, so the DSL knows only the label shape, ``(batch_size,)``. In
    sparknet, :func:`sparknet.proto.ProtoLoader.replace_data_layers` turns data
    layers into Input layers fed from Spark.

    Attributes:
        source: the database path.
        batch_size: images per batch.
        backend: ``Backend.LMDB`` or ``Backend.LEVELDB`` (Caffe's default).
        rand_skip: skip up to this many records at the start.
        prefetch: batches to prefetch.
        force_encoded_color: decode encoded images as colour.
        transform_param: crop, mirror, mean and scale.
    """

    source: str = param(STR, required=True)
    batch_size: int = param(POSITIVE, required=True)
    rand_skip: int | None = param(NON_NEGATIVE)
    backend: Backend | None = param(EnumKind(Backend))
    force_encoded_color: bool | None = param(BOOL)
    prefetch: int | None = param(POSITIVE)
    transform_param: TransformParam | None = _transform()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return (None, (self.batch_size,))[:len(self.tops)]


@layer("ImageData", param="image_data_param", bottoms=(0, 0), tops=(2, 2))
class ImageDataLayer(Layer):
    """Caffe reading image files listed with their labels in a text file.

    Attributes:
        source: the list file (``path label`` per line).
        batch_size: images per batch (Caffe's default: 1).
        root_folder: prefixed to every path.
        new_height, new_width: resize every image to this size first.
        is_color: decode as colour (default) or grey.
        shuffle: shuffle the list every epoch.
        rand_skip: skip up to this many lines at the start.
        transform_param: crop, mirror, mean and scale.
    """

    source: str = param(STR, required=True)
    batch_size: int | None = param(POSITIVE)
    rand_skip: int | None = param(NON_NEGATIVE)
    shuffle: bool | None = param(BOOL)
    new_height: int | None = param(NON_NEGATIVE)
    new_width: int | None = param(NON_NEGATIVE)
    is_color: bool | None = param(BOOL)
    root_folder: str | None = param(ANY_STR)
    transform_param: TransformParam | None = _transform()

    def _check(self) -> None:
        if bool(self.new_height) != bool(self.new_width):
            self._fail("new_width" if self.new_height else "new_height",
                       "new_height and new_width are given together, or neither")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        batch = self.batch_size or 1
        channels = 1 if self.is_color is False else 3
        t = self.transform_param or TransformParam()
        if t.crop_size:
            size: tuple[int, int] | None = (t.crop_size, t.crop_size)
        elif t.crop_h and t.crop_w:
            size = (t.crop_h, t.crop_w)
        elif self.new_height and self.new_width:
            size = (self.new_height, self.new_width)
        else:
            size = None  # the first image decides
        return (None if size is None else (batch, channels, *size), (batch,))


@layer("MemoryData", param="memory_data_param", bottoms=(0, 0), tops=(2, 2))
class MemoryDataLayer(Layer):
    """Caffe's in-memory data layer (fed through Caffe's C++ API).

    Attributes:
        batch_size, channels, height, width: the shape of the image top;
            the label top is ``(batch_size,)``.
    """

    batch_size: int = param(POSITIVE, required=True)
    channels: int = param(POSITIVE, required=True)
    height: int = param(POSITIVE, required=True)
    width: int = param(POSITIVE, required=True)
    transform_param: TransformParam | None = _transform()

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return ((self.batch_size, self.channels, self.height, self.width),
                (self.batch_size,))


@layer("HDF5Data", param="hdf5_data_param", bottoms=(0, 0), tops=(1, None))
class HDF5DataLayer(Layer):
    """Caffe reading datasets named like its tops from the HDF5 files listed in ``source``.

    Attributes:
        source: a text file listing HDF5 files.
        batch_size: rows per batch.
        shuffle: shuffle files and rows.
    """

    source: str = param(STR, required=True)
    batch_size: int = param(POSITIVE, required=True)
    shuffle: bool | None = param(BOOL)

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return (None,) * len(self.tops)  # in the files


@layer("DummyData", param="dummy_data_param", bottoms=(0, 0), tops=(1, None))
class DummyDataLayer(Layer):
    """Blobs of constant or random values: for testing nets without data.

    Attributes:
        shape: one shape per top, or one for all.
        data_filler: one filler per top, or one for all (Caffe's default: zeros).
    """

    shape: Shape | tuple[Shape, ...] = param(_InputShapes(), required=True)
    data_filler: tuple[Filler, ...] = param(Repeated(Message(Filler, coerce=as_filler)))

    def _check(self) -> None:
        _check_shape_count(self)
        if len(self.data_filler) not in (0, 1, len(self.tops)):
            self._fail("data_filler", f"gives {len(self.data_filler)} fillers for "
                       f"{len(self.tops)} tops")

    def infer(self, bottoms: tuple[Shape, ...]) -> tuple[Shape | None, ...]:
        return _per_top(self.shape, len(self.tops))
