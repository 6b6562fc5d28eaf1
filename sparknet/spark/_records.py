"""User examples -> per-example arrays for the net's input blobs.

An example is a tuple/list (``(array, label)``: the first item feeds the first
input blob, the second the second, ...), a mapping or ``Row`` keyed by input
blob name, or a row of a DataFrame whose columns are named after the input
blobs. Values may be numpy arrays, nested lists, numbers, ML vectors, raw
``bytes`` (uint8 pixels, when the size fits the blob) or encoded images, each
converted by the one conversion of :mod:`sparknet.data.rdd` (``to_array``, then
``fit_to_blob``) that ``predict`` and the ML stages use too.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparknet._util import shape_str  # noqa: F401 - imported from here by spark's modules
from sparknet.data.rdd import DataError, fit_to_blob, to_array
from sparknet.io import is_connect


def record_values(record: Any, names: Sequence[str], *, require_all: bool = True
                  ) -> dict[str, Any]:
    """The values of one example by input blob name."""
    if hasattr(record, "asDict") and hasattr(record, "__fields__"):  # a Row (also a tuple)
        record = record.asDict()
    if isinstance(record, Mapping):
        out = {}
        for n in names:
            if n in record:
                out[n] = record[n]
            elif require_all:
                raise DataError(f"an example has no value for input blob '{n}' "
                                f"(its keys: {', '.join(map(str, record)) or 'none'})")
        return out
    if isinstance(record, (tuple, list)):
        if len(record) > len(names) or (require_all and len(record) < len(names)):
            raise DataError(f"an example of {len(record)} items for {len(names)} input blobs "
                            f"({', '.join(names)}): give one item per blob, in that order")
        return dict(zip(names, record))
    if len(names) == 1:
        return {names[0]: record}
    raise DataError(f"an example is a tuple (one item per input blob: {', '.join(names)}), "
                    f"a dict or a Row keyed by blob name; got {type(record).__name__}")


def storage_dtype(array: np.ndarray) -> np.dtype:
    """How a value is kept in the worker store: uint8 stays uint8, the rest float32."""
    if array.dtype == np.uint8:
        return np.dtype(np.uint8)
    if array.dtype.kind not in "biuf":
        raise DataError(f"values of dtype {array.dtype} cannot be fed to Caffe (numbers needed)")
    return np.dtype(np.float32)


@dataclass
class ExampleSpec:
    """How workers turn raw examples into arrays (picklable; travels with the jobs)."""

    names: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]
    label_blobs: tuple[str, ...] = ()
    preprocess: Callable[[dict[str, np.ndarray]], Mapping[str, Any]] | None = None
    require_all: bool = True
    what: str = "train_data"
    #: Blobs a per-minibatch transform feeds: kept at the shape the data gives (a random
    #: crop needs the whole image), unless it holds exactly the blob's values.
    free: tuple[str, ...] = ()

    def convert(self, record: Any, where: str) -> dict[str, np.ndarray]:
        values = record_values(record, self.names, require_all=self.require_all)
        arrays = {n: to_array(v, self.shapes.get(n), n) for n, v in values.items()}
        if self.preprocess is not None:
            out = self.preprocess(arrays)
            if not isinstance(out, Mapping):
                raise DataError(f"preprocess returned {type(out).__name__}; it must return a "
                                "dict of input blob name -> array")
            arrays = {n: (v if isinstance(v, np.ndarray) else to_array(v, self.shapes.get(n), n))
                      for n, v in out.items()}
        return {n: (a if n in self.free and a.size != math.prod(self.shapes[n])
                    else fit_to_blob(a, self.shapes[n], n, where))
                for n, a in arrays.items() if n in self.shapes}


def select_columns(df: Any, names: Sequence[str], *, require_all: bool = True,
                   what: str = "train_data") -> Any:
    """The DataFrame's columns named after input blobs (all of them, unless not required)."""
    cols = [n for n in names if n in df.columns]
    missing = [n for n in names if n not in df.columns]
    if missing and require_all:
        raise DataError(f"{what}: the DataFrame has no column '{missing[0]}' for input blob "
                        f"'{missing[0]}' (columns: {', '.join(df.columns)}); name the columns "
                        f"after the net's input blobs ({', '.join(names)})")
    return df.select(*cols)


def dataframe_records(df: Any, names: Sequence[str], shapes: Mapping[str, Sequence[int]],
                      *, require_all: bool = True, what: str = "train_data") -> Any:
    """An RDD of dicts from a DataFrame whose columns are named after input blobs."""
    return select_columns(df, names, require_all=require_all, what=what).rdd


def is_dataframe(data: Any) -> bool:
    """Whether ``data`` is a DataFrame (a classic one, or a Spark Connect one, which has no rdd)."""
    if is_connect(data):
        return type(data).__name__ == "DataFrame"
    return hasattr(data, "rdd") and hasattr(data, "schema") and hasattr(data, "columns")
