#!/usr/bin/env python3
"""Obtain and build the Caffe that sparknet runs on.

Caffe's C++ sources come from the pinned PyPI source package
``brocolli-caffe==9.0.2`` (checked against its sha256), are compiled with this
project's own recipe (``caffe.mk``) against Debian's libraries, and land in a
cache directory outside the clone::

    $SPARKNET_CACHE (default ~/.cache/sparknet)/
        caffe-<sdist sha>-<flavor>-<blas>-<recipe sha>-<patches>/
        lib/libcaffe.so     the library (every source force-includes sparknet_fatal.hpp)
                            and, for BLAS=openblas, the libscipy_openblas.so it runs on
        include/            generated caffe/proto/caffe.pb.h and caffe.proto
        src/                the unpacked source package (headers under src/include),
                            with this project's patches (caffe/patches/) applied
        build.json          written last: its presence means the build is complete

A second build with the same source package and recipe costs nothing.

Caffe's sources are patched before compiling (``caffe/patches/*.patch``, in
name order; ``caffe/patches/README.md`` says what each changes and why). The
patch set is its own component of the cache entry's name (``p<sha>`` of the
patches, or ``vanilla``), so patched and unpatched builds never mix;
``SPARKNET_CAFFE_PATCHES=none`` builds Caffe as released (``all``, the
default, applies every patch).

The flavor is ``cpu`` unless ``SPARKNET_CUDA=1`` (or ``auto``, the default, with
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
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TextIO

PACKAGE = "brocolli-caffe"
VERSION = "9.0.2"
SHA256 = "c6410cc60bdd6db685d441b66be7df05410f8850ac88d6b75d48ef9b2315c08a"

HERE = Path(__file__).resolve().parent
RECIPE_FILES = ("caffe.mk", "sparknet_fatal.hpp", "blas_shim.c")  # decide the result
PATCH_DIR = HERE / "patches"
#: ``SPARKNET_CAFFE_PATCHES`` values.
PATCH_CHOICES = ("all", "none")

#: ``SPARKNET_BLAS`` values: the BLAS libcaffe.so is linked to.
BLAS_CHOICES = {
    "system": "Debian's libopenblas (libopenblas-dev); on CPUs its detection does not "
              "know, sparknet picks OPENBLAS_CORETYPE from the CPU's flags",
    "openblas": "OpenBLAS from PyPI's scipy-openblas32 (recent: knows current CPUs, but "
                "slow with more than one thread on a busy machine), copied next to libcaffe.so",
    "mkl": "Intel MKL from PyPI's mkl (its libmkl_rt.so.3 in the environment that "
           "imports sparknet, loaded by sparknet.engine before libcaffe.so)",
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


def patches(choice: str | None = None) -> list[Path]:
    """The patches applied to Caffe's sources, from ``SPARKNET_CAFFE_PATCHES``."""
    want = (choice or os.environ.get("SPARKNET_CAFFE_PATCHES") or "all").strip().lower()
    if want not in PATCH_CHOICES:
        raise BuildError(f"SPARKNET_CAFFE_PATCHES={want!r} is not one of: "
                         f"{', '.join(PATCH_CHOICES)}")
    return sorted(PATCH_DIR.glob("*.patch")) if want == "all" else []


def patch_key(applied: list[Path]) -> str:
    """The cache-key component of a patch set: ``vanilla`` or ``p`` + its sha256."""
    if not applied:
        return "vanilla"
    h = hashlib.sha256()
    for patch in applied:
        h.update(patch.name.encode() + b"\0" + patch.read_bytes())
    return "p" + h.hexdigest()[:8]


def patched_sources(applied: list[Path]) -> set[str]:
    """The files (relative to the source tree) that ``applied`` patches change."""
    touched = set()
    for patch in applied:
        for line in patch.read_text().splitlines():
            if line.startswith("+++ "):
                touched.add(line[4:].split("\t")[0].split("/", 1)[1])
    return touched


