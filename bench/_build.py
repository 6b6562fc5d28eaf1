"""Bench helper: the Caffe build this checkout uses (from caffe/build.py)."""
from __future__ import annotations

import subprocess
import sys
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


def compile_against_caffe(source: Path, output: Path) -> Path:
    """Compile a C++ program against the same libcaffe sparknet links."""
    info = caffe_build_info()
    lib = info["library_dirs"][0]
    cmd = ["g++", "-O2", "-std=c++14", "-w", str(source), "-o", str(output),
           "-include", str(ROOT / "caffe" / "sparknet_fatal.hpp"),
           *[f"-I{d}" for d in info["include_dirs"]], *[f"-D{d}" for d in info["define_macros"]],
           f"-L{lib}", f"-Wl,-rpath,{lib}", *[f"-l{x}" for x in info["libraries"]]]
    subprocess.run(cmd, check=True)
    return output
