"""What the example apps share: options, the Spark session, data sources, errors, reports.

This module runs on the driver only. Nothing here is shipped to Spark's
workers (they would not find ``examples/`` on their path): functions that run
there live in :mod:`sparknet` or in the app's own ``__main__``.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("sparknet.examples")

#: The project's root (the shipped models are under caffe/models/).
ROOT = Path(__file__).resolve().parent.parent

#: Data sources the apps accept (``--data``), as in the ``sparknet`` command line.
DATA_SCHEMES = ("digits:", "mnist:", "cifar10:")


class UsageError(Exception):
    """A mistake in what the user asked for: reported without a traceback, exit status 2."""


# -- argument parsing ---------------------------------------------------------------------

def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parser(description: str, *, prog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser whose help shows the app's docstring."""
    summary, _, rest = description.strip().partition("\n\n")
    return argparse.ArgumentParser(prog=prog, description=summary, epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_spark_options(p: argparse.ArgumentParser, *, workers: bool = True,
                      driver_memory: str | None = None) -> None:
    """``--master``, ``--driver-memory`` (and ``--workers`` unless positional), ``--verbose``."""
    if workers:
        p.add_argument("--workers", type=positive_int, default=2,
                       help="Spark workers K, one partition of the data each (default 2)")
    p.add_argument("--master", help="Spark master URL (default: spark-submit's master when "
                   "run by spark-submit, else local[WORKERS])")
    p.add_argument("--driver-memory", default=driver_memory, metavar="SIZE",
                   help="the driver JVM's heap when this app starts Spark, e.g. 4g (with a "
                   "local master it also holds the executors' task results); under "
                   "spark-submit use its --driver-memory (default: "
                   f"{driver_memory or 'Spark default, 1g'})")
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")


def add_training_options(p: argparse.ArgumentParser, *, sync_interval: int, rounds: int,
                         test_interval: int, output: str) -> None:
    """The options every training app has: tau, rounds, testing, output, checkpoints, seed."""
    g = p.add_argument_group("training")
    g.add_argument("--sync-interval", type=positive_int, default=sync_interval, metavar="TAU",
                   help="solver steps each worker runs between averagings "
                   f"(default {sync_interval})")
    g.add_argument("--rounds", type=positive_int, default=rounds,
                   help=f"averaging rounds (default {rounds})")
    g.add_argument("--test-interval", type=positive_int, default=test_interval,
                   metavar="ROUNDS", help=f"test every this many rounds (default {test_interval})")
    g.add_argument("--output", default=output, metavar="DIR",
                   help="folder for the training log, JSON history, plot and weights "
                   f"(default {output})")
    g.add_argument("--checkpoint-dir", metavar="PATH",
                   help="write checkpoints here (a folder or s3://bucket/prefix)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --checkpoint-dir")
    g.add_argument("--base-lr", type=float, metavar="LR",
                   help="override the solver's base learning rate")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_prototxt_options(group: Any, model: str, label: str) -> None:
    """``--net`` / ``--solver``, defaulting to the shipped ``caffe/models/<model>/`` files."""
    folder = ROOT / "caffe" / "models" / model
    group.add_argument("--net", default=str(folder / "train_val.prototxt"), metavar="PROTOTXT",
                       help=f"net prototxt (default: the shipped {label})")
    group.add_argument("--solver", default=str(folder / "solver.prototxt"), metavar="PROTOTXT",
                       help=f"solver prototxt (default: the shipped {label} solver)")


def check_files(*paths: str | None) -> None:
    """A usage error naming the first given path that is not a file."""
    for path in paths:
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{path}: no such file")


def check_training_options(args: argparse.Namespace) -> None:
    """Combinations argparse cannot check alone."""
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir")
    if args.base_lr is not None and not args.base_lr > 0:
        raise UsageError(f"--base-lr must be positive, got {args.base_lr}")


def apply_solver_options(solver: Any, args: argparse.Namespace) -> Any:
    """The solver as a ``caffe_pb2.SolverParameter`` with ``--base-lr`` and ``--seed`` applied."""
    proto = solver.to_proto() if hasattr(solver, "to_proto") else solver
    if args.base_lr is not None:
        proto.base_lr = args.base_lr
    proto.random_seed = args.seed
    return proto


# -- Spark --------------------------------------------------------------------------------

def under_spark_submit() -> bool:
    """Whether ``spark-submit`` started this process (it passes a gateway to its JVM)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(app_name: str, master: str | None, workers: int,
                  driver_memory: str | None = None) -> Any:
    """A SparkSession: ``master`` if given, else spark-submit's, else ``local[workers]``.

    When this process starts a local Spark, the Python workers run this
    interpreter (unless ``PYSPARK_PYTHON`` says otherwise), so a virtual
    environment's packages are found without activating it; under
    spark-submit, its ``PYSPARK_PYTHON`` / ``spark.pyspark.python`` decide. ``driver_memory`` sizes the driver JVM
    when this process starts it (spark-submit has already started it).
    """
    from pyspark.sql import SparkSession

    if master is None and not under_spark_submit():
        master = f"local[{workers}]"
    if master is not None and master.startswith("local") and not under_spark_submit():
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    # The trainer draws its own progress bar; Spark's would interleave with it.
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    if not log.isEnabledFor(logging.DEBUG):
        builder = builder.config("spark.log.level", "WARN")
    if driver_memory:
        if under_spark_submit():
            log.debug("--driver-memory is ignored under spark-submit (use its own "
                     "--driver-memory)")
        else:
            builder = builder.config("spark.driver.memory", driver_memory)
    t0 = time.perf_counter()
    try:
        spark = builder.getOrCreate()
    except Exception as e:  # noqa: BLE001 - a bad master URL surfaces as a JVM error
        raise UsageError(f"could not start Spark with master {master!r}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s on %s (%.1f s to start)", spark.version, spark.sparkContext.master,
             time.perf_counter() - t0)
    return spark


# -- data sources -------------------------------------------------------------------------

def check_data_uri(uri: str) -> None:
    """Refuse an unknown ``--data`` before Spark starts."""
    if not uri.startswith(DATA_SCHEMES):
        raise UsageError(f"unknown data source {uri!r}; use digits:, mnist:DIR or cifar10:DIR")
    if uri.startswith(("mnist:", "cifar10:")):
        path = uri.partition(":")[2]
        if not path:
            raise UsageError(f"{uri!r} names no folder (write {uri}/path/to/dir)")
        if "://" not in path and not Path(path).is_dir():
            raise UsageError(f"{path}: no such folder")


def load_examples(spark: Any, uri: str, split: str, partitions: int) -> Any:
    """An RDD of ``(float32 CHW array, label)`` for ``digits:``, ``mnist:DIR``, ``cifar10:DIR``."""
    from sparknet.data import cifar10_rdd, digits_rdd, mnist_rdd

    check_data_uri(uri)
    scheme, _, path = uri.partition(":")
    if scheme == "digits":
        return digits_rdd(spark, split, num_partitions=partitions)
    if scheme == "mnist":
        return mnist_rdd(spark, path, split, num_partitions=partitions)
    return cifar10_rdd(spark, path, split, num_partitions=partitions)


# -- nets ---------------------------------------------------------------------------------

def model_names() -> list[str]:
    from sparknet.models import MODELS

    return sorted(MODELS)


def load_solver(net_spec: str, solver_path: str | None, batch_size: int,
                test_batch_size: int, data: Any) -> Any:
    """A ``caffe_pb2.SolverParameter`` with the net inline, fed by Input layers.

    ``net_spec`` is a shipped model's name (``lenet``, ``cifar10_quick`` ...:
    its DSL ``net()`` and, unless ``solver_path`` is given, its ``solver()``)
    or a net ``.prototxt``, whose data layers are replaced by inputs shaped
    like the first image of ``data`` (an RDD of ``(array, label)``). A
    prototxt without ``solver_path`` gets plain SGD (base_lr 0.001, momentum 0.9).
    """
    from sparknet.models import MODELS
    from sparknet.proto import ProtoLoader, caffe_pb2

    if solver_path is not None and not Path(solver_path).is_file():
        raise UsageError(f"{solver_path}: no such file")
    if net_spec in MODELS:
        module = MODELS[net_spec]
        kwargs: dict[str, Any] = {"batch_size": batch_size}
        if "test_batch_size" in module.net.__code__.co_varnames:
            kwargs["test_batch_size"] = test_batch_size
        if solver_path is None:
            return module.solver(**kwargs).to_proto()
        net = module.net(**kwargs).to_proto()
    elif net_spec.endswith(".prototxt"):
        if not Path(net_spec).is_file():
            raise UsageError(f"{net_spec}: no such file")
        net = ProtoLoader.load_net_prototxt(net_spec)
    else:
        raise UsageError(f"--net {net_spec!r}: give a net .prototxt or a shipped model "
                         f"({', '.join(model_names())})")
    example_shape = tuple(data.first()[0].shape)
    if len(example_shape) != 3:
        raise UsageError(f"the data's examples have shape {example_shape}; "
                         "a prototxt net needs (channels, height, width) images")
    c, h, w = (int(d) for d in example_shape)
    net = ProtoLoader.replace_data_layers(net, batch_size, test_batch_size, c, h, w)
    if solver_path is None:
        return caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, lr_policy="fixed",
                                         random_seed=1, net_param=net)
    return ProtoLoader.load_solver_prototxt_with_net(solver_path, net)


# -- reports ------------------------------------------------------------------------------

def last_test(history: Sequence[dict]) -> dict[str, float] | None:
    """The metrics of the last round that was tested, or ``None``."""
    return next((h["test"] for h in reversed(history) if h.get("test")), None)


def format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())


def result_files(result: Any) -> dict[str, Any]:
    """The training log, JSON history and plot the trainer wrote, by what they are."""
    return {"training log": getattr(result, "log_path", None),
            "history (JSON lines)": getattr(result, "history_path", None),
            "plot": getattr(result, "plot_path", None)}


def print_outputs(paths: dict[str, Any]) -> None:
    """Print where the app put its files, one per line (``what: path``)."""
    width = max(len(k) for k in paths)
    for what, path in paths.items():
        if path is not None:
            print(f"{what + ':':<{width + 1}} {path}")


def report_training(headline: str, result: Any, files: dict[str, Any]) -> int:
    """What a training app prints at the end: the headline, the last test, its files."""
    print(headline)
    metrics = last_test(result.history)
    if metrics:
        print("test: " + format_metrics(metrics))
    print_outputs({**result_files(result), **files})
    return 0


# -- running an app -----------------------------------------------------------------------

def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user asked for something that cannot work."""
    from sparknet.dsl import NetDefinitionError
    from sparknet.engine import CaffeError  # Caffe refused the net or a .caffemodel
    from sparknet.proto import PrototxtError

    return (UsageError, OSError, ValueError, NetDefinitionError, PrototxtError, CaffeError)


