"""Image decoding and resizing: fast JPEG paths, reduced-DCT decoding, clear failures.

JPEGs are decoded with libjpeg-turbo through ``simplejpeg`` when it is
installed (a wheel on PyPI), else with Pillow. When an image is at least
twice the target size, it is decoded at a reduced DCT scale (1/2, 1/4, 1/8:
``simplejpeg``'s ``min_width``/``min_height``, Pillow's ``draft()``) and only
then resized, which is much cheaper than decoding every pixel. Other formats
(PNG, GIF, BMP, ...) go through Pillow.

Every failure — not an image, corrupt or truncated data, an absurd size —
raises :class:`ImageDecodeError`, which callers turn into a counted skip.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from sparknet._util import UserError

try:  # libjpeg-turbo with little overhead; optional
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - exercised where simplejpeg is absent
    _simplejpeg = None

log = logging.getLogger(__name__)

#: Images with more pixels than this are refused (decompression bombs).
MAX_PIXELS = 200_000_000

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageDecodeError(UserError, ValueError):
    """The bytes are not a readable image (corrupt, truncated, unsupported, too large)."""


def has_fast_jpeg() -> bool:
    """Whether the libjpeg-turbo fast path (``simplejpeg``) is available."""
    return _simplejpeg is not None


def is_jpeg(data: bytes) -> bool:
    """Whether the bytes start as a JPEG file does."""
    return data[:3] == b"\xff\xd8\xff"


def _resample(resample: str | int) -> int:
    if isinstance(resample, str):
        try:
            return _RESAMPLE[resample.lower()]
        except KeyError:
            raise ValueError(f"unknown resample filter {resample!r}; "
                             f"use one of {sorted(_RESAMPLE)}") from None
    return int(resample)


def _mode(color: str) -> tuple[str, bool]:
    """Pillow mode and whether to reverse channels afterwards."""
    c = color.upper()
    if c == "RGB":
        return "RGB", False
    if c == "BGR":
        return "RGB", True
    if c in ("L", "GRAY", "GREY"):
        return "L", False
    raise ValueError(f"color must be 'RGB', 'BGR' or 'L', got {color!r}")


def resize_array(hwc: np.ndarray, size: tuple[int, int], resample: str | int = "bilinear"
                 ) -> np.ndarray:
    """Resize a uint8 HWC (or HW) array to ``size`` = ``(width, height)``."""
    squeeze = hwc.ndim == 3 and hwc.shape[2] == 1
    img = Image.fromarray(hwc[:, :, 0] if squeeze else hwc)
    out = np.asarray(img.resize(tuple(size), _resample(resample)))
    return out[:, :, None] if squeeze or out.ndim == 2 else out


def _check_pixels(w: int, h: int) -> None:
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"image has size {w}x{h}")
    if w * h > MAX_PIXELS:
        raise ImageDecodeError(f"image of {w}x{h} pixels is larger than MAX_PIXELS "
                               f"({MAX_PIXELS}); refusing to decode it")


def _decode_simplejpeg(data: bytes, size: tuple[int, int] | None, color: str) -> np.ndarray:
    h, w, _, _ = _simplejpeg.decode_jpeg_header(data)
    _check_pixels(w, h)
    cs = {"RGB": "RGB", "BGR": "BGR"}.get(color.upper(), "GRAY")
    kwargs = {}
    if size is not None:
        kwargs = {"min_width": int(size[0]), "min_height": int(size[1])}
    return _simplejpeg.decode_jpeg(data, colorspace=cs, strict=True, **kwargs)


def _decode_pil(data: bytes, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        _check_pixels(*im.size)
        if size is not None and im.format == "JPEG":
            im.draft(mode, tuple(size))  # reduced DCT scale, never below size
        if im.mode != mode:
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")  # flatten on black like OpenCV: drop alpha
                im = im.convert(mode)
            else:
                im = im.convert(mode)
        else:
            im.load()
        a = np.asarray(im)
    return a[:, :, None] if a.ndim == 2 else a


def decode_image(data: bytes, size: tuple[int, int] | None = None, *, color: str = "RGB",
                 resample: str | int = "bilinear") -> np.ndarray:
    """Decode image bytes into a uint8 HWC array (``C`` = 3, or 1 for ``color="L"``).

    ``size`` ``(width, height)`` resizes (aspect ratio not kept, as Caffe's
    ``convert_imageset`` and SparkNet do), decoding JPEGs at a reduced DCT
    scale first when the source is at least twice as large. ``color`` is
    ``"RGB"``, ``"BGR"`` (Caffe/OpenCV order) or ``"L"``. Raises
    :class:`ImageDecodeError` for anything that is not a readable image.
    """
    if not data:
        raise ImageDecodeError("empty file")
    mode, reverse = _mode(color)
    a: np.ndarray | None = None
    try:
        if _simplejpeg is not None and is_jpeg(data):
            try:
                a = _decode_simplejpeg(data, size, color)
                reverse = False  # simplejpeg wrote the asked-for channel order
                if a.ndim == 2:
                    a = a[:, :, None]
            except ImageDecodeError:
                raise
            except Exception:  # noqa: BLE001 - the fast decoder failed in any way: fall back to Pillow, which names the error
                a = None
        if a is None:
            a = _decode_pil(data, size, mode)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(str(e)) from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise ImageDecodeError(f"cannot decode image: {e}") from None
    if reverse:
        a = a[:, :, ::-1]
    if size is not None and (a.shape[1], a.shape[0]) != tuple(size):
        a = resize_array(np.ascontiguousarray(a), size, resample)
    return np.ascontiguousarray(a)


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the header only."""
    try:
        if _simplejpeg is not None and is_jpeg(data):
            h, w, _, _ = _simplejpeg.decode_jpeg_header(data)
            return int(w), int(h)
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"cannot read image header: {e}") from None


