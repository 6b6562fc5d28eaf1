"""Caffe-style preprocessing over whole batches, and ``mean.binaryproto`` files.

:class:`Transformer` does what Caffe's ``DataTransformer`` does to a datum,
for a whole ``(N, C, H, W)`` batch at once: crop (random offsets in TRAIN,
the centre in TEST), mirror (a random half of the images when ``mirror`` is
set, in either phase, as in Caffe), subtract the mean image (cropped at the
same offset) or per-channel mean values, multiply by ``scale``; output
float32 NCHW. It is built from keyword arguments, from a
``caffe_pb2.TransformationParameter``, or from a prototxt's data layer.
"""
from __future__ import annotations

import functools
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.io import PathLike, atomic_write_bytes
from sparknet.proto import caffe_pb2
from sparknet.proto.rules import layer_active, net_state

try:  # the compiled one-pass crop/mirror/mean (built with the package)
    from sparknet.data import _kernels
except ImportError:  # pragma: no cover - a source checkout before `make build`
    _kernels = None

log = logging.getLogger(__name__)

# Outputs at least this large are recycled (see ``Transformer._output``): a fresh
# allocation of that size comes from mmap, and the kernel zeroes every page of it on
# first touch, which costs about a third of the transform itself.
_RECYCLE_MIN_BYTES = 1 << 22
_RECYCLE_KEEP = 2  # the batch being filled and the one the caller still holds
# Recycling relies on exact reference counts (CPython with the GIL).
_CAN_RECYCLE = (sys.implementation.name == "cpython"
                and getattr(sys, "_is_gil_enabled", lambda: True)())


def _unheld_refs() -> int:
    """``sys.getrefcount(pool[k])`` of an array that only the list ``pool`` holds."""
    pool = [np.empty(1)]
    return sys.getrefcount(pool[0])


_UNHELD = _unheld_refs()

_PHASES = {"TRAIN": "TRAIN", "TEST": "TEST", "train": "TRAIN", "test": "TEST",
           caffe_pb2.TRAIN: "TRAIN", caffe_pb2.TEST: "TEST"}


# -- mean.binaryproto ---------------------------------------------------------------------

