"""Arrays into RDDs and DataFrames the trainer consumes, and DataFrames back into examples.

The trainer takes any of:

* an RDD of ``(array, label)`` pairs: the array float32 CHW for one example,
  the label a number;
* an RDD of dicts keyed by input blob name (``{"data": array, "label": 3.0}``);
* a DataFrame whose columns are named after input blobs.

:func:`to_rdd` and :func:`to_dataframe` build those from numpy arrays (the
loaders use them); :func:`dataframe_to_rdd` turns a DataFrame of Spark's image
schema (``spark.read.format("image")``), of encoded image bytes, or of numeric
array columns into dicts of float32 arrays.
"""
from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sparknet._util import UserError, shape_str
from sparknet.io import default_parallelism, is_connect, spark_context

Example = tuple[np.ndarray, float]
T = TypeVar("T")


def _default_partitions(sc: Any, n: int) -> int:
    return max(1, min(n, int(getattr(sc, "defaultParallelism", 2) or 2)))


def _chunks(x: np.ndarray, y: np.ndarray, parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    bounds = np.linspace(0, len(x), parts + 1).astype(int)
    return [(x[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]


def _expand(scale: float | None, dtype: Any) -> Callable[[Iterator], Iterator[Example]]:
    def expand(chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> Iterator[Example]:
        for xs, ys in chunks:
            xs = np.asarray(xs)
            if scale is not None or xs.dtype != dtype:
                xs = xs.astype(dtype)
                if scale is not None and scale != 1.0:
                    xs *= np.asarray(scale, dtype)
            for a, b in zip(xs, ys):
                yield a, float(b)
    return expand


def to_rdd(spark: Any, x: np.ndarray, y: np.ndarray, num_partitions: int | None = None, *,
           scale: float | None = None, dtype: Any = np.float32) -> Any:
    """An RDD of ``(array, label)`` pairs from arrays ``x`` (N, C, H, W) and ``y`` (N,).

    The arrays travel to the workers in ``num_partitions`` chunks (default:
    Spark's default parallelism) in their own dtype, so pass uint8 pixels and
    a ``scale`` to ship a quarter of the bytes; each worker converts to
    ``dtype`` (float32) and multiplies by ``scale``. Order is kept.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} examples but {len(y)} labels")
    sc = spark_context(spark, what="to_rdd",
                       instead="to_dataframe gives the same examples as a DataFrame")
    parts = num_partitions or _default_partitions(sc, len(x))
    if parts < 1:
        raise ValueError(f"num_partitions must be >= 1, got {parts}")
    chunks = _chunks(x, y, parts)
    return sc.parallelize(chunks, len(chunks)).mapPartitions(_expand(scale, np.dtype(dtype)),
                                                              preservesPartitioning=True)


def packaged_file(package: str, *parts: str, what: str, pip: str | None = None,
                  pinned_in: str = "requirements.txt") -> Path:
    """The data file ``parts`` inside the installed ``package``, found without importing it:
    ``find_spec`` of a top-level package runs none of its code (scikit-learn's would cost
    every Spark worker 1.3 CPU-seconds).

    ``ModuleNotFoundError`` says that the package ships ``what`` and how to install it
    (``pip``: its name on the package index, if not ``package``); ``FileNotFoundError``
    names the path a version without it lacks.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the {package} package, which ships {what}, is not installed: pip install "
            f"{pip or package} ({pinned_in} pins it)", name=package)
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the installed {package} (a version "
                                f"without {what}?)")
    return path


def packaged_rdd(spark: Any, load: Callable[[str], tuple[np.ndarray, np.ndarray]], split: str,
                 *, num_partitions: int | None = None, what: str = "packaged_rdd",
                 instead: str | None = None) -> Any:
    """A data set that ships inside a package, as an RDD of ``(array, label)`` pairs in order.

    ``load(split)`` gives ``(x, y)`` on any node (a module-level function, cached
    there), so each worker loads its own slice: Spark tasks carry no data, only
    an index. ``num_partitions`` defaults to Spark's default parallelism. ``what`` and
    ``instead`` name the caller and its alternative when ``spark`` is a Spark Connect
    session, which has no RDDs.
    """
    sc = spark_context(spark, what=what, instead=instead)
    n = len(load(split)[1])
    parts = num_partitions or _default_partitions(sc, n)
    if parts < 1:
        raise ValueError(f"num_partitions must be >= 1, got {parts}")
    bounds = np.linspace(0, n, parts + 1).astype(int)  # as to_rdd splits

    def part(index: int, _: Any) -> Iterator[Example]:
        x, y = load(split)
        for i in range(bounds[index], bounds[index + 1]):
            yield np.array(x[i]), float(y[i])

    return sc.parallelize(range(parts), parts).mapPartitionsWithIndex(part)


def to_dict_rdd(rdd: Any, names: Sequence[str] = ("data", "label")) -> Any:
    """``(array, label)`` pairs -> dicts keyed by input blob name."""
    a, b = names

    def to_dict(pair: Example) -> dict[str, Any]:
        return {a: pair[0], b: pair[1]}
    return rdd.map(to_dict)


def to_dataframe(spark: Any, x: np.ndarray, y: np.ndarray, *,
                 names: Sequence[str] = ("data", "label"), num_partitions: int | None = None,
                 scale: float | None = None) -> Any:
    """A DataFrame with one column per input blob: ``data`` (array<float>), ``label`` (float).

    Arrays are stored flattened in C order (CHW); the consumer reshapes them
    to its input blob's shape. ``names`` names the two columns.
    """
    from pyspark.sql import SparkSession
    from pyspark.sql.types import ArrayType, FloatType, StructField, StructType

    session = (spark if isinstance(spark, SparkSession) or is_connect(spark)
               else SparkSession.builder.getOrCreate())
    data_name, label_name = names
    schema = StructType([StructField(data_name, ArrayType(FloatType(), False), False),
                         StructField(label_name, FloatType(), False)])
    if is_connect(session):
        return _connect_dataframe(session, x, y, schema, num_partitions, scale)
    rows = to_rdd(session, x, y, num_partitions, scale=scale).map(
        lambda p: (p[0].reshape(-1).tolist(), float(p[1])))
    return session.createDataFrame(rows, schema)


def hash_partition_keys(spark: Any, n: int) -> list[int]:
    """``keys[t]``: a value that Spark's hash partitioning into ``n`` parts sends to part ``t``.

    ``df.repartition(n, key_column)`` then puts each row exactly where its key says: a
    placement by rule for a Spark Connect client, which cannot partition an RDD by hand.
    One small query, answered by the server's own hash function.
    """
    from pyspark.sql import functions as F

    rows = (spark.range(0, 64 * n).select("id", F.pmod(F.hash("id"), F.lit(n)).alias("part"))
            .groupBy("part").agg(F.min("id").alias("id")).collect())
    keys = {int(r["part"]): int(r["id"]) for r in rows}
    if len(keys) < n:  # pragma: no cover - 64 candidates per part
        raise RuntimeError(f"no hash key found for {n - len(keys)} of {n} partitions")
    return [keys[t] for t in range(n)]


def _connect_dataframe(session: Any, x: np.ndarray, y: np.ndarray, schema: Any,
                       num_partitions: int | None, scale: float | None) -> Any:
    """:func:`to_dataframe` for a Spark Connect client, which has no RDDs.

    The arrays travel in the query as one Arrow table; each row goes to the
    partition of the chunk :func:`to_rdd` would put it in (by
    :func:`hash_partition_keys`), in its order, so both kinds of session give the
    same partitions holding the same examples in the same order.
    """
    import pyarrow as pa
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} examples but {len(y)} labels")
    parts = num_partitions or max(1, min(len(x), default_parallelism(session)))
    if parts < 1:
        raise ValueError(f"num_partitions must be >= 1, got {parts}")
    data_name, label_name = schema.names
    width = math.prod(x.shape[1:])
    flat = np.ascontiguousarray(x, np.float32).reshape(len(x), width)
    if scale is not None and scale != 1.0:
        flat = flat * np.float32(scale)
    bounds = np.linspace(0, len(x), parts + 1).astype(int)  # as _chunks cuts
    part = np.repeat(np.arange(parts, dtype=np.int64), np.diff(bounds))
    offsets = pa.array(np.arange(len(x) + 1, dtype=np.int32) * width, pa.int32())
    table = pa.table({data_name: pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1))),
                      label_name: pa.array(np.asarray(y, np.float32), pa.float32()),
                      "__part": pa.array(part), "__row": pa.array(np.arange(len(x)))})
    full = T.StructType([*schema.fields, T.StructField("__part", T.LongType(), False),
                         T.StructField("__row", T.LongType(), False)])
    keys = F.array(*[F.lit(k) for k in hash_partition_keys(session, parts)])
    return (session.createDataFrame(table, full)
            .repartition(parts, F.element_at(keys, (F.col("__part") + 1).cast("int")))
            .sortWithinPartitions("__row").drop("__part", "__row"))


