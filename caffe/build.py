#!/usr/bin/env python3
"""Obtain and build the Caffe that sparknet runs on.

Caffe's C++ sources come from the pinned PyPI source package
``brocolli-caffe==9.0.2`` (checked against its sha256), are compiled with this
project's own recipe (``caffe.mk``) against Debian's libraries, and land in a
cache directory outside the clone::

    $SPARKNET_CACHE (default ~/.cache/sparknet)/caffe-<sdist sha>-<flavor>-<blas>-<recipe sha>/
        lib/libcaffe.so     the library (every source force-includes sparknet_fatal.hpp)
                            and, for BLAS=openblas, the libscipy_openblas.so it runs on
        include/            generated caffe/proto/caffe.pb.h and caffe.proto
        src/                the unpacked source package (headers under src/include)
        build.json          written last: its presence means the build is complete

A second build with the same source package and recipe costs nothing. The
flavor is ``cpu`` unless ``SPARKNET_CUDA=1`` (or ``auto``, the default, with
``nvcc`` on PATH and ``nvidia-smi`` listing a GPU), which gives ``cuda``.

The BLAS libcaffe.so is linked to is ``SPARKNET_BLAS`` (see :data:`BLAS_CHOICES`;
default :data:`DEFAULT_BLAS`). Caffe's objects do not depend on it: a build for
another BLAS copies the objects of a finished build with the same recipe and
only links (seconds instead of minutes). Each BLAS has its own cache entry.

This module uses only the standard library: ``setup.py`` imports it before
anything else is installed. Run it directly to build, or with ``--json`` to
print the build description, ``--tools`` to also build Caffe's ``caffe`` tool.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "brocolli-caffe"
VERSION = "9.0.2"
SHA256 = "c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"

HERE = Path(__file__).resolve().parent
RECIPE_FILES = ("caffe.mk", "sparknet_fatal.hpp", "blas_shim.c")  # decide the result

#: ``SPARKNET_BLAS`` values: the BLAS libcaffe.so is linked to.
BLAS_CHOICES = {
    "system": "Debian's libopenblas (libopenblas-dev); on CPUs its detection does not "
              "know, sparknet picks OPENBLAS_CORETYPE from the CPU's flags",
    "openblas": "OpenBLAS from PyPI's scipy-openblas32 (recent: knows current CPUs, but "
                "slow with more than one thread on a busy machine), copied next to libcaffe.so",
    "mkl": "Intel MKL from PyPI's mkl (its libmkl_rt.so.3 in the environment)",
}
DEFAULT_BLAS = "system"


class BuildError(RuntimeError):
    """Caffe could not be obtained or compiled."""


def cache_root() -> Path:
    return Path(os.environ.get("SPARKNET_CACHE") or Path.home() / ".cache" / "sparknet")


def _log(msg: str) -> None:
    print(f"[caffe] {msg}", file=sys.stderr, flush=True)


def flavor() -> str:
    """``cuda`` or ``cpu``, from ``SPARKNET_CUDA`` (``0``, ``1`` or ``auto``)."""
    want = os.environ.get("SPARKNET_CUDA", "auto").lower()
    if want in ("0", "no", "false", "cpu"):
        return "cpu"
    has_nvcc = shutil.which(os.environ.get("NVCC", "nvcc")) is not None
    if want in ("1", "yes", "true", "cuda"):
        if not has_nvcc:
            raise BuildError("SPARKNET_CUDA=1 but nvcc is not on PATH")
        return "cuda"
    if has_nvcc and shutil.which("nvidia-smi"):
        probe = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True)
        if probe.returncode == 0 and "GPU" in probe.stdout:
            return "cuda"
    return "cpu"


def blas() -> str:
    """The BLAS to link, from ``SPARKNET_BLAS`` (default :data:`DEFAULT_BLAS`)."""
    want = (os.environ.get("SPARKNET_BLAS") or DEFAULT_BLAS).strip().lower()
    if want not in BLAS_CHOICES:
        raise BuildError(f"SPARKNET_BLAS={want!r} is not one of: {', '.join(BLAS_CHOICES)}")
    return want


def _python_package_dir(module: str, pip_name: str, choice: str) -> Path:
    """Where ``module`` is installed for the Python running this build."""
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}, os; print(os.path.dirname({module}.__file__))"],
        check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(f"SPARKNET_BLAS={choice} needs the {pip_name} package in "
                         f"{sys.executable}'s environment (pip install -r requirements-bench.txt)")
    return Path(done.stdout.strip())


def blas_library(choice: str) -> tuple[Path, str]:
    """The BLAS shared library file of ``choice`` and its package version ('' if Debian's)."""
    if choice == "openblas":
        lib = _python_package_dir("scipy_openblas32", "scipy-openblas32", choice) / "lib"
        version = _pip_version("scipy-openblas32")
        return lib / "libscipy_openblas.so", version
    if choice == "mkl":
        # The mkl wheel puts its libraries in the environment's lib/ (no Python module).
        lib = Path(sys.prefix) / "lib" / "libmkl_rt.so.3"
        if not lib.exists():
            raise BuildError(f"SPARKNET_BLAS=mkl needs PyPI's mkl in {sys.prefix} "
                             f"(no {lib}; pip install -r requirements-bench.txt)")
        return lib, _pip_version("mkl")
    return Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0"), ""


def _pip_version(dist: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        check=False, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def recipe_hash() -> str:
    h = hashlib.sha256()
    for name in RECIPE_FILES:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()


def prefix(kind: str | None = None, choice: str | None = None) -> Path:
    kind = kind or flavor()
    choice = choice or blas()
    return cache_root() / f"caffe-{SHA256[:12]}-{kind}-{choice}-{recipe_hash()[:10]}"


def _reuse_objects(out: Path, kind: str, choice: str) -> None:
    """Copy the compiled objects of a finished build for another BLAS, if any.

    The objects depend on the sources and the recipe, not on the BLAS (it is
    only linked), so make then finds them up to date and only links.
    """
    for other in BLAS_CHOICES:
        src = prefix(kind, other)
        if other == choice or not (src / "build.json").exists():
            continue
        _log(f"reusing the compiled objects of {src.name} (only linking for {choice})")
        parts = [p for p in ("src", "include", "obj") if not (out / p).exists()]
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".copy-"))
        try:
            for part in parts:
                shutil.copytree(src / part, tmp / part, symlinks=True,
                                ignore=shutil.ignore_patterns("blas_shim.o"))
            for part in parts:
                os.replace(tmp / part, out / part)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_sdist() -> Path:
    """Return the verified source package, downloading it with pip if needed."""
    given = os.environ.get("SPARKNET_CAFFE_SDIST")
    if given:
        path = Path(given)
    else:
        sources = cache_root() / "sources"
        path = sources / f"{PACKAGE}-{VERSION}.tar.gz"
        if not path.exists():
            sources.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=sources) as tmp:
                _log(f"downloading {PACKAGE}=={VERSION} (source package) with pip")
                cmd = ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       "--disable-pip-version-check", "-q", "-d", tmp,
                       f"{PACKAGE}=={VERSION}"]
                done = subprocess.run([sys.executable, *cmd], check=False)
                if done.returncode != 0 and shutil.which("python3"):
                    done = subprocess.run(["python3", *cmd], check=False)
                if done.returncode != 0:
                    raise BuildError(f"pip could not download {PACKAGE}=={VERSION}")
                got = next(Path(tmp).glob("*.tar.gz"), None)
                if got is None:
                    raise BuildError(f"pip downloaded no source package for {PACKAGE}")
                os.replace(got, path)
    digest = _sha256(path)
    if digest != SHA256:
        raise BuildError(f"{path}: sha256 {digest} does not match the pinned {SHA256}")
    return path