def mean_to_blobproto(mean: np.ndarray) -> caffe_pb2.BlobProto:
    """A ``BlobProto`` of shape ``(1, C, H, W)`` as Caffe's ``compute_image_mean`` writes."""
    m = np.asarray(mean, np.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3:
        raise ValueError(f"a mean image is (C, H, W), got shape {m.shape}")
    blob = caffe_pb2.BlobProto()
    blob.num, blob.channels, blob.height, blob.width = 1, *m.shape
    blob.data.extend(m.reshape(-1).tolist())
    return blob


def blobproto_to_array(blob: caffe_pb2.BlobProto, name: str = "blob") -> np.ndarray:
    """A ``BlobProto``'s data with its shape (legacy num/channels/height/width or ``shape``)."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    elif any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        shape = (blob.num, blob.channels, blob.height, blob.width)
    else:
        shape = (len(blob.data) or len(blob.double_data),)
    values = np.asarray(blob.data, np.float32) if len(blob.data) else \
        np.asarray(blob.double_data, np.float32)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{name}: {values.size} values for shape {shape}")
    return values.reshape(shape)


def write_mean(path: PathLike, mean: np.ndarray) -> None:
    """Save a ``(C, H, W)`` mean image as Caffe's ``mean.binaryproto`` (atomically)."""
    atomic_write_bytes(path, mean_to_blobproto(mean).SerializeToString())


def read_mean(path: PathLike) -> np.ndarray:
    """A ``mean.binaryproto`` -> float32 ``(C, H, W)``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such mean file") from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: any failure means "not a BlobProto"
        raise ValueError(f"{path}: not a BlobProto ({e})") from None
    a = blobproto_to_array(blob, str(path))
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"{path}: a mean has num 1, this blob has shape {a.shape}")
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"{path}: a mean image is (1, C, H, W), got shape {a.shape}")
    return a


def compute_mean(data: Any) -> np.ndarray:
    """The mean image (float32 ``(C, H, W)``) of an RDD or iterable of examples.

    Elements may be arrays, ``(array, label)`` pairs or dicts with a
    ``"data"`` entry. On an RDD the sum runs on the workers (float64 per
    partition, tree-reduced), so only one image-sized array per partition
    reaches the driver.
    """
    def part(examples: Iterable[Any]) -> Iterator[tuple[np.ndarray | None, int]]:
        total: np.ndarray | None = None
        n = 0
        for e in examples:
            a = e["data"] if isinstance(e, dict) else (e[0] if isinstance(e, tuple) else e)
            a = np.asarray(a)
            if total is None:
                total = np.zeros(a.shape, np.float64)
            elif a.shape != total.shape:
                raise ValueError(f"examples differ in shape: {a.shape} and {total.shape}")
            total += a
            n += 1
        yield total, n

    def merge(a: tuple[np.ndarray | None, int], b: tuple[np.ndarray | None, int]
              ) -> tuple[np.ndarray | None, int]:
        if a[0] is None:
            return b
        if b[0] is None:
            return a
        if a[0].shape != b[0].shape:
            raise ValueError(f"examples differ in shape: {a[0].shape} and {b[0].shape}")
        return a[0] + b[0], a[1] + b[1]

    if hasattr(data, "mapPartitions"):
        total, n = data.mapPartitions(part).treeReduce(merge)
    else:
        total, n = next(part(data))
    if not n or total is None:
        raise ValueError("compute_mean: no examples")
    return (total / n).astype(np.float32)


# -- Transformer --------------------------------------------------------------------------

class Transformer:
    """Caffe's ``TransformationParameter`` applied to a whole batch.

    ``crop_size``: square crop (0: none); random offsets in ``phase="TRAIN"``,
    the centre in ``"TEST"``. ``mirror``: flip a random half horizontally
    (as Caffe does in both phases). ``mean``: a ``(C, H, W)`` mean image (of
    the *uncropped* input, cropped with the data as Caffe does) or one value
    per channel (or one for all). ``scale``: multiplies after the mean is
    subtracted. ``swap_channels``: reverse the channel axis first (RGB <->
    BGR); the mean is in the output's channel order. ``seed``: the random
    generator's seed.

    Call it on a uint8 or float ``(N, C, H, W)`` batch (``layout="NHWC"`` for
    channels-last input) to get float32 ``(N, C, crop, crop)``. Large output
    batches are recycled: one the caller has dropped (no reference and no view
    left) is filled again by a later call instead of allocating a new one, so
    keep a batch, or a view of it, for as long as you use it (as Python
    code does anyway); ``out=`` gives the buffer explicitly. ``mean`` is
    read-only once given (a mirrored copy of a mean image is cached).
    """

    def __init__(self, *, crop_size: int = 0, mirror: bool = False, scale: float = 1.0,
                 mean: np.ndarray | Sequence[float] | float | None = None,
                 phase: str | int = "TRAIN", swap_channels: bool = False,
                 seed: int | None = None):
        if phase not in _PHASES:
            raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
        if crop_size < 0:
            raise ValueError(f"crop_size must be >= 0, got {crop_size}")
        self.crop_size = int(crop_size)
        self.mirror = bool(mirror)
        self.scale = float(scale)
        self.phase = _PHASES[phase]
        self.swap_channels = bool(swap_channels)
        self.mean_image: np.ndarray | None = None
        self.mean_values: np.ndarray | None = None
        if mean is not None:
            m = np.asarray(mean, np.float32)
            if m.ndim == 3:
                self.mean_image = m
            elif m.ndim <= 1:
                self.mean_values = m.reshape(-1)
            else:
                raise ValueError(f"mean is a (C, H, W) image or per-channel values, "
                                 f"got shape {m.shape}")
        self.rng = np.random.default_rng(seed)
        self._init_caches()

    def _init_caches(self) -> None:
        self._pool: list[np.ndarray] = []  # output batches to recycle (see _output)
        self._pool_lock = threading.Lock()
        self._flipped: tuple[np.ndarray, np.ndarray] | None = None  # (mean, mirrored copy)

    def __getstate__(self) -> dict[str, Any]:
        # shipped to Spark workers: without the recycled batches (tens of MB) or the lock
        state = self.__dict__.copy()
        for k in ("_pool", "_pool_lock", "_flipped"):
            state.pop(k, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_caches()

    # -- construction --------------------------------------------------------------
    @classmethod
    def from_proto(cls, param: caffe_pb2.TransformationParameter, phase: str | int = "TRAIN",
                   *, root: PathLike | None = None, seed: int | None = None,
                   swap_channels: bool = False) -> Transformer:
        """From a ``TransformationParameter``; ``mean_file`` is read (relative to ``root``)."""
        if param.HasField("mean_file") and len(param.mean_value):
            raise ValueError("transform_param: specify either mean_file or mean_value, not both "
                             "(Caffe refuses both)")
        mean: Any = None
        if param.HasField("mean_file"):
            path = Path(param.mean_file)
            if root is not None and not path.is_absolute():
                path = Path(root) / path
            mean = read_mean(path)
        elif len(param.mean_value):
            mean = list(param.mean_value)
        if param.force_color or param.force_gray:
            log.info("transform_param force_color/force_gray apply when decoding; "
                     "decode with color='BGR'/'L' instead")
        return cls(crop_size=param.crop_size, mirror=param.mirror, scale=param.scale, mean=mean,
                   phase=phase, seed=seed, swap_channels=swap_channels)

    @classmethod
    def from_prototxt(cls, prototxt: PathLike | str, phase: str | int = "TRAIN", *,
                      layer: str | None = None, root: PathLike | None = None,
                      seed: int | None = None) -> Transformer:
        """From the ``transform_param`` of a net prototxt's data layer.

        ``prototxt`` is a file path or the text itself. The layer is the one
        named ``layer``, else the first layer with a ``transform_param`` that
        runs in ``phase``. A relative ``mean_file`` is resolved against
        ``root`` (default: the current folder, as Caffe does).
        """
        from google.protobuf import text_format

        text = str(prototxt)
        where = "<text>"
        if "\n" not in text and "{" not in text:
            path = Path(text)
            try:
                text = path.read_text()
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no such prototxt") from None
            where = str(path)
        net = caffe_pb2.NetParameter()
        try:
            text_format.Parse(text, net)
        except text_format.ParseError as e:
            raise ValueError(f"{where}: {e}") from None
        want = _PHASES.get(phase)
        if want is None:
            raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
        for lp in net.layer:
            if layer is not None:
                if lp.name != layer:
                    continue
                if not lp.HasField("transform_param"):
                    raise ValueError(f"{where}: layer '{layer}' has no transform_param")
                return cls.from_proto(lp.transform_param, phase, root=root, seed=seed)
            if lp.HasField("transform_param") and layer_active(lp, want, *net_state(net)):
                return cls.from_proto(lp.transform_param, phase, root=root, seed=seed)
        if layer is not None:
            raise ValueError(f"{where}: no layer named '{layer}'")
        raise ValueError(f"{where}: no layer with a transform_param runs in phase {want}")

    # -- shapes --------------------------------------------------------------------
    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape for an ``(N, C, H, W)`` input."""
        n, c, h, w = input_shape
        if self.crop_size:
            return (n, c, self.crop_size, self.crop_size)
        return (n, c, h, w)

    def __repr__(self) -> str:
        mean = ("image " + "x".join(map(str, self.mean_image.shape)) if self.mean_image is not None
                else (self.mean_values.tolist() if self.mean_values is not None else None))
        return (f"Transformer(phase={self.phase}, crop_size={self.crop_size}, "
                f"mirror={self.mirror}, scale={self.scale}, mean={mean})")

    # -- the work ------------------------------------------------------------------
    def _output(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 output batch: a recycled one when nobody holds it any more.

        A large fresh array costs page faults and the kernel's zeroing of every
        page on first touch. So the last few output batches are kept, and one is
        handed out again once the only references left to it are this pool's
        (a caller still holding a batch, or any view of it, keeps it out of
        reuse; a dropped batch is recycled as its memory would have been freed).
        """
        if not _CAN_RECYCLE or int(np.prod(shape)) * 4 < _RECYCLE_MIN_BYTES:
            return np.empty(shape, np.float32)
        pool = self._pool
        with self._pool_lock:  # two threads must not both take the same free batch
            spare = -1
            for k in range(len(pool)):
                if sys.getrefcount(pool[k]) == _UNHELD:  # held by the pool alone
                    if pool[k].shape == shape:
                        return pool[k]
                    spare = k
            out = np.empty(shape, np.float32)
            if len(pool) < _RECYCLE_KEEP:
                pool.append(out)
            elif spare >= 0:
                pool[spare] = out  # a free batch of another shape (say, a short last batch)
            return out

    def _mirrored(self, mean_image: np.ndarray) -> np.ndarray:
        """The mean image mirrored left-right (cached)."""
        if self._flipped is None or self._flipped[0] is not mean_image:
            self._flipped = (mean_image, np.ascontiguousarray(mean_image[:, :, ::-1]))
        return self._flipped[1]

    def offsets(self, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Crop offsets (rows, cols) and mirror flags for a batch of ``n``, as Caffe draws them."""
        c = self.crop_size
        if c and (c > h or c > w):
            raise ValueError(f"crop_size {c} is larger than the input ({h}x{w})")
        if not c:
            ys = np.zeros(n, np.int64)
            xs = np.zeros(n, np.int64)
        elif self.phase == "TRAIN":
            ys = self.rng.integers(0, h - c + 1, n)
            xs = self.rng.integers(0, w - c + 1, n)
        else:
            ys = np.full(n, (h - c) // 2, np.int64)
            xs = np.full(n, (w - c) // 2, np.int64)
        flips = self.rng.random(n) < 0.5 if self.mirror else np.zeros(n, bool)
        return ys, xs, flips

    def __call__(self, batch: np.ndarray, *, layout: str = "NCHW",
                 out: np.ndarray | None = None) -> np.ndarray:
        """Transform a batch; returns float32 ``(N, C, crop, crop)`` (or ``out``).

        ``layout="NHWC"`` takes channels-last input (what image decoders
        produce); the transpose to CHW happens in the same pass as the crop.
        """
        x = np.asarray(batch)
        lay = layout.upper()
        if lay not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ValueError(f"expected an ({'N, H, W, C' if lay == 'NHWC' else 'N, C, H, W'}) "
                             f"batch, got shape {np.asarray(batch).shape}")
        # work on a CHW *view*: strides only, the copy below does the real transpose
        chw = x.transpose(0, 3, 1, 2) if lay == "NHWC" else x
        if self.swap_channels:
            chw = chw[:, ::-1]
        n, c, h, w = chw.shape
        ch, cw = (self.crop_size, self.crop_size) if self.crop_size else (h, w)
        mean_image = self.mean_image
        if mean_image is not None and mean_image.shape != (c, h, w):
            raise ValueError(f"the mean image has shape {mean_image.shape}, the input "
                             f"{(c, h, w)} (Caffe requires them equal)")
        mean_values = self.mean_values
        if mean_values is not None and mean_values.size not in (1, c):
            raise ValueError(f"{mean_values.size} mean values for {c} channels "
                             "(give one, or one per channel)")
        ys, xs, flips = self.offsets(n, h, w)
        if out is None:
            out = self._output((n, c, ch, cw))
        elif out.shape != (n, c, ch, cw) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {(n, c, ch, cw)}, got {out.dtype} {out.shape}")
        if n and not self.mirror and (self.phase == "TEST" or not self.crop_size):
            # the same window for every image: one copy for the whole batch
            y0, x0 = int(ys[0]), int(xs[0])
            np.copyto(out, chw[:, :, y0:y0 + ch, x0:x0 + cw])
            if mean_image is not None:
                out -= mean_image[:, y0:y0 + ch, x0:x0 + cw]
        elif (kernel := None if self.swap_channels else _kernel_for(x, lay)) is not None:
            # the training-time paths (the trainer's cached NCHW examples, decoded JPEGs in
            # NHWC): one compiled pass per image, the same floats as the loop below
            mean = (None if mean_image is None
                    else np.ascontiguousarray(mean_image, dtype=np.float32))
            kernel(x, np.ascontiguousarray(ys, np.int64), np.ascontiguousarray(xs, np.int64),
                   flips.astype(np.uint8), mean,
                   None if mean is None else self._mirrored(mean), out)
        else:
            # one image at a time (its own window and flip), in two passes over its output:
            # crop + mirror + CHW + float in one copy, then the mean subtracted in place.
            # A mirrored image takes its mean window from a mirrored copy of the mean, so
            # that subtraction runs over memory in order too.
            flipped = self._mirrored(mean_image) if mean_image is not None and flips.any() \
                else None
            for i in range(n):
                y0, x0 = int(ys[i]), int(xs[i])
                src = chw[i, :, y0:y0 + ch, x0:x0 + cw]
                o = out[i]
                if flips[i]:
                    np.copyto(o, src[:, :, ::-1])
                    if flipped is not None:
                        o -= flipped[:, y0:y0 + ch, w - x0 - cw:w - x0]
                else:
                    np.copyto(o, src)
                    if mean_image is not None:
                        o -= mean_image[:, y0:y0 + ch, x0:x0 + cw]
        if mean_values is not None:
            out -= mean_values.reshape(1, -1, 1, 1) if mean_values.size > 1 else mean_values[0]
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out


def _kernel_for(x: np.ndarray, layout: str) -> Callable[..., None] | None:
    """The compiled crop/mirror/mean kernel for a batch of this layout and dtype, if any.

    Planar (NCHW) uint8 or float32 batches, as the Spark trainer caches
    examples, and uint8 NHWC batches, as images are decoded, when C-contiguous.
    """
    if _kernels is None or not x.flags.c_contiguous:
        return None
    if layout == "NCHW" and x.dtype in (np.uint8, np.float32):
        return functools.partial(_kernels.crop_mirror_mean, planar=True)
    if layout == "NHWC" and x.dtype == np.uint8:
        return _kernels.crop_mirror_mean
    return None



def transform_batches(examples: Iterable[Any], transformer: Transformer, batch_size: int
                      ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group ``(array, label)`` examples into transformed ``(x, y)`` minibatches."""
    from sparknet.data.rdd import batched

    for chunk in batched(examples, batch_size):
        yield (transformer(np.stack([np.asarray(a) for a, _ in chunk])),
               np.asarray([float(label) for _, label in chunk], np.float32))


__all__ = ["Transformer", "blobproto_to_array", "compute_mean", "mean_to_blobproto",
           "read_mean", "transform_batches", "write_mean"]