def decode_batch(images: Sequence[bytes], size: tuple[int, int] | None = None, *,
                 color: str = "RGB", layout: str = "NCHW", out: np.ndarray | None = None
                 ) -> np.ndarray:
    """Decode many images into one uint8 batch, ``(N, C, H, W)`` or ``(N, H, W, C)``.

    ``size`` ``(width, height)``: images of another size are resized to it
    (default: the first image's size). JPEGs of exactly that size are decoded
    straight into one HWC buffer (``out``, reused if given and of the right
    shape), which ``layout="NHWC"`` returns as is and ``"NCHW"`` transposes
    in one pass. Raises :class:`ImageDecodeError` naming the batch index of a
    bad image.
    """
    n = len(images)
    channels = 1 if _mode(color)[0] == "L" else 3
    if size is None:
        if not n:
            raise ValueError("an empty batch needs an explicit size")
        try:
            size = image_size(images[0])
        except ImageDecodeError as e:
            raise ImageDecodeError(f"image 0 of the batch: {e}") from None
    w, h = int(size[0]), int(size[1])
    if layout.upper() not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    nhwc = layout.upper() == "NHWC"
    if nhwc and out is not None and out.shape == (n, h, w, channels) and out.dtype == np.uint8:
        hwc = out
    else:
        hwc = np.empty((n, h, w, channels), np.uint8)
    fast = _simplejpeg is not None and channels == 3
    cs = color.upper()
    for i, data in enumerate(images):
        try:
            if fast and is_jpeg(data):
                hh, ww, _, _ = _simplejpeg.decode_jpeg_header(data)
                if (ww, hh) == (w, h):
                    _simplejpeg.decode_jpeg(data, colorspace=cs, strict=True, buffer=hwc[i])
                    continue
            hwc[i] = decode_image(data, (w, h), color=color)
        except ImageDecodeError as e:
            raise ImageDecodeError(f"image {i} of the batch: {e}") from None
        except (ValueError, OSError) as e:
            raise ImageDecodeError(f"image {i} of the batch: cannot decode image: {e}") from None
    if nhwc:
        return hwc
    if out is None or out.shape != (n, channels, h, w) or out.dtype != np.uint8:
        out = np.empty((n, channels, h, w), np.uint8)
    np.copyto(out, hwc.transpose(0, 3, 1, 2))
    return out


def encode_jpeg(hwc: np.ndarray, quality: int = 90, *, color: str = "RGB") -> bytes:
    """JPEG bytes of a uint8 HWC array (``color`` gives its channel order)."""
    a = np.ascontiguousarray(hwc)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and color.upper() == "BGR":
        a = np.ascontiguousarray(a[:, :, ::-1])
    if _simplejpeg is not None:
        if a.ndim == 2:
            return _simplejpeg.encode_jpeg(a[:, :, None], quality=quality, colorspace="GRAY")
        return _simplejpeg.encode_jpeg(a, quality=quality, colorspace="RGB")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
