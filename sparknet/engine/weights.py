"""WeightCollection: the learnable parameters of a net, as one flat buffer.

Every parameter blob of every learnable layer lives in a single contiguous
float32 array; the per-layer arrays handed out are views into it. That makes
the operations parameter averaging needs (sum, divide, mean) one vectorised
numpy call each, and pickling one buffer with no per-array copies (pickle
protocol 5 ``PickleBuffer``), which is what Spark broadcasts and collects.
"""
from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from sparknet._util import shape_str

Layout = tuple[tuple[str, tuple[tuple[int, ...], ...]], ...]


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_layouts(expected: Layout, given: Layout) -> None:
    """Raise ``ValueError`` naming the first layer or blob where ``given`` differs."""
    if expected == given:
        return
    mine, theirs = dict(expected), dict(given)
    for name, shapes in expected:
        if name not in theirs:
            raise ValueError(f"layer '{name}' is missing from the other WeightCollection")
        if len(shapes) != len(theirs[name]):
            raise ValueError(f"layer '{name}' has {len(shapes)} blobs here and "
                             f"{len(theirs[name])} in the other WeightCollection")
        for i, (a, b) in enumerate(zip(shapes, theirs[name])):
            if a != b:
                raise ValueError(f"layer '{name}' blob {i} has shape {shape_str(a)} here "
                                 f"and {shape_str(b)} in the other WeightCollection")
    extra = [n for n in theirs if n not in mine]
    if extra:
        raise ValueError(f"layer '{extra[0]}' is only in the other WeightCollection")
    raise ValueError("the WeightCollections list their layers in a different order")


