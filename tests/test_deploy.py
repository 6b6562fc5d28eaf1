"""The README's cluster deployment, for real: a standalone Spark cluster started
on loopback from the pyspark package, and the packed environment shipped to
its executors with ``spark-submit --archives`` (``make pack``), once for the
default BLAS and once for MKL (``SPARKNET_BLAS=mkl make pack``), whose
computational libraries MKL opens at run time from the archive."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port}")


def _has_mkl() -> bool:
    try:
        importlib.metadata.version("mkl")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _wait_for_worker(ui_port: int, worker: subprocess.Popen, timeout: float = 90) -> None:
    """Until the master's status page counts the worker alive (a hang guard, not a delay)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the Spark worker exited with {worker.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
                if json.load(r).get("aliveworkers", 0) >= 1:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the Spark worker did not register with the master")


# Each BLAS's pack in its own folder (make's DIST), so neither replaces the other.
DIST = {"system": "dist", "mkl": "dist/mkl"}
PACK_FAST = ["PACK_COMPRESS_LEVEL=0", "PACK_BYTECODE=0"]


@pytest.fixture(scope="module", params=[
    "system",
    pytest.param("mkl", marks=pytest.mark.skipif(
        not _has_mkl(), reason="PyPI's mkl is not installed in this environment (a "
        "benchmark-only requirement: make bench-env); the MKL pack is built from it")),
])
def pack(request) -> tuple[str, Path]:
    """(BLAS, DIST/sparknet-env.tar.gz), built by `make pack` unless up to date.

    Packed uncompressed and without .pyc files (PACK_COMPRESS_LEVEL=0, PACK_BYTECODE=0):
    gzip and pip's byte-compiling are most of what packing costs beyond installing, and
    this test proves that the archive runs on the executors, which neither changes.
    """
    blas, dist = request.param, DIST[request.param]
    done = subprocess.run(["make", "-s", "pack", f"PYTHON={sys.executable}",
                           f"SPARKNET_BLAS={blas}", f"DIST={dist}", *PACK_FAST], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return blas, ROOT / dist / "sparknet-env.tar.gz"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """A Spark standalone master and one worker (2 cores) on 127.0.0.1."""
    import pyspark

    home = Path(pyspark.__file__).parent  # the pyspark package is a Spark distribution
    spark_class = str(home / "bin" / "spark-class")
    work = tmp_path_factory.mktemp("standalone")
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1",
               SPARK_WORKER_DIR=str(work / "work"), SPARK_LOG_DIR=str(work),
               SPARK_DAEMON_JAVA_OPTS=os.environ.get("SPARK_SUBMIT_OPTS", ""))
    port, ui = _free_port(), _free_port()
    master = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master",
         "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)],
        env=env, stdout=open(work / "master.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115 - the daemon's log, open for its lifetime
    procs = [master]
    try:
        _wait_for_port(port, master, "the Spark master")
        url = f"spark://127.0.0.1:{port}"
        worker = subprocess.Popen(
            [spark_class, "org.apache.spark.deploy.worker.Worker", url,
             "--host", "127.0.0.1", "--cores", "2", "--memory", "3g",
             "--webui-port", str(_free_port()), "--work-dir", str(work / "work")],
            env=env, stdout=open(work / "worker.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115 - the daemon's log, open for its lifetime
        procs.append(worker)
        _wait_for_worker(ui, worker)
        yield url, work
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _executor_java_options() -> list[str]:
    """The suite's JVM options (tests/conftest.py) for the executors too: not the README's."""
    opts = os.environ.get("SPARK_SUBMIT_OPTS")
    return ["--conf", f"spark.executor.extraJavaOptions={opts}"] if opts else []


# What the dynamic loader prints (LD_DEBUG=files) as it initializes a library.
_LOADED = re.compile(r"calling init: (\S+)")


def test_spark_submit_with_the_packed_environment(pack, standalone, tmp_path):
    blas, archive = pack
    url, work = standalone
    out = tmp_path / "run"
    before = set((work / "work").glob("app-*"))
    # For MKL, the executors' dynamic loader names every library it loads (to
    # their stderr): the proof that MKL ran, and from the archive.
    trace = ["--conf", "spark.executorEnv.LD_DEBUG=files"] if blas == "mkl" else []
    cmd = [str(BIN / "spark-submit"), "--master", url,
           "--archives", f"{archive}#env",
           "--conf", "spark.pyspark.python=./env/bin/python",
           "--conf", f"spark.pyspark.driver.python={sys.executable}",
           "--conf", "spark.executor.memory=1g", "--conf", "spark.task.cpus=1",
           "--conf", "spark.ui.enabled=false", *trace, *_executor_java_options(),
           str(ROOT / "examples" / "lenet_app.py"), "--workers", "2", "--rounds", "2",
           "--test-interval", "2", "--output", str(out)]
    # As the README says: with the virtual environment active (its bin/ first on PATH).
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", VIRTUAL_ENV=str(BIN.parent),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    tested = [h["test"]["accuracy"] for h in history if h.get("test")]
    assert tested and tested[-1] > 0.8, history
    # The executors really ran the packed environment's Python.
    (app,) = set((work / "work").glob("app-*")) - before
    stderr = "".join(p.read_text(errors="replace") for p in app.rglob("stderr"))
    assert "Traceback" not in stderr
    envs = [p.parent.parent for p in app.glob("*/env/bin/python")]
    assert envs, "the executors did not unpack the archive"
    if blas == "mkl":
        _assert_mkl_ran_from(envs, stderr)


def _assert_mkl_ran_from(envs: list[Path], stderr: str) -> None:
    """The executors' Caffe ran on MKL, every library of it from an unpacked archive.

    libmkl_rt.so.3 is what libcaffe.so links; MKL opens its core, threading
    layer and the kernels for this CPU (libmkl_def/avx2/avx512/...) itself on
    the first BLAS call, so their presence shows that MKL computed.
    """
    libs = {Path(os.path.realpath(p)) for p in _LOADED.findall(stderr)}
    lib_dirs = {(e / "lib").resolve() for e in envs}
    mkl = {p for p in libs if p.name.startswith(("libmkl_", "libiomp5"))}
    assert mkl, f"the executors loaded no MKL library: {sorted(map(str, libs))[:50]}"
    assert all(p.parent in lib_dirs for p in mkl), (
        f"MKL libraries from outside the unpacked archives {sorted(map(str, lib_dirs))}: "
        f"{sorted(str(p) for p in mkl if p.parent not in lib_dirs)}")
    names = {p.name for p in mkl}
    kernels = {n for n in names if re.fullmatch(r"libmkl_(def|mc3|avx2|avx512|avx10)\.so\.3", n)}
    assert {"libmkl_rt.so.3", "libmkl_core.so.3"} <= names and kernels, sorted(names)
    caffe = [p for p in libs if p.name == "libcaffe.so"]
    assert caffe and all(any(p.is_relative_to(d) for d in lib_dirs) for p in caffe), caffe
    assert not [p for p in libs if p.name.startswith("libopenblas")], \
        "the MKL pack's executors loaded Debian's OpenBLAS"
