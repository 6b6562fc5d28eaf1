"""Build sparknet: Caffe (cached outside the clone), caffe_pb2, the engine extension.

``pip install .`` (or ``pip install --no-build-isolation -e .``) runs, in order:

1. ``caffe/build.py``: obtain the pinned Caffe source package and compile it,
   unless the cache already holds that build;
2. ``protoc --python_out`` on the very ``caffe.proto`` Caffe was compiled from,
   giving ``sparknet/proto/caffe_pb2.py``;
3. Cython on ``sparknet/engine/_caffe.pyx`` plus the ``ccaffe`` facade, linked
   against that ``libcaffe.so``, which is copied next to the extension (found
   through an ``$ORIGIN`` rpath) with the BLAS library it runs on (for
   ``SPARKNET_BLAS=openblas``), so an installed environment is self-contained;
   ``build_info.json`` there records which BLAS that is.
"""
import functools
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "caffe"))
import build as caffe_build  # noqa: E402  (caffe/build.py, standard library only)


@functools.cache
def caffe_info() -> dict:
    info = caffe_build.ensure_built()
    proto = Path(info["proto"])
    out = HERE / "sparknet" / "proto"
    target = out / "caffe_pb2.py"
    if not target.exists() or target.stat().st_mtime < proto.stat().st_mtime:
        subprocess.run(["protoc", f"--proto_path={proto.parent}", f"--python_out={out}",
                        f"--pyi_out={out}", str(proto)], check=True)
        shutil.copyfile(proto, out / "caffe.proto")
    return info


class BuildPy(build_py):
    def run(self):
        caffe_info()
        super().run()


class BuildExt(build_ext):
    def run(self):
        info = caffe_info()
        for ext in self.extensions:
            if ext.name != "sparknet.engine._caffe":
                continue
            ext.include_dirs += [str(HERE / "ccaffe"), *info["include_dirs"]]
            ext.library_dirs += info["library_dirs"]
            ext.libraries += info["libraries"]
            ext.define_macros += [(d, None) for d in info["define_macros"]]
        # libcaffe.so and the BLAS library it links (when not a system one) go next
        # to the extension; build_info.json says which BLAS that is (sparknet.engine._blas).
        engine = Path(self.get_ext_fullpath("sparknet.engine._caffe")).parent
        record = caffe_build.engine_record(info)
        target = engine / "build_info.json"
        if target.exists() and target.read_text() != record:
            # Built for another Caffe build (another SPARKNET_BLAS, say): setuptools
            # would keep the extension linked against that one's libraries.
            self.force = True
        super().run()
        for lib in map(Path, info.get("runtime_libraries")
                       or [Path(info["library_dirs"][0]) / "libcaffe.so"]):
            dest = engine / lib.name
            if not dest.exists() or dest.read_bytes() != lib.read_bytes():
                shutil.copyfile(lib, dest)
        wanted = {Path(p).name for p in info.get("runtime_libraries", ())}
        for stale in engine.glob("libscipy_openblas*.so"):  # a previous build's BLAS
            if stale.name not in wanted:
                stale.unlink()
        if not target.exists() or target.read_text() != record:
            target.write_text(record)


def extensions():
    from Cython.Build import cythonize

    ext = Extension(
        "sparknet.engine._caffe",
        sources=["sparknet/engine/_caffe.pyx", "ccaffe/ccaffe.cpp"],
        language="c++",
        # The same forced include as Caffe itself, so inline Caffe code the facade
        # uses throws on a failed CHECK instead of aborting.
        extra_compile_args=["-std=c++14", "-O2", "-w",
                            "-include", str(HERE / "caffe" / "sparknet_fatal.hpp")],
        extra_link_args=["-Wl,-rpath,$ORIGIN"],
        depends=["ccaffe/ccaffe.hpp", "caffe/sparknet_fatal.hpp"],
    )
    kernels = Extension(
        "sparknet.data._kernels",
        sources=["sparknet/data/_kernels.pyx"],
        extra_compile_args=["-O3", "-w"],
        depends=["sparknet/data/_crop_kernel.h"],
    )
    return cythonize([ext, kernels], compiler_directives={"language_level": "3"})


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPy, "build_ext": BuildExt})
