"""A class-data-sharing archive of the classes a Spark driver loads, for the suite's JVMs.

Every JVM the suite starts through ``spark-submit`` (its shared session, the apps, the
command line, the benches' smoke runs, the Spark Connect servers) spends most of its
start reading and verifying the same few thousand classes from Spark's jars: about
9 CPU-seconds for a session that counts ten rows, 5 with a dynamic CDS archive
(``-XX:SharedArchiveFile``, JDK 13 and later), which maps those classes already parsed
and verified. :func:`java_options` names the archive; :func:`start` makes it once per
environment, in the background: ``spark-submit`` runs :func:`_workload` with
``-XX:ArchiveClassesAtExit`` and the archive is renamed into place only after that JVM
exited cleanly (a truncated archive aborts the JVM that maps it). Until it exists the
JVMs simply start without it, as they do where its classpath does not match theirs (an
executor's): the JVM checks the archive against its jars and ignores one that differs.

The archive's name hashes the Java version and every jar's name, size and time, so a
new pyspark or JDK makes a new one. ``python tests/jvmarchive.py`` makes it in the
foreground; a lock file keeps two test sessions from making it at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from sparknet.testing.netcluster import _java  # JAVA_HOME's, else PATH's


def _spark_home() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pyspark")
    return Path(spec.submodule_search_locations[0]) if spec is not None else None


def archive() -> Path | None:
    """Where this environment's archive is (made or not), or ``None`` where Java, pyspark
    or a JDK with dynamic archives (13+) is missing."""
    home, java = _spark_home(), _java()
    if home is None or java is None:
        return None
    try:
        version = subprocess.run([java, "-version"], capture_output=True, text=True,
                                 timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    major = re.search(r'version "(\d+)', version)
    if major is None or int(major.group(1)) < 13:
        return None
    key = hashlib.sha1(version.encode())
    for jar in sorted((home / "jars").glob("*.jar")):
        st = jar.stat()
        key.update(f"{jar.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return Path(sys.prefix) / "share" / "sparknet" / f"spark-driver-{key.hexdigest()[:16]}.jsa"


def java_options(path: Path | None) -> str:
    """The suite's options for every JVM: the JIT's first tier, and the archive if any."""
    return "-XX:TieredStopAtLevel=1" + (f" -XX:SharedArchiveFile={path}" if path else "")


def start(path: Path | None) -> subprocess.Popen | None:
    """Make ``path`` in the background unless it exists (the process, or ``None``)."""
    if path is None or path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path.with_suffix(".log"), "wb")  # noqa: SIM115 - the child's, closed below
    try:
        return subprocess.Popen([sys.executable, __file__, str(path)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        log.close()


def make(path: Path) -> bool:
    """Make the archive at ``path`` (``False``: another process is making it, or it failed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if path.exists():
            return True
        partial = path.with_suffix(f".partial-{os.getpid()}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))}
        env.update(SPARK_SUBMIT_OPTS=f"-XX:TieredStopAtLevel=1 -XX:ArchiveClassesAtExit={partial}",
                   PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
                   SPARK_LOCAL_IP="127.0.0.1",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        try:
            done = subprocess.run([str(Path(sys.executable).parent / "spark-submit"),
                                   "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                                   __file__, "--workload"], env=env, timeout=600, check=False)
            if done.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
                return False
            os.replace(partial, path)  # whole, or not there at all
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def _workload() -> None:
    """What the suite's drivers do, in small: SQL, Parquet, Python RDDs and UDFs, ML Vectors."""
    import tempfile

    from pyspark.ml.linalg import Vectors
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = SparkSession.builder.getOrCreate()
    df = spark.createDataFrame([(float(i % 3), Vectors.dense([i, i + 1.0])) for i in range(20)],
                               ["label", "features"])
    with tempfile.TemporaryDirectory() as d:
        df.write.parquet(f"{d}/x.parquet")
        back = spark.read.parquet(f"{d}/x.parquet")
        back.groupBy("label").count().orderBy("label").collect()
    plus = F.udf(lambda v: float(v[0]) + 1.0, "double")
    df.select(plus("features")).collect()
    spark.sparkContext.parallelize(range(100), 2).mapPartitions(lambda it: [sum(it)]).collect()
    spark.stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["--workload"]:
        _workload()
    else:
        target = Path(sys.argv[1]) if sys.argv[1:] else archive()
        sys.exit(0 if target is not None and make(target) else 1)