# -- DataFrames in ------------------------------------------------------------------------

_IMAGE_FIELDS = {"origin", "height", "width", "nChannels", "mode", "data"}


def image_struct_to_array(image: Any, *, size: tuple[int, int] | None = None,
                          channel_order: str = "BGR", dtype: Any = np.float32) -> np.ndarray:
    """One value of Spark's image schema -> a CHW array.

    Spark stores images as OpenCV does: bytes in HWC order, channels BGR(A),
    one or three or four channels. The alpha channel is dropped;
    ``channel_order`` is ``"BGR"`` (Spark's and Caffe's) or ``"RGB"``;
    ``size`` ``(width, height)`` resizes.
    """
    h, w, c = int(image["height"]), int(image["width"]), int(image["nChannels"])
    data = image["data"]
    raw = np.frombuffer(bytes(data), np.uint8)
    origin = image["origin"] if "origin" in _fields(image) else "?"
    if raw.size != h * w * c:
        raise ValueError(f"image {origin}: {raw.size} bytes for {h}x{w}x{c}")
    hwc = raw.reshape(h, w, c)
    if c == 4:
        hwc = hwc[:, :, :3]
    if c >= 3 and channel_order.upper() == "RGB":
        hwc = hwc[:, :, ::-1]
    elif c >= 3 and channel_order.upper() != "BGR":
        raise ValueError(f"channel_order must be 'BGR' or 'RGB', got {channel_order!r}")
    if size is not None and (w, h) != tuple(size):
        from sparknet.data.images import resize_array

        hwc = resize_array(hwc, size)
    return np.ascontiguousarray(hwc.transpose(2, 0, 1), dtype=dtype)


