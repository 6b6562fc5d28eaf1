"""Shared fixtures: a local Spark session, the bundled digits, and the loopback S3 server
(``s3``, ``flaky_s3`` from ``s3server``, imported here so every module has them)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import jvmarchive
import pytest
from s3server import flaky_s3, s3  # noqa: F401 - fixtures, registered by importing them here

# The suite tests sparknet's own choice of OpenBLAS kernels, and commands'
# exact stderr. A machine may set OPENBLAS_CORETYPE for every process (one
# AVX-512 AMD EPYC here sets Haswell); set by hand it wins and sparknet warns,
# which test_blas.py proves explicitly. Removed before sparknet.engine is first
# imported, so pytest, its subprocesses and Spark's workers all go without it.
os.environ.pop("OPENBLAS_CORETYPE", None)

# One BLAS thread per process, as sparknet gives each Spark task (spark.task.cpus), unless
# the machine sets a count. The suite keeps both cores busy (two pytest workers, Spark's
# workers), and there a second OpenBLAS thread makes Caffe slower, not faster: each GEMM
# waits for a thread that has no core (LeNet trained 3800 images/s on one thread and
# 600-900 on two beside one busy process; 3600-4200 on two of two idle cores). Tests of
# thread counts set theirs (set_blas_threads, blas_threads=).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# Every JVM the suite starts through spark-submit (its shared session, the apps, the
# command line, the benches' smoke runs, the Spark Connect server) lives a few minutes,
# mostly starting up, planning and moving small batches: Java's optimising compiler costs
# such a JVM more CPU than it saves it (the Connect server of tests/test_connect.py: 47-59
# CPU-seconds with it, 22-28 without), and reading Spark's classes costs it more than the
# class-data-sharing archive of tests/jvmarchive.py does (a session counting ten rows:
# 8 CPU-seconds, 4 with it). Tests time nothing, so their JVMs run the JIT's first tier
# only and map that archive, which pytest's first process starts making in the background
# (JVMs started before it exists go without); a setting of the user's own wins, and
# benchmarks run by hand keep Java's defaults. Clusters that tests start pass the setting
# on to their executors and daemons (sparknet.testing.netcluster, test_spark_cluster.py).
_ARCHIVE = jvmarchive.archive() if "SPARK_SUBMIT_OPTS" not in os.environ else None
os.environ.setdefault("SPARK_SUBMIT_OPTS", jvmarchive.java_options(_ARCHIVE))
_ARCHIVING = None if os.environ.get("PYTEST_XDIST_WORKER") else jvmarchive.start(_ARCHIVE)

ROOT = Path(__file__).resolve().parent.parent

#: Modules of whole runs as users start them (apps, the README, the command line,
#: benchmarks, clusters, packaging): marked ``slow``, so ``make test-fast``
#: (``-m "not slow"``) leaves them out while ``make test`` runs everything.
SLOW_MODULES = frozenset({
    "test_bench_smoke", "test_build_progress", "test_cli", "test_cluster_faults",
    "test_connect", "test_deploy", "test_examples", "test_ml_app", "test_netcluster",
    "test_readme", "test_ring_exchange", "test_spark_cluster",
})


#: Modules by cost, heaviest first (pytest --durations of whole runs). pytest-xdist's
#: ``--dist loadfile`` hands modules to its workers in collection order (``make test``
#: turns off its own reordering by test count, which put the one-test README tour
#: last), so the long ones start first and no worker is left running one alone at the end.
HEAVIEST_FIRST = (
    "test_examples", "test_bench_smoke", "test_readme", "test_connect", "test_spark_local",
    "test_spark_cluster", "test_cli", "test_ring_exchange", "test_cluster_faults", "test_ml",
    "test_ml_inputs", "test_deploy", "test_spark_outer", "test_bad_input_data", "test_ml_app",
    "test_data_s3",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}

    def module(item) -> str:
        return item.module.__name__ if getattr(item, "module", None) is not None else ""

    for item in items:
        if module(item) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: rank.get(module(item), len(rank)))  # stable: modules stay whole


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def spark():
    """A SparkSession on local[2], shared by the whole test session.

    Tasks may be retried (up to 3 attempts, as a cluster's spark.task.maxFailures
    allows), so the suite exercises training as it runs on a cluster; a Python
    worker that dies prints its stack (faulthandler) in the executor log.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2,3]")
        .appName("sparknet-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "2g")
        # A Python worker that dies shows its Python stack in the error.
        .config("spark.python.worker.faulthandler.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture()
def file_size_limit():
    """A factory of context managers under which this process cannot write past N bytes.

    ``RLIMIT_FSIZE``: a write beyond the limit fails with ``EFBIG`` ("File too
    large"), as a write to a full disk or past a quota fails with ``ENOSPC`` /
    ``EDQUOT`` (Python ignores the SIGXFSZ signal that would otherwise stop the
    process). Unlike a small tmpfs it needs no mount, so it works for root and
    in containers alike; child processes started inside inherit it.
    """
    import contextlib
    import resource

    @contextlib.contextmanager
    def limit(nbytes: int):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    return limit
