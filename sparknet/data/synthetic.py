"""Synthetic photo-like images and tar shards, for tests, benchmarks and trial runs.

The images are smooth random colour fields with fine noise on top, so that
JPEG sizes and decode times resemble photographs rather than flat colours or
pure noise. Nothing is downloaded.
"""
from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

import numpy as np
from PIL import Image

from sparknet.io import PathLike, atomic_file


def photo(width: int, height: int, rng: np.random.Generator | int = 0) -> np.ndarray:
    """A uint8 ``(height, width, 3)`` photo-like RGB image."""
    rng = np.random.default_rng(rng)
    cells = rng.random((max(2, height // 24 + 2), max(2, width // 24 + 2), 3)) * 255
    base = Image.fromarray(cells.astype(np.uint8)).resize((width, height),
                                                          Image.Resampling.BICUBIC)
    a = np.asarray(base, np.float32)
    a += rng.normal(0.0, 10.0, (height, width, 1)).astype(np.float32)
    return np.clip(a, 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode a uint8 HWC RGB (or HW grey) image."""
    buf = io.BytesIO()
    kwargs = {"quality": quality} if fmt.upper() in ("JPEG", "JPG") else {}
    Image.fromarray(image).save(buf, "JPEG" if fmt.upper() == "JPG" else fmt.upper(), **kwargs)
    return buf.getvalue()


def photo_jpeg(width: int, height: int, rng: np.random.Generator | int = 0,
               quality: int = 90) -> bytes:
    """JPEG bytes of :func:`photo`."""
    return encode(photo(width, height, rng), "JPEG", quality)


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed tar holding ``(name, bytes)`` members, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_tar(path: PathLike, members: Iterable[tuple[str, bytes]]) -> None:
    """Write :func:`tar_bytes` to ``path`` atomically."""
    with atomic_file(path) as f:
        f.write(tar_bytes(members))