def _fields(value: Any) -> set[str]:
    if hasattr(value, "asDict"):
        return set(value.asDict())
    if isinstance(value, Mapping):
        return set(value)
    return set(getattr(value, "__fields__", ()))


class DataError(UserError, ValueError):
    """Bad data: a value of the wrong size or type for its input blob, or a data file or
    database that is not what its format says (the message names it, and the record or
    line).

    Also :class:`sparknet.spark.DataError`, the same class, which the trainer
    raises on the driver for data that does not fit.
    """


#: The fields of an ML vector as Spark hands it to an Arrow UDF: ``VectorUDT``'s
#: ``struct<type: tinyint, size: int, indices: array<int>, values: array<double>>``
#: (type 0 sparse, 1 dense), since Arrow has no vector type.
_VECTOR_FIELDS = {"type", "size", "indices", "values"}
_IMAGE_STRUCT = {"height", "width", "nChannels", "data"}


def _vector_struct(value: Any, blob: str) -> np.ndarray:
    """An ML vector given as its SQL struct (a Row or a dict, from Arrow) -> its values."""
    values = np.asarray(value["values"], np.float64)
    if int(value["type"]) == 1:
        return values
    size, indices = value["size"], value["indices"]
    if size is None or indices is None:
        raise DataError(f"'{blob}': a sparse vector without its size or indices ({value!r})")
    dense = np.zeros(int(size), np.float64)
    dense[np.asarray(indices, np.int64)] = values
    return dense


