"""Bench helper: the Caffe build this checkout uses (from caffe/build.py)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def caffe_build_info(blas: str | None = None, patch_set: str | None = None) -> dict:
    """build.json of the Caffe build for ``blas`` (default: this checkout's), built if missing.

    ``patch_set`` is ``all`` or ``none`` (caffe/patches/; default: this checkout's).
    """
    sys.path.insert(0, str(ROOT / "caffe"))
    try:
        import build
    finally:
        sys.path.pop(0)
    return build.ensure_built(choice=blas, patch_set=patch_set)


def compile_against_caffe(source: Path) -> Path:
    """A C++ program compiled against the same libcaffe sparknet links (cached).

    The binary lives in that Caffe build's cache entry, named by a hash of the
    compiler command and of every file it reads from this checkout, so a changed
    source or build compiles anew and an unchanged one (every smoke run in the
    test suite) does not pay for g++ again. Written to a temporary name and
    renamed, so a concurrent run never executes a half-written binary.
    """
    info = caffe_build_info()
    lib = info["library_dirs"][0]
    fatal = ROOT / "caffe" / "sparknet_fatal.hpp"
    flags = ["-O2", "-std=c++14", "-w", "-include", str(fatal),
             *[f"-I{d}" for d in info["include_dirs"]], *[f"-D{d}" for d in info["define_macros"]],
             f"-L{lib}", f"-Wl,-rpath,{lib}", *[f"-l{x}" for x in info["libraries"]]]
    key = hashlib.sha256("\0".join(flags).encode() + source.read_bytes()
                         + fatal.read_bytes()).hexdigest()[:16]
    output = Path(lib).parent / "bench" / f"{source.stem}-{key}"
    if output.is_file():
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}-", dir=output.parent)
    os.close(fd)
    try:
        subprocess.run(["g++", str(source), "-o", tmp, *flags], check=True)
        os.replace(tmp, output)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return output