def _unpack(sdist: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".unpack-"))
    try:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        (root,) = [p for p in tmp.iterdir() if p.is_dir()]
        # The package ships a caffe.pb.{h,cc} generated by another protoc; they
        # must not shadow the ones regenerated from caffe.proto by caffe.mk.
        for stale in ("include/caffe/proto/caffe.pb.h", "src/caffe/proto/caffe.pb.cc"):
            (root / stale).unlink(missing_ok=True)
        shutil.rmtree(root / ".git", ignore_errors=True)
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make(out: Path, kind: str, choice: str, *targets: str) -> None:
    jobs = os.environ.get("SPARKNET_BUILD_JOBS") or str(os.cpu_count() or 2)
    lib, _ = blas_library(choice)
    cmd = ["make", "-f", str(HERE / "caffe.mk"), f"-j{jobs}",
           f"SRC={out / 'src'}", f"OUT={out}", f"FATAL={HERE / 'sparknet_fatal.hpp'}",
           f"CUDA={1 if kind == 'cuda' else 0}", f"BLAS={choice}", f"BLAS_DIR={lib.parent}",
           f"BLAS_SHIM={HERE / 'blas_shim.c'}", *targets]
    if subprocess.run(cmd, check=False).returncode != 0:
        raise BuildError(f"compiling Caffe failed (command: {' '.join(cmd)})")