def _reason(e: BaseException) -> str:
    """One line saying why: for a Spark job, the Python error raised on the worker."""
    text = str(e).strip()
    worker_errors = re.findall(r"^(\w+(?:Error|Exception|Diverged): .+)$", text, re.MULTILINE)
    if worker_errors and not text.startswith(worker_errors[-1]):
        return worker_errors[-1]
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run an app's ``main`` and exit with its status.

    Mistakes in what was asked (a missing file, a net or data that do not
    fit, a bad option) print one line and exit 2; a run that fails (a
    diverging loss, a lost cluster) exits 1 with the reason; ``--verbose``
    adds the traceback; Ctrl-C exits 130.
    """
    prog = Path(sys.argv[0]).name
    verbose = "-v" in (argv or sys.argv) or "--verbose" in (argv or sys.argv)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "botocore", "boto3", "urllib3", "s3transfer", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        status = main(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        status = 130
    except Exception as e:  # noqa: BLE001 - the last word, with the reason
        if verbose:
            traceback.print_exc()
        if isinstance(e, _user_errors()):
            print(f"{prog}: error: {e}", file=sys.stderr)
            status = 2
        else:
            print(f"{prog}: failed: {_reason(e)}"
                  + ("" if verbose else " (--verbose shows the traceback)"), file=sys.stderr)
            status = 1
    sys.exit(status)
