"""Which BLAS Caffe runs on, which kernels it picked, and its threads.

Caffe's CPU speed is its BLAS's GEMM. ``libcaffe.so`` is linked to the BLAS
chosen at build time (``SPARKNET_BLAS``, see ``caffe/build.py``); setup.py
records that choice in ``build_info.json`` next to the engine extension.
:func:`prepare` runs before ``libcaffe.so`` is loaded (environment variables a
BLAS reads only while it loads); :func:`build_info` describes the library
actually loaded, found with ``threadpoolctl``; :func:`check_kernels` warns when
the kernels in use are a generic fallback on a CPU with AVX2 or AVX-512.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import json
import logging
import os
import re
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_BUILD_INFO = Path(__file__).with_name("build_info.json")

# OpenBLAS core names (openblas_get_corename, lower case) whose SGEMM kernels use
# the instruction set named.
_AVX512_CORES = {"skylakex", "cooperlake", "sapphirerapids"}
_AVX2_CORES = _AVX512_CORES | {"haswell", "zen"}
_AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}
_AVX2_FLAGS = {"avx2", "fma"}

# The library file of each build choice (also after auditwheel renames it to
# name-<hash>.so). numpy's own OpenBLAS (libscipy_openblas64_...) never matches.
_LIBRARY_NAMES = {
    "openblas": re.compile(r"^libscipy_openblas[.-]"),
    "system": re.compile(r"^libopenblas"),
    "mkl": re.compile(r"^libmkl_rt"),
}


_loaded_before_engine = False


class BlasWarning(RuntimeWarning):
    """The BLAS in use runs slower kernels than this CPU supports."""


def _libcaffe_dir() -> Path:
    """Where the libcaffe.so this process loads is: a directory of ``LD_LIBRARY_PATH``
    holding one (searched first, as the dynamic loader does), else the engine's."""
    for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        if d and (Path(d) / "libcaffe.so").exists():
            return Path(d)
    return _BUILD_INFO.parent


@cache
def compiled_with() -> dict[str, Any]:
    """The build description next to libcaffe.so (Caffe package, flavor, BLAS)."""
    try:
        return json.loads((_libcaffe_dir() / _BUILD_INFO.name).read_text())
    except FileNotFoundError:
        return {"blas": {"name": "system", "library": "libopenblas.so.0"}}


@cache
def cpu() -> dict[str, Any]:
    """This CPU's model name, vendor and instruction-set flags (Linux ``/proc/cpuinfo``)."""
    model, vendor, flags = "", "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and not model:
            model = value
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key == "flags" and not flags:
            flags = set(value.split())
    isa = ("avx512" if flags >= _AVX512_FLAGS else
           "avx2" if flags >= _AVX2_FLAGS else
           "avx" if "avx" in flags else "sse")
    return {"model": model, "vendor": vendor, "isa": isa, "cores": os.cpu_count(),
            "flags": flags}


def coretype_for(isa: str) -> str | None:
    """The OpenBLAS 0.3.21 core whose kernels need only instructions of ``isa``."""
    return {"avx512": "SkylakeX", "avx2": "Haswell", "avx": "Sandybridge"}.get(isa)


def _loaded(pattern: re.Pattern) -> bool:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return any(pattern.match(os.path.basename(line.split()[-1]))
               for line in maps.splitlines() if "/" in line)


def prepare() -> None:
    """Environment for the BLAS, set before ``libcaffe.so`` (and so the BLAS) loads.

    With Debian's OpenBLAS (``SPARKNET_BLAS=system``, the default), whose
    0.3.21 detection falls back to generic ``Prescott`` kernels on CPUs newer
    than it, the core is chosen from the CPU's flags (every instruction of the
    chosen kernels present) unless ``OPENBLAS_CORETYPE`` is set already or
    ``SPARKNET_OPENBLAS_CORETYPE=detect`` asks for OpenBLAS's own detection.
    With MKL, results are made reproducible run to run whatever the buffers'
    alignment (``MKL_CBWR=AUTO,STRICT``) unless ``MKL_CBWR`` is set. Spark's
    Python workers import the engine too, so they get the same.
    """
    global _loaded_before_engine
    name = compiled_with()["blas"]["name"]
    auto = os.environ.get("SPARKNET_OPENBLAS_CORETYPE", "auto").lower() != "detect"
    if name == "system" and auto and "OPENBLAS_CORETYPE" not in os.environ:
        core = coretype_for(cpu()["isa"])
        _loaded_before_engine = _loaded(_LIBRARY_NAMES["system"])
        if core and not _loaded_before_engine:
            # Only this process and its children: the variable is what OpenBLAS
            # reads while it loads, which happens right after this.
            os.environ["OPENBLAS_CORETYPE"] = core
            logger.debug("OPENBLAS_CORETYPE=%s (from the CPU's flags)", core)
    elif name == "mkl":
        os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
        _load_mkl()


def _mkl_candidates() -> list[Path]:
    """Where PyPI's ``mkl`` put ``libmkl_rt.so.3`` for the running interpreter."""
    found = [Path(sys.prefix) / "lib" / "libmkl_rt.so.3"]
    try:
        files = importlib.metadata.distribution("mkl").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found += [Path(f.locate()) for f in files if f.name == "libmkl_rt.so.3"]
    return found