def describe(out: Path, kind: str, choice: str) -> dict:
    defs = ["USE_LMDB", "USE_LEVELDB", "NDEBUG"] + ([] if kind == "cuda" else ["CPU_ONLY"])
    lib, version = blas_library(choice)
    # The libraries libcaffe.so needs at run time that are not system ones:
    # setup.py copies them next to the engine extension.
    runtime = [str(out / "lib" / "libcaffe.so")]
    if choice == "openblas":
        runtime.append(str(out / "lib" / lib.name))
    return {
        "package": f"{PACKAGE}=={VERSION}",
        "sha256": SHA256,
        "flavor": kind,
        "blas": {"name": choice, "library": lib.name, "package_version": version,
                 "description": BLAS_CHOICES[choice]},
        "prefix": str(out),
        "runtime_libraries": runtime,
        "include_dirs": [str(out / "include"), str(out / "src" / "include"),
                         "/usr/include/hdf5/serial"],
        "library_dirs": [str(out / "lib")],
        "libraries": ["caffe", "glog", "gflags", "protobuf", "boost_system"]
                     + (["openblas"] if choice == "system" else []),
        "define_macros": defs,
        "proto": str(out / "include" / "caffe" / "proto" / "caffe.proto"),
        "caffe_tool": str(out / "bin" / "caffe"),
    }


def engine_record(info: dict) -> str:
    """``build_info.json``: what the engine reports about the build it runs on.

    Written next to libcaffe.so, in the cache entry's lib/ and (by setup.py)
    beside the engine extension; ``sparknet.engine._blas`` reads the one next to
    the libcaffe.so the dynamic loader picks.
    """
    return json.dumps({k: info[k] for k in ("package", "flavor", "blas")}, indent=2)


def ensure_built(tools: bool = False, choice: str | None = None) -> dict:
    """Build Caffe into the cache unless it is there already; return build.json.

    ``choice`` is the BLAS (default: ``SPARKNET_BLAS``, else :data:`DEFAULT_BLAS`).
    """
    kind = flavor()
    if choice is not None and choice not in BLAS_CHOICES:
        raise BuildError(f"BLAS {choice!r} is not one of: {', '.join(BLAS_CHOICES)}")
    choice = choice or blas()
    blas_library(choice)  # the library is there (or a clear error) before any work
    out = prefix(kind, choice)
    manifest = out / "build.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache entry
        if not manifest.exists():
            _log(f"building Caffe ({kind}, BLAS {choice}) into {out}; "
                 "this takes a few minutes once")
            out.mkdir(exist_ok=True)
            if not (out / "obj").exists():
                _reuse_objects(out, kind, choice)
            if not (out / "src").exists():
                _unpack(fetch_sdist(), out / "src")
            if choice == "openblas":
                lib, _ = blas_library(choice)
                (out / "lib").mkdir(exist_ok=True)
                shutil.copy2(lib, out / "lib" / lib.name)
            _make(out, kind, choice)
            info = describe(out, kind, choice)
            (out / "lib" / "build_info.json").write_text(engine_record(info))
            tmp = manifest.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            os.replace(tmp, manifest)
        info = json.loads(manifest.read_text())
        record = out / "lib" / "build_info.json"
        if not record.exists():  # an entry from before build_info.json existed
            record.write_text(engine_record(info))
        if tools and not Path(info["caffe_tool"]).exists():
            _make(out, kind, choice, "tools")
    return info


def main(argv: list[str]) -> int:
    try:
        info = ensure_built(tools="--tools" in argv)
    except BuildError as e:
        _log(f"error: {e}")
        return 1
    if "--json" in argv:
        print(json.dumps(info, indent=2))
    else:
        _log(f"Caffe ready at {info['prefix']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