def to_array(value: Any, shape: Sequence[int] | None = None, blob: str = "value", *,
             size: tuple[int, int] | None = None, channel_order: str = "BGR") -> np.ndarray:
    """One value of an example or a DataFrame cell as a numpy array, by what the value is.

    The first step of the one conversion that training, ``predict``,
    ``dataframe_to_rdd`` and the ML stages and UDF share (:func:`to_blob` adds
    the second): a numpy array is returned as it is; an ML vector, dense or
    sparse, as its values, also when it comes as its SQL struct (as an Arrow
    UDF gets it: a ``Row`` or dict of ``type``, ``size``, ``indices``,
    ``values``); ``bytes`` as raw uint8 pixels when ``shape`` is given and
    holds exactly that many, else decoded as an encoded image (JPEG, PNG...) to
    uint8 CHW; Spark's image schema (a ``Row`` or dict) to uint8 CHW; anything
    else through ``np.asarray``. Images come out in ``channel_order``
    (``"BGR"``, as Caffe and Spark store them, or ``"RGB"``; one channel when
    ``shape`` says so), resized to ``size`` ``(width, height)``, or for encoded
    bytes to the ``(C, H, W)`` of ``shape``. The array is not reshaped;
    ``blob`` (the input blob or column) is named when bytes are neither raw
    pixels nor an image.
    """
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "toArray"):  # pyspark.ml / mllib vectors
        return np.asarray(value.toArray())
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(bytes(value), np.uint8)
        if shape is not None and raw.size == math.prod(shape):
            return raw
        from sparknet.data.images import ImageDecodeError, decode_image

        three = shape is not None and len(shape) == 3
        color = "L" if three and shape[0] == 1 else channel_order.upper()
        if size is None and three:
            size = (shape[2], shape[1])
        try:
            img = decode_image(bytes(value), size=size, color=color)
        except ImageDecodeError as e:
            raise ImageDecodeError(f"'{blob}': {e}") from None
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    if (hasattr(value, "asDict") and hasattr(value, "__fields__")) or isinstance(value, Mapping):
        fields = _fields(value)
        if fields == _VECTOR_FIELDS:
            return _vector_struct(value, blob)
        if fields >= _IMAGE_STRUCT:
            return image_struct_to_array(value, size=size, channel_order=channel_order,
                                         dtype=np.uint8)
    return np.asarray(value)


def fit_to_blob(array: np.ndarray, shape: Sequence[int], blob: str, where: str) -> np.ndarray:
    """``array`` as input blob ``blob`` takes one example: ``shape``, numbers (not reshaped
    when it has that shape; ``DataError`` naming ``where`` and the blob otherwise)."""
    shape = tuple(shape)
    if array.dtype.kind not in "biuf":
        sample = array.reshape(-1)[0].item() if array.size else None
        raise DataError(f"{where}: input blob '{blob}' (a column or item of that name) gets "
                        f"values of dtype {array.dtype} (such as {sample!r}); Caffe takes "
                        f"numbers")
    if array.shape == shape:
        return array
    if array.size == math.prod(shape):
        return array.reshape(shape)
    raise DataError(f"{where}: input blob '{blob}' takes {shape_str(shape)} per example "
                    f"({math.prod(shape)} values), the data gives {shape_str(array.shape)}")


def to_blob(value: Any, shape: Sequence[int], blob: str, where: str) -> np.ndarray:
    """One value (of any kind :func:`to_array` reads) as input blob ``blob``'s example."""
    return fit_to_blob(to_array(value, shape, blob), shape, blob, where)