def _apply_patches(src: Path, applied: list[Path]) -> None:
    if applied and shutil.which("patch") is None:
        raise BuildError("applying caffe/patches/ needs GNU patch (apt-get install patch; "
                         "or SPARKNET_CAFFE_PATCHES=none for Caffe as released)")
    for patch in applied:
        done = subprocess.run(["patch", "-p1", "--batch", "--forward", "--silent",
                               "-d", str(src), "-i", str(patch)],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"{patch} does not apply to {PACKAGE}=={VERSION}: "
                             f"{(done.stdout + done.stderr).strip()}")
        _log(f"applied {patch.name}")


def recipe_hash() -> str:
    h = hashlib.sha256()
    for name in RECIPE_FILES:
        h.update((HERE / name).read_bytes())
    return h.hexdigest()


def prefix(kind: str | None = None, choice: str | None = None,
           applied: list[Path] | None = None) -> Path:
    kind = kind or flavor()
    choice = choice or blas()
    applied = patches() if applied is None else applied
    return cache_root() / (f"caffe-{SHA256[:12]}-{kind}-{choice}-{recipe_hash()[:10]}"
                           f"-{patch_key(applied)}")


def _reuse_objects(out: Path, kind: str, choice: str, applied: list[Path]) -> None:
    """Copy the compiled objects of a finished build with the same recipe, if any.

    The objects depend on the sources and the recipe, not on the BLAS (it is
    only linked), so make then finds them up to date and only links. From an
    entry with another patch set, only the sources no patch touches are
    reused: the objects of patched files are dropped (and the sources are
    unpacked and patched afresh), so make compiles just those.
    """
    key = patch_key(applied)
    candidates = [prefix(kind, other, applied) for other in BLAS_CHOICES if other != choice]
    siblings = f"caffe-{SHA256[:12]}-{kind}-*-{recipe_hash()[:10]}-*"
    candidates += sorted(p for p in cache_root().glob(siblings)
                         if p not in candidates and p.name != out.name)
    for src in candidates:
        if not (src / "build.json").exists():
            continue
        same_patches = src.name.endswith(f"-{key}")
        # Sources patched here or there: their objects are compiled afresh.
        stale = patched_sources(applied) | set(
            json.loads((src / "build.json").read_text()).get("patched_files", ()))
        if not same_patches and any(not f.endswith(".cpp") or not f.startswith("src/caffe/")
                                    for f in stale):
            continue  # a patched header would make every object stale
        _log(f"reusing the compiled objects of {src.name}")
        parts = [p for p in (("src", "include", "obj") if same_patches else ("include", "obj"))
                 if not (out / p).exists()]
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=".copy-"))
        try:
            for part in parts:
                shutil.copytree(src / part, tmp / part, symlinks=True,
                                ignore=shutil.ignore_patterns("blas_shim.o"))
            if not same_patches and (tmp / "obj").exists():
                for source in stale:
                    obj = tmp / "obj" / Path(source).relative_to("src/caffe").with_suffix(".o")
                    obj.unlink(missing_ok=True)
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