class WeightCollection(Mapping[str, list[np.ndarray]]):
    """Layer name -> list of float32 parameter arrays, in the net's layer order.

    Build one from a mapping (``WeightCollection({"ip1": [w, b]})``), from
    ``CaffeNet.get_weights()`` (``get_weights(out=buffer)`` fills a buffer of
    yours instead of allocating), or with :meth:`mean`. Collections of the same
    layout support ``a + b``, ``a - b``, ``a * 2.0``, ``a / k`` and in-place
    ``+=``; combining collections of different layouts raises a ``ValueError``
    that names the first layer and blob that differ.
    """

    __slots__ = ("_flat", "_layout", "_views")

    def __init__(self, layers: Mapping[str, Sequence[Any]]):
        layout = tuple(
            (str(name), tuple(tuple(int(d) for d in np.shape(a)) for a in arrays))
            for name, arrays in layers.items()
        )
        flat = np.empty(sum(_count(s) for _, shapes in layout for s in shapes), np.float32)
        self._init(layout, flat)
        for name, arrays in layers.items():
            for view, array in zip(self._views[name], arrays):
                view[...] = array

    @classmethod
    def from_flat(cls, layout: Layout, flat: np.ndarray) -> WeightCollection:
        """Wrap an existing flat float32 buffer (no copy) laid out as ``layout``."""
        flat = np.asarray(flat)
        if flat.dtype != np.float32 or flat.ndim != 1:
            raise ValueError(f"flat must be a 1-d float32 array, got {flat.dtype} {flat.shape}")
        expected = sum(_count(s) for _, shapes in layout for s in shapes)
        if flat.size != expected:
            raise ValueError(f"flat has {flat.size} values, the layout needs {expected}")
        self = cls.__new__(cls)
        self._init(tuple(layout), flat)
        return self

    def _init(self, layout: Layout, flat: np.ndarray) -> None:
        self._layout = layout
        self._flat = flat
        views: dict[str, list[np.ndarray]] = {}
        offset = 0
        for name, shapes in layout:
            if name in views:
                raise ValueError(f"layer '{name}' appears twice in the layout")
            views[name] = []
            for shape in shapes:
                n = _count(shape)
                views[name].append(flat[offset:offset + n].reshape(shape))
                offset += n
        self._views = views

    # -- Mapping ---------------------------------------------------------------
    def __getitem__(self, name: str) -> list[np.ndarray]:
        try:
            return self._views[name]
        except KeyError:
            raise KeyError(f"no layer named '{name}' in this WeightCollection "
                           f"(layers: {', '.join(self._views) or 'none'})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    # -- structure ---------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        """``((layer, (shape, ...)), ...)``: what must match to combine two collections."""
        return self._layout

    @property
    def flat(self) -> np.ndarray:
        """All parameters as one float32 vector (the storage, not a copy)."""
        return self._flat

    @property
    def num_params(self) -> int:
        """How many parameters (float32 values) all layers hold together."""
        return int(self._flat.size)

    @property
    def nbytes(self) -> int:
        """The size of the flat buffer in bytes."""
        return int(self._flat.nbytes)

    def check_compatible(self, other: WeightCollection) -> None:
        """Raise ``ValueError`` naming the first layer or blob where layouts differ."""
        if not isinstance(other, WeightCollection):
            raise TypeError(f"expected a WeightCollection, got {type(other).__name__}")
        check_layouts(self._layout, other._layout)

    def copy(self) -> WeightCollection:
        """A deep copy (a new flat buffer, same layout)."""
        return WeightCollection.from_flat(self._layout, self._flat.copy())

    # -- arithmetic --------------------------------------------------------------
    def _other_flat(self, other: Any) -> np.ndarray | float:
        if isinstance(other, WeightCollection):
            self.check_compatible(other)
            return other._flat
        if isinstance(other, (int, float, np.number)):
            return float(other)
        return NotImplemented

    def _binary(self, other: Any, op) -> WeightCollection:
        rhs = self._other_flat(other)
        if rhs is NotImplemented:
            return NotImplemented
        return WeightCollection.from_flat(self._layout, op(self._flat, rhs).astype(np.float32,
                                                                                    copy=False))

    def __add__(self, other: Any) -> WeightCollection:
        return self._binary(other, np.add)

    def __radd__(self, other: Any) -> WeightCollection:
        if isinstance(other, (int, float)) and other == 0:  # sum() starts from 0
            return self.copy()
        return self._binary(other, np.add)

    def __sub__(self, other: Any) -> WeightCollection:
        return self._binary(other, np.subtract)

    def __mul__(self, other: Any) -> WeightCollection:
        if isinstance(other, WeightCollection):
            return NotImplemented
        return self._binary(other, np.multiply)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> WeightCollection:
        if isinstance(other, WeightCollection):
            return NotImplemented
        if other == 0:
            raise ZeroDivisionError("WeightCollection divided by zero")
        return self._binary(other, np.divide)

    def __iadd__(self, other: Any) -> WeightCollection:
        rhs = self._other_flat(other)
        if rhs is NotImplemented:
            return NotImplemented
        np.add(self._flat, rhs, out=self._flat)
        return self

    def __itruediv__(self, other: Any) -> WeightCollection:
        if other == 0:
            raise ZeroDivisionError("WeightCollection divided by zero")
        np.divide(self._flat, float(other), out=self._flat)
        return self

    @classmethod
    def mean(cls, collections: Iterable[WeightCollection]) -> WeightCollection:
        """The element-wise mean; holds one accumulator, however many are given."""
        total: WeightCollection | None = None
        n = 0
        for c in collections:
            if total is None:
                total = c.copy()
            else:
                total += c
            n += 1
        if total is None:
            raise ValueError("WeightCollection.mean of no collections")
        total /= n
        return total

    def allclose(self, other: WeightCollection, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        """True when layouts match and every value is close (``numpy.allclose``)."""
        self.check_compatible(other)
        return bool(np.allclose(self._flat, other._flat, rtol=rtol, atol=atol))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightCollection):
            return NotImplemented
        return self._layout == other._layout and bool(np.array_equal(self._flat, other._flat))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        layers = ", ".join(f"{n}: {' '.join(shape_str(s) for s in shapes)}"
                           for n, shapes in self._layout)
        return f"WeightCollection({self.num_params} params; {layers})"

    # -- pickling ----------------------------------------------------------------
    def __reduce_ex__(self, protocol: int):
        if protocol >= 5:
            buf: Any = pickle.PickleBuffer(np.ascontiguousarray(self._flat))
        else:
            buf = self._flat.tobytes()
        return _rebuild, (self._layout, buf)


def _rebuild(layout: Layout, buf: Any) -> WeightCollection:
    flat = np.frombuffer(buf, dtype=np.float32)
    if not flat.flags.writeable:
        flat = flat.copy()
    return WeightCollection.from_flat(layout, flat)