def to_blobs(values: Sequence[Any], shape: Sequence[int], blob: str,
             where: str = "row") -> np.ndarray:
    """A batch of values (a column's cells) as one ``(n, *shape)`` array for ``blob``.

    Each value goes through :func:`to_blob` (the message names ``where`` and
    the row); numeric arrays of the blob's size, the common case, are
    stacked in one step.
    """
    shape = tuple(shape)
    items = list(values)
    if items and all(isinstance(v, np.ndarray) and v.dtype.kind in "biuf" for v in items):
        first = items[0]
        if first.size == math.prod(shape) and all(v.shape == first.shape for v in items):
            return np.stack(items).reshape(len(items), *shape)
    return np.stack([to_blob(v, shape, blob, f"{where} {i}") for i, v in enumerate(items)])


def _column_converter(field: Any, shape: Sequence[int] | None, size: tuple[int, int] | None,
                      channel_order: str) -> Callable[[Any], Any]:
    """How a column's values become float32 arrays (numbers: floats).

    The type is checked here, once, from the schema; each value is converted
    by :func:`to_array` and reshaped to ``shape`` when given.
    """
    from pyspark.sql import types as T

    name = field.name
    dt = field.dataType
    if isinstance(dt, (T.NumericType, T.BooleanType)):
        return float
    image = isinstance(dt, T.StructType) and set(dt.names) >= _IMAGE_FIELDS
    if not (image or isinstance(dt, (T.BinaryType, T.ArrayType))
            or type(dt).__name__ == "VectorUDT"):
        raise TypeError(f"column '{name}' has type {dt.simpleString()}: sparknet reads image "
                        "structs, binary (encoded images, or raw bytes with a shape), numeric "
                        "arrays/vectors and numbers")

    def convert(v: Any) -> np.ndarray:
        a = np.asarray(to_array(v, None if image else shape, name, size=size,
                                channel_order=channel_order), np.float32)
        if shape is None or image:
            return a
        return fit_to_blob(a, shape, name, f"column '{name}'")
    return convert


def dataframe_to_rdd(df: Any, columns: Mapping[str, str] | Sequence[str] | None = None, *,
                     shapes: Mapping[str, Sequence[int]] | None = None,
                     size: tuple[int, int] | None = None, channel_order: str = "BGR") -> Any:
    """An RDD of dicts keyed by input blob name, from a DataFrame's columns.

    ``columns`` maps blob name -> column name (a list keeps the names; default:
    every column). Each column is converted by its type:

    * Spark's image struct (``spark.read.format("image")``) -> float32 CHW,
      ``channel_order`` BGR (as Spark and Caffe store it) or RGB, resized to
      ``size`` ``(width, height)`` when given;
    * binary -> an encoded image (JPEG, PNG...) decoded the same way, or raw
      uint8 bytes reshaped to ``shapes[blob]`` when a shape is given;
    * array<number> or an ML vector -> float32, reshaped to ``shapes[blob]``
      when given;
    * a number -> float (labels).
    """
    if columns is None:
        mapping = {c: c for c in df.columns}
    elif isinstance(columns, Mapping):
        mapping = dict(columns)
    else:
        mapping = {c: c for c in columns}
    fields = {f.name: f for f in df.schema.fields}
    missing = [c for c in mapping.values() if c not in fields]
    if missing:
        raise ValueError(f"the DataFrame has no column '{missing[0]}' "
                         f"(columns: {', '.join(df.columns)})")
    shapes = dict(shapes or {})
    converters = [(blob, col, _column_converter(fields[col], shapes.get(blob), size,
                                                channel_order))
                  for blob, col in mapping.items()]
    cols = [col for _, col, _ in converters]

    def convert(row: Any) -> dict[str, Any]:
        return {blob: fn(row[col]) for blob, col, fn in converters}
    return df.select(*cols).rdd.map(convert)


def batched(items: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    """Lists of ``batch_size`` consecutive items, the last one shorter if need be.

    The one "collect a batch, then flush" loop of the data side: minibatches,
    LMDB transactions, store writes. Each list is new (a caller may keep it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    it = iter(items)
    while batch := list(itertools.islice(it, batch_size)):
        yield batch