def _unpack(sdist: Path, dest: Path, applied: list[Path]) -> None:
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
        _apply_patches(root, applied)
        os.replace(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: A line of caffe.mk's output for one object: its ``  CXX x.cpp`` echo (the command
#: itself is silent), or an object's command that make shows (caffe.pb.o, blas_shim.o).
_OBJECT_DONE = re.compile(r"^\s+(?:CXX|NVCC) \S|\s-c\s+\S+\s+-o\s+\S+\.o\s*$")
#: A compile command in ``make -n`` (which shows every command, silent ones too).
_OBJECT_PLANNED = re.compile(r"\s-c\s+\S+\s+-o\s+\S+\.o\s*$", re.MULTILINE)


class Progress:
    """How far a compile is: ``[caffe] compiled 120/412 objects, 2:05 elapsed``.

    On a terminal the line is redrawn after every object; elsewhere (a CI log,
    a file) a line is written at every tenth of the objects and at the last.
    """

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.shown = 0  # tenths shown (not on a terminal)
        self.pending = False  # a redrawn line not yet ended (on a terminal)

    def line(self) -> str:
        seconds = int(time.monotonic() - self.start)
        return (f"[caffe] compiled {self.done}/{self.total} objects, "
                f"{seconds // 60}:{seconds % 60:02d} elapsed")

    def step(self) -> None:
        """One more object is compiled."""
        self.done += 1
        if self.tty:
            self.stream.write("\r" + self.line())
            self.pending = True
        elif self.done * 10 // self.total > self.shown or self.done == self.total:
            self.shown = self.done * 10 // self.total
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        """Another line of the build's output (protoc, the link), below the count."""
        self.end()
        text = text.rstrip("\n")
        if len(text) > 300:  # the link command names every object
            text = text[:200] + f" ... ({len(text)} characters)"
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.pending:
            self.stream.write("\n")
            self.pending = False


def run_make(cmd: list[str], stream: TextIO | None = None) -> int:
    """Run caffe.mk's ``cmd``, showing objects compiled / to compile and the time taken.

    ``make -n`` first counts the objects to compile; ``--output-sync=target``
    makes each object's line appear when it is finished, not when it starts.
    Compiler errors go to stderr as they are. Returns make's exit status.
    """
    dry = subprocess.run([*cmd, "-n"], check=False, capture_output=True, text=True)
    total = len(_OBJECT_PLANNED.findall(dry.stdout)) if dry.returncode == 0 else 0
    progress = Progress(total, stream)
    proc = subprocess.Popen([*cmd, "--output-sync=target"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if total and _OBJECT_DONE.search(line) and progress.done < total:
            progress.step()
        else:
            progress.say(line)
    progress.end()
    return proc.wait()


def _make(out: Path, kind: str, choice: str, *targets: str, stream: TextIO | None = None
          ) -> None:
    jobs = os.environ.get("SPARKNET_BUILD_JOBS") or str(os.cpu_count() or 2)
    lib, _ = blas_library(choice)
    cmd = ["make", "-f", str(HERE / "caffe.mk"), f"-j{jobs}",
           f"SRC={out / 'src'}", f"OUT={out}", f"FATAL={HERE / 'sparknet_fatal.hpp'}",
           f"CUDA={1 if kind == 'cuda' else 0}", f"BLAS={choice}", f"BLAS_DIR={lib.parent}",
           f"BLAS_SHIM={HERE / 'blas_shim.c'}", *targets]
    if run_make(cmd, stream) != 0:
        raise BuildError(f"compiling Caffe failed (command: {' '.join(cmd)})")


def describe(out: Path, kind: str, choice: str, applied: list[Path]) -> dict:
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
        "patches": [p.name for p in applied],
        "patched_files": sorted(patched_sources(applied)),
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
    return json.dumps({k: info[k] for k in ("package", "flavor", "blas", "patches")
                       if k in info}, indent=2)


def ensure_built(tools: bool = False, choice: str | None = None,
                 patch_set: str | None = None) -> dict:
    """Build Caffe into the cache unless it is there already; return build.json.

    ``choice`` is the BLAS (default: ``SPARKNET_BLAS``, else :data:`DEFAULT_BLAS`);
    ``patch_set`` is ``all`` or ``none`` (default: ``SPARKNET_CAFFE_PATCHES``, else all).
    """
    kind = flavor()
    if choice is not None and choice not in BLAS_CHOICES:
        raise BuildError(f"BLAS {choice!r} is not one of: {', '.join(BLAS_CHOICES)}")
    choice = choice or blas()
    blas_library(choice)  # the library is there (or a clear error) before any work
    applied = patches(patch_set)
    out = prefix(kind, choice, applied)
    manifest = out / "build.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache entry
        if not manifest.exists():
            _log(f"building Caffe ({kind}, BLAS {choice}, patches: {patch_key(applied)}) "
                 f"into {out}; "
                 "this takes a few minutes once")
            out.mkdir(exist_ok=True)
            if not (out / "obj").exists():
                _reuse_objects(out, kind, choice, applied)
            if not (out / "src").exists():
                _unpack(fetch_sdist(), out / "src", applied)
            if choice == "openblas":
                lib, _ = blas_library(choice)
                (out / "lib").mkdir(exist_ok=True)
                shutil.copy2(lib, out / "lib" / lib.name)
            _make(out, kind, choice)
            info = describe(out, kind, choice, applied)
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
