"""The README's cluster deployment, for real: a standalone Spark cluster started
on loopback from the pyspark package, and the packed environment shipped to
its executors with ``spark-submit --archives`` (``make pack``)."""
from __future__ import annotations

import json
import os
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


@pytest.fixture(scope="module")
def pack() -> Path:
    """dist/sparknet-env.tar.gz, built by `make pack` unless up to date."""
    done = subprocess.run(["make", "-s", "pack", f"PYTHON={sys.executable}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return ROOT / "dist" / "sparknet-env.tar.gz"


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """A Spark standalone master and one worker (2 cores) on 127.0.0.1."""
    import pyspark

    home = Path(pyspark.__file__).parent  # the pyspark package is a Spark distribution
    spark_class = str(home / "bin" / "spark-class")
    work = tmp_path_factory.mktemp("standalone")
    env = dict(os.environ, SPARK_HOME=str(home), SPARK_LOCAL_IP="127.0.0.1",
               SPARK_WORKER_DIR=str(work / "work"), SPARK_LOG_DIR=str(work))
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
        time.sleep(5)  # registration with the master
        yield url, work
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_spark_submit_with_the_packed_environment(pack, standalone, tmp_path):
    url, work = standalone
    out = tmp_path / "run"
    cmd = [str(BIN / "spark-submit"), "--master", url,
           "--archives", f"{pack}#env",
           "--conf", "spark.pyspark.python=./env/bin/python",
           "--conf", f"spark.pyspark.driver.python={sys.executable}",
           "--conf", "spark.executor.memory=1g", "--conf", "spark.task.cpus=1",
           "--conf", "spark.ui.enabled=false",
           str(ROOT / "examples" / "lenet_app.py"), "--workers", "2", "--rounds", "4",
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
    stderr = "".join(p.read_text(errors="replace") for p in (work / "work").rglob("stderr"))
    assert "Traceback" not in stderr
    apps = list((work / "work").glob("app-*/*/env/bin/python"))
    assert apps, "the executors did not unpack the archive"
