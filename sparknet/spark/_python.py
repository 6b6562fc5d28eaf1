"""The Python interpreter of Spark's workers: a sensible default, and a check before any work.

PySpark starts its Python workers with ``SparkContext.pythonExec``, which it
takes from ``PYSPARK_PYTHON`` when the context is created and otherwise sets
to ``python3`` — whatever ``python3`` comes first on ``PATH``. Run from a
virtual environment's ``bin/python`` without activating it, that is another
interpreter, which cannot import sparknet (or imports another copy). Only
``spark-submit`` honours ``spark.pyspark.python``; a context created in a
plain Python process ignores it.

:func:`prepare_workers` therefore, once per context and before the first job:

* honours ``spark.pyspark.python`` when it is set;
* otherwise, when ``PYSPARK_PYTHON`` is not set either and the master runs
  everything on this machine (``local[...]``, ``local-cluster[...]``), gives
  the workers the driver's own interpreter (``sys.executable``): the same
  files, so the same sparknet;
* then runs one small job that imports sparknet on the workers and compares
  its version and location with the driver's, and raises
  :class:`WorkerPythonError` — naming the workers' interpreter and the
  setting that fixes it — when they cannot import it or import another one.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

from sparknet._util import UserError

log = logging.getLogger("sparknet.spark")

_CHECKED_ATTR = "_sparknet_checked_python"
_FIX = ("set PYSPARK_PYTHON (environment, before the SparkContext starts) or "
        "spark.pyspark.python (Spark conf) to a Python that has this sparknet installed")

# Compiled outside any importable module, so that cloudpickle ships it by value: the
# workers must be able to run it even when they cannot import sparknet.
_PROBE_SOURCE = '''
def probe(_items):
    import os, sys
    for _ in _items:
        pass
    try:
        import sparknet
    except BaseException as e:
        yield (sys.executable, sys.version.split()[0], None, None,
               type(e).__name__ + ": " + str(e))
        return
    yield (sys.executable, sys.version.split()[0], getattr(sparknet, "__version__", None),
           os.path.dirname(os.path.realpath(sparknet.__file__)), None)
'''


def _probe() -> Any:
    namespace: dict[str, Any] = {"__name__": "sparknet_worker_probe"}
    exec(compile(_PROBE_SOURCE, "<sparknet worker probe>", "exec"), namespace)
    return namespace["probe"]


class WorkerPythonError(UserError, RuntimeError):
    """Spark's Python workers cannot import this sparknet (or import another version).

    ``interpreter`` is the workers' Python as Spark starts it.
    """

    def __init__(self, message: str, interpreter: str):
        super().__init__(message)
        self.interpreter = interpreter


def _local_master(sc: Any) -> bool:
    return str(sc.master).startswith("local")


def choose_interpreter(sc: Any) -> str:
    """Set (where unset) and return the workers' interpreter of ``sc``; see the module doc."""
    conf = sc.getConf().get("spark.pyspark.python", None)
    if conf:
        if sc.pythonExec != conf:
            log.info("Spark's Python workers run %s (spark.pyspark.python)", conf)
            sc.pythonExec = conf
    elif not os.environ.get("PYSPARK_PYTHON") and sc.pythonExec == "python3" \
            and _local_master(sc):
        # neither setting given: on this machine, the driver's interpreter is the one that
        # imports this sparknet (python3 from PATH may be another, without it)
        log.info("Spark's Python workers run %s, the driver's interpreter (neither "
                 "PYSPARK_PYTHON nor spark.pyspark.python is set)", sys.executable)
        sc.pythonExec = sys.executable
    return str(sc.pythonExec)


def prepare_workers(sc: Any, tasks: int | None = None) -> None:
    """Choose the workers' interpreter, then check that it imports this sparknet.

    Runs a job of ``tasks`` tiny tasks (default: the default parallelism) once
    per context and interpreter. Raises :class:`WorkerPythonError` naming the
    interpreter and the setting to change. ``sc`` may be a SparkSession, or a
    Spark Connect client's (whose workers' interpreter is the server's choice:
    only checked).
    """
    import sparknet
    from sparknet.io import is_connect
    from sparknet.spark import connect

    if is_connect(sc) or hasattr(sc, "sparkContext"):  # a session: its context
        sc = connect.context(sc, "prepare_workers")
    client = connect.is_client(sc)
    fix = connect.FIX if client else _FIX
    python = connect.SERVER_PYTHON if client else choose_interpreter(sc)
    if getattr(sc, _CHECKED_ATTR, None) == python:
        return
    n = max(1, int(tasks or sc.defaultParallelism))
    mine = (getattr(sparknet, "__version__", None),
            os.path.dirname(os.path.realpath(sparknet.__file__)))
    where = f"Spark's Python workers (interpreter '{python}')"
    # a Connect server's local master is local to the server, not necessarily to this client
    same_machine = _local_master(sc) and not client
    described = sc.getLocalProperty("spark.job.description")
    try:
        sc.setJobDescription("sparknet: check the workers' Python")
        if client:
            seen = connect.probe_workers(sc, _PROBE_SOURCE, n)
        else:
            seen = sc.parallelize(range(n), n).mapPartitions(_probe()).collect()
    except Exception as e:  # noqa: BLE001  # cannot start the interpreter, or a version clash
        text = str(e)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        cause = next((ln for ln in lines if "Cannot run program" in ln
                      or "different version" in ln or "Error" in ln.split(":")[0]),
                     lines[0] if lines else type(e).__name__)
        raise WorkerPythonError(f"{where} cannot run sparknet's tasks: {cause[:400]}; {fix}",
                                python) from None
    finally:
        sc.setLocalProperty("spark.job.description", described)  # type: ignore[arg-type]
    for executable, pyver, version, path, error in seen:
        if error is not None:
            raise WorkerPythonError(
                f"{where}, which is {executable} (Python {pyver}), cannot import sparknet "
                f"({error}); {fix} (this driver runs {sys.executable})", python)
        if version != mine[0] or (same_machine and path != mine[1]):
            raise WorkerPythonError(
                f"{where}, which is {executable}, imports sparknet {version} from {path}, but "
                f"the driver runs sparknet {mine[0]} from {mine[1]}; {fix} "
                f"(this driver runs {sys.executable})", python)
    if not same_machine:
        paths = {row[3] for row in seen}
        if paths != {mine[1]}:
            log.info("the workers import sparknet %s from %s", mine[0], ", ".join(sorted(paths)))
    setattr(sc, _CHECKED_ATTR, python)


def worker_hint(sc: Any, error: BaseException) -> WorkerPythonError | None:
    """A :class:`WorkerPythonError` for a failed job whose workers could not import sparknet."""
    from sparknet.spark import connect

    text = str(error)
    if "No module named 'sparknet" in text or "Cannot run program" in text:
        python = str(sc.pythonExec)
        fix = connect.FIX if connect.is_client(sc) else _FIX
        return WorkerPythonError(f"Spark's Python workers (interpreter '{python}') cannot "
                                 f"import sparknet; {fix}", python)
    return None


__all__ = ["WorkerPythonError", "choose_interpreter", "prepare_workers", "worker_hint"]