def _load_mkl() -> None:
    """Load the environment's MKL runtime before ``libcaffe.so``, which needs it.

    An MKL build's ``libcaffe.so`` names ``libmkl_rt.so.3`` but records no path
    to it: the environment it was built in is not the one running it (another
    checkout, a wheel, a packed environment on an executor). Once a library of
    that name is loaded, the dynamic loader gives it to ``libcaffe.so``; MKL then
    opens its computational libraries from its own directory. ``ctypes`` only
    loads the library here: Caffe is still called through the Cython binding.
    """
    if _loaded(_LIBRARY_NAMES["mkl"]):
        return
    for path in _mkl_candidates():
        if path.is_file():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            logger.debug("loaded %s for the MKL build of Caffe", path)
            return
    if any(d and (Path(d) / "libmkl_rt.so.3").exists()
           for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)):
        return  # the dynamic loader finds it there itself
    version = compiled_with()["blas"].get("package_version") or ""
    raise ImportError(
        f"this sparknet's Caffe was built with SPARKNET_BLAS=mkl and needs Intel MKL's "
        f"libmkl_rt.so.3, which is not in {sys.prefix}/lib: install it into this "
        f"environment (pip install mkl{'==' + version if version else ''}) or rebuild "
        f"sparknet with another SPARKNET_BLAS")


def _library() -> dict[str, Any] | None:
    from threadpoolctl import threadpool_info

    pattern = _LIBRARY_NAMES[compiled_with()["blas"]["name"]]
    for lib in threadpool_info():
        if lib.get("user_api") == "blas" and pattern.match(os.path.basename(lib["filepath"])):
            return lib
    return None


def build_info() -> dict[str, Any]:
    """What Caffe runs on: its package, patches, build flavor, BLAS, version, kernels, threads.

    ``patches`` names the patches of ``caffe/patches/`` compiled in (empty for
    a build of Caffe as released, ``SPARKNET_CAFFE_PATCHES=none``).

    ``blas["core"]`` is the kernel set OpenBLAS picked (``None`` for MKL, which
    dispatches per call); ``warning`` says when it is a generic fallback on a CPU
    with AVX2 or AVX-512 (``None`` otherwise).
    """
    from sparknet.engine import _caffe  # loads libcaffe.so and its BLAS

    built = compiled_with()
    lib = _library() or {}
    here = cpu()
    info = {
        "caffe": built.get("package"),
        "patches": built.get("patches", []),
        "flavor": "cuda" if _caffe.cuda_build() else "cpu",
        "blas": {
            "name": built["blas"]["name"],
            "implementation": lib.get("internal_api"),
            "version": lib.get("version") or built["blas"].get("package_version"),
            "core": lib.get("architecture"),
            "threading": lib.get("threading_layer"),
            "threads": _caffe.blas_threads(),
            "library": lib.get("filepath"),
        },
        "cpu": {k: v for k, v in here.items() if k != "flags"},
    }
    info["warning"] = _fallback_warning(info["blas"], here)
    return info


def _fallback_warning(blas: dict[str, Any], here: dict[str, Any]) -> str | None:
    core = (blas.get("core") or "").lower()
    if blas.get("implementation") != "openblas" or not core:
        return None
    best = coretype_for(here["isa"])
    forced = os.environ.get("OPENBLAS_CORETYPE")
    if forced is not None:
        fix = f"OPENBLAS_CORETYPE={forced} is set in the environment: unset it or set {best}"
    elif _loaded_before_engine:
        fix = (f"libopenblas was loaded before sparknet.engine, so sparknet could not choose "
               f"its core: import sparknet.engine first or set OPENBLAS_CORETYPE={best}")
    else:
        fix = f"set OPENBLAS_CORETYPE={best} before sparknet.engine is imported"
    if here["isa"] == "avx512" and core not in _AVX512_CORES:
        # Measured (README, "Other CPUs"): generic kernels 2-3x slower on an
        # AVX-512 Xeon; AVX2 ones 1.2-1.5x slower on an AVX-512 AMD EPYC (Zen 5).
        cost = "1.2-1.5x" if core in _AVX2_CORES else "2-3x"
        return (f"OpenBLAS {blas.get('version')} runs its {blas['core']} kernels on this "
                f"AVX-512 CPU ({here['model']}): Caffe trains {cost} slower than it could; "
                f"{fix}")
    if here["isa"] == "avx2" and core not in _AVX2_CORES:
        return (f"OpenBLAS {blas.get('version')} runs its generic {blas['core']} kernels on "
                f"this AVX2 CPU ({here['model']}): Caffe trains slower than it could; {fix}")
    return None


_checked = False


def check_kernels() -> None:
    """Warn (once per process) when the BLAS runs generic kernels on an AVX2/AVX-512 CPU."""
    global _checked
    if _checked:
        return
    _checked = True
    try:
        info = build_info()
    except Exception as e:  # noqa: BLE001 - identification is advisory: never break loading the engine
        logger.debug("could not identify the BLAS: %s", e)
        return
    blas = info["blas"]
    logger.debug("Caffe's BLAS: %s %s, kernels %s, %s thread(s)", blas["implementation"],
                blas["version"], blas["core"], blas["threads"])
    message = info["warning"]
    if message:
        warnings.warn(message, BlasWarning, stacklevel=3)


def describe_build(info: dict[str, Any] | None = None) -> str:
    """:func:`build_info` as the lines ``sparknet info`` prints."""
    info = info or build_info()
    blas, here = info["blas"], info["cpu"]
    isa = {"avx512": "AVX-512", "avx2": "AVX2", "avx": "AVX", "sse": "SSE"}[here["isa"]]
    kernels = f"kernels {blas['core']}" if blas["core"] else "kernels chosen per call"
    lines = [
        f"Caffe: {info['caffe']} ({info['flavor']} build)",
        f"BLAS:  {blas['name']} build: {blas['implementation']} {blas['version']}, {kernels}, "
        f"{blas['threads']} thread(s) ({blas['threading']})",
        f"       {blas['library']}",
        f"CPU:   {here['model']} ({here['vendor']}, {isa}), {here['cores']} cores",
    ]
    if info["warning"]:
        lines.append(f"warning: {info['warning']}")
    return "\n".join(lines)
