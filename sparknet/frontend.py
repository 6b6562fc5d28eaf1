"""What the ``sparknet`` command line and the example apps share: one home per job.

Both front ends (:mod:`sparknet.cli` and ``examples/*_app.py``) parse their
own arguments and call sparknet; everything else they have in common lives
here, once:

- **mistakes and exit status**: :class:`UsageError`, :func:`exit_status`
  (the policy below) and :func:`run` (an app's ``__main__``);
- **data URIs**: :data:`SCHEMES`, :func:`check_uri` (before Spark starts),
  :func:`load_data` (an RDD of ``(array, label)``), :func:`add_data_options`;
- **nets and solvers**: :data:`MODELS`, :func:`load_net`, :func:`load_solver`
  (a prototxt net without a solver gets :data:`DEFAULT_SOLVER`);
- **options**: :func:`positive_int`, :func:`non_negative_int`,
  :func:`image_size`, :func:`add_spark_options`, :func:`add_training_options`,
  :func:`apply_solver_options`;
- **Spark**: :func:`spark_session`;
- **reports**: :func:`report_training`, :func:`print_outputs`.

The data URIs are :data:`URI_HELP`, the exit status :data:`EXIT_HELP`; both
front ends show them in ``--help``.

This module runs on the driver only; nothing here is shipped to Spark's workers.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sparknet._util import UserError
from sparknet.models import MODELS

log = logging.getLogger("sparknet")

__all__ = [
    "DEFAULT_SOLVER", "EXIT_HELP", "MODELS", "S3_LAYOUT", "SCHEMES", "URI_HELP", "USER_ERRORS",
    "UsageError", "UserError", "add_data_options",
    "add_prototxt_options", "add_spark_options", "add_training_options",
    "apply_solver_options", "binary", "check_files", "check_prototxt", "check_training_options",
    "check_uri", "configure_logging", "debug_requested", "exit_status", "format_metrics", "image_size",
    "imagenet_data", "last_test", "load_data", "load_net", "load_solver", "non_negative_int",
    "parser", "positive_int", "print_outputs", "reads_own_data", "report_training", "run",
    "spark_session", "test_uri", "training_arguments", "under_spark_submit",
]

#: The data URIs both front ends accept, as their ``--help`` shows them.
URI_HELP = """\
Data URIs:
  digits:                  the bundled handwritten digits (no download)
  mnist:/path/to/dir       MNIST IDX files (gzipped or not; local, hdfs://, s3://)
  cifar10:/path/to/dir     CIFAR-10 binary batches
  lmdb:/path/to/db         a Caffe LMDB of Datum records
  s3://bucket[/prefix]     ImageNet tar shards in SparkNet's S3 layout: under the
                           prefix, ILSVRC2012_train/train.*.tar + train.txt and
                           ILSVRC2012_val/val.*.tar + val.txt (--image-size, --color)
"""

#: The exit-status policy of both front ends (:func:`exit_status`), as ``--help`` shows it.
EXIT_HELP = """\
Exit status: 0 success; 1 the run failed (a diverging loss, a lost cluster, a
file that could not be written, an error inside sparknet), with the reason on
one line and, unless it is a file's, where it was raised; 2 a mistake in what
was asked (a missing file, a bad option, a net or data that do not fit), on
one line without a traceback; 130 interrupted. --debug (or --verbose) adds
the whole traceback.
"""

#: The data URI schemes both front ends accept.
SCHEMES = ("digits:", "mnist:", "cifar10:", "lmdb:", "s3://")

#: SparkNet's S3 layout under ``s3://bucket[/prefix]`` (what ``sparknet.data.imagenet_to_s3``
#: writes with its default prefixes): split -> (shard key prefix, label list key).
S3_LAYOUT = {"train": ("ILSVRC2012_train/train.", "train.txt"),
             "test": ("ILSVRC2012_val/val.", "val.txt")}

#: The solver a net prototxt gets without a solver prototxt: plain SGD with momentum at
#: the smaller of the rates Caffe's reference solvers start from (cifar10_quick's 0.001,
#: not LeNet's and CaffeNet's 0.01), since at 0.01 a net without input scaling, such as
#: cifar10_quick on raw pixels, diverges; fine-tuning, the other use, wants the small rate.
DEFAULT_SOLVER = {"base_lr": 0.001, "momentum": 0.9, "lr_policy": "fixed"}


class UsageError(UserError):
    """A mistake in what the user asked for: reported without a traceback, exit status 2."""


# -- mistakes and exit status ---------------------------------------------------------------

#: Exceptions that mean the user asked for something that cannot work (exit 2): every
#: documented error class of sparknet is a :class:`~sparknet._util.UserError`
#: (``NetDefinitionError``, ``PrototxtError``, ``DataError``, ``CaffeError``...), and a
#: missing file or folder is one the user named. A bare ``ValueError`` is not: raised
#: inside sparknet, it is a failure (exit 1) with a pointer to where it came from.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError)


def _reason(e: BaseException) -> str:
    """One line saying why: for a Spark job, the Python error raised on the worker."""
    text = str(e).strip()
    if isinstance(e, OSError):
        return text
    worker_errors = re.findall(r"^(\w+(?:Error|Exception|Diverged): .+)$", text, re.MULTILINE)
    if worker_errors and not text.startswith(worker_errors[-1]):
        return worker_errors[-1]
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


#: ``File "path", line N, in name`` of a Python traceback shown as text (a Spark task's).
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)', re.MULTILINE)


def _where(path: str, line: int | str, name: str) -> str:
    """``sparknet/spark/trainer.py:120 in _run``: a path inside sparknet relative to it."""
    parts = Path(path).parts
    if "sparknet" in parts:  # the last one: a checkout's folder may be called sparknet too
        i = len(parts) - 1 - parts[::-1].index("sparknet")
        path = "/".join(parts[i:])
    return f"{path}:{line} in {name}"


def _pointer(e: BaseException) -> str:
    """Where ``e`` was raised: a Spark task's own Python frame if it shows one, else ours."""
    frames = _FRAME.findall(str(e))
    if frames:
        return _where(*frames[-1])
    stack = traceback.extract_tb(e.__traceback__)
    return _where(stack[-1].filename, stack[-1].lineno, stack[-1].name) if stack else ""


def exit_status(call: Callable[[], int], prog: str, verbose: bool = False) -> int:
    """Run ``call`` and turn what it raises into an exit status and one line on stderr.

    The policy of both front ends (see the module's docstring): a mistake in
    what was asked (:data:`USER_ERRORS`) prints ``PROG: error: ...`` and gives
    2; a failed run prints ``PROG: failed: ...`` and gives 1, followed, unless
    it is a file's error (``OSError``), by a line saying where it was raised
    (an error inside sparknet must not pass for the user's); Ctrl-C gives 130;
    ``verbose`` (``--debug`` or ``--verbose``) prints the whole traceback first.
    """
    try:
        return call()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last word, with the reason
        if verbose:
            traceback.print_exc()
        if isinstance(e, USER_ERRORS):
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
        print(f"{prog}: failed: {_reason(e)}", file=sys.stderr)
        where = _pointer(e)
        if where and not verbose and not isinstance(e, OSError):
            print(f"{prog}: raised at {where}; --debug shows the whole traceback",
                  file=sys.stderr)
        return 1


def debug_requested(args: Sequence[str]) -> bool:
    """Whether the command line asks for the whole traceback: ``--debug`` or ``--verbose``."""
    return any(a in ("--debug", "-v", "--verbose") for a in args)


def configure_logging(verbose: bool) -> None:
    """Log to stderr with the time, at DEBUG with ``verbose``; quiet the libraries' chatter."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "botocore", "boto3", "urllib3", "s3transfer", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Callable[[Sequence[str] | None], int],
        argv: Sequence[str] | None = None) -> NoReturn:
    """An app's ``__main__``: run ``main(argv)`` and exit with the status of :func:`exit_status`."""
    args = sys.argv[1:] if argv is None else list(argv)
    configure_logging("-v" in args or "--verbose" in args)
    sys.exit(exit_status(lambda: main(argv), Path(sys.argv[0]).name, debug_requested(args)))


# -- options --------------------------------------------------------------------------------

def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def image_size(text: str) -> tuple[int, int]:
    """An ``argparse`` type: ``"256"`` or ``"256x224"`` (width x height) -> ``(width, height)``."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 256 or 256x224, got {text!r}")
    return parts[0], parts[1]


def parser(description: str, *, prog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser showing ``description`` (an app's docstring) and the exit status."""
    summary, _, rest = description.strip().partition("\n\n")
    epilog = f"{rest}\n\n{EXIT_HELP}" if rest else EXIT_HELP
    return argparse.ArgumentParser(prog=prog, description=summary, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_spark_options(p: argparse.ArgumentParser, *, workers: bool = True,
                      driver_memory: str | None = None, verbose: bool = True) -> None:
    """``--workers`` (unless positional), ``--master``, ``--driver-memory``, ``--verbose``."""
    if workers:
        p.add_argument("--workers", type=positive_int, default=2,
                       help="Spark workers K, one partition of the data each (default 2)")
    p.add_argument("--master", help="Spark master URL (default: spark-submit's master when "
                   "run by spark-submit, else local[WORKERS])")
    p.add_argument("--driver-memory", default=driver_memory, metavar="SIZE",
                   help="the driver JVM's heap when this process starts Spark, e.g. 4g (with "
                   "a local master it also holds the executors' task results); under "
                   "spark-submit use its --driver-memory (default: "
                   f"{driver_memory or 'Spark default, 1g'})")
    if verbose:
        p.add_argument("-v", "--verbose", action="store_true",
                       help="log debugging detail (and show a failure's whole traceback)")
        p.add_argument("--debug", action="store_true",
                       help="show the whole traceback of a failure")


def add_data_options(p: argparse.ArgumentParser, *, default: str = "digits:",
                     help: str = "data URI", test_data: bool = False) -> None:
    """``--data`` (a URI), ``--test-data`` if asked; ``--image-size``, ``--color`` for s3://."""
    p.add_argument("--data", default=default, metavar="URI",
                   help=f"{help}: {', '.join(SCHEMES)} (default {default})")
    if test_data:
        p.add_argument("--test-data", metavar="URI", help="test data URI (default: --data's "
                       "test split; an lmdb: database has none)")
    p.add_argument("--image-size", type=image_size, default=(256, 256), metavar="WxH",
                   help="s3:// images are resized to this (default 256x256)")
    p.add_argument("--color", choices=["RGB", "BGR", "L"], default="RGB",
                   help="s3:// images' channels (default RGB; L: grayscale)")


def add_training_options(p: argparse.ArgumentParser, *, sync_interval: int, rounds: int,
                         test_interval: int, output: str) -> None:
    """The options every training front end has: tau, rounds, testing, output, checkpoints."""
    g = p.add_argument_group("training")
    g.add_argument("--sync-interval", type=positive_int, default=sync_interval, metavar="TAU",
                   help="solver steps each worker runs between averagings "
                   f"(default {sync_interval})")
    g.add_argument("--rounds", type=positive_int, default=rounds,
                   help=f"averaging rounds (default {rounds})")
    g.add_argument("--test-interval", type=non_negative_int, default=test_interval,
                   metavar="ROUNDS",
                   help=f"test every this many rounds; 0: never (default {test_interval})")
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


def add_prototxt_options(group: Any, model: str, root: Path) -> None:
    """``--net`` / ``--solver``, defaulting to a shipped model's prototxt files under ``root``."""
    module = MODELS[model]
    group.add_argument("--net", default=str(root / module.PROTOTXT), metavar="PROTOTXT",
                       help=f"net prototxt (default: the shipped {model})")
    group.add_argument("--solver", default=str(root / module.SOLVER_PROTOTXT),
                       metavar="PROTOTXT", help=f"solver prototxt (default: {model}'s)")


def training_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`sparknet.spark.train` that the options set.

    Those of :func:`add_training_options` and ``--workers`` of :func:`add_spark_options`.
    """
    return {"workers": args.workers, "sync_interval": args.sync_interval,
            "rounds": args.rounds, "test_interval": args.test_interval,
            "output_dir": args.output, "checkpoint_dir": args.checkpoint_dir,
            "resume": args.resume, "seed": args.seed}


def check_training_options(args: argparse.Namespace) -> None:
    """Combinations of :func:`add_training_options` that argparse cannot check alone."""
    if args.resume and not args.checkpoint_dir:
        raise UsageError("--resume needs --checkpoint-dir")
    if args.base_lr is not None and not args.base_lr > 0:
        raise UsageError(f"--base-lr must be positive, got {args.base_lr}")


def apply_solver_options(solver: Any, args: argparse.Namespace) -> Any:
    """``solver`` as a ``caffe_pb2.SolverParameter`` with ``--base-lr`` and ``--seed`` applied."""
    from sparknet.proto import as_message, caffe_pb2

    proto = as_message(solver, caffe_pb2.SolverParameter)
    if args.base_lr is not None:
        proto.base_lr = args.base_lr
    proto.random_seed = args.seed
    return proto


def check_files(**options: str | None) -> None:
    """A usage error naming the first option whose local path is not a file.

    ``check_files(weights=args.weights)`` -> ``--weights x.caffemodel: no such
    file``. URIs (``s3://``, ``hdfs://`` ...) are left to whatever reads them.
    """
    from sparknet.io import local_path, scheme

    for option, path in options.items():
        if path is not None and scheme(path) == "" and not local_path(path).is_file():
            raise UsageError(f"--{option.replace('_', '-')} {path}: no such file")


# -- data -----------------------------------------------------------------------------------

def check_uri(uri: str | None, what: str | None = None) -> None:
    """Refuse an unknown data URI, or one naming a local folder that is not there, early.

    ``what`` is how the message names what the user wrote (default: the URI).
    """
    if uri is None or uri in ("digits", "digits:"):
        return
    if not uri.startswith(SCHEMES):
        raise UsageError(f"unknown data source '{uri}'; use one of {', '.join(SCHEMES)}")
    if uri.startswith("s3://"):
        from sparknet.io.s3 import parse_s3_uri

        try:
            parse_s3_uri(uri)
        except ValueError as e:
            raise UsageError(f"{what or f'data source {uri!r}'}: {e}") from None
        return
    scheme, _, rest = uri.partition(":")
    if not rest:
        raise UsageError(f"{what or f'data source {uri!r}'} names no folder "
                         f"(write {scheme}:/path/to/data)")
    from sparknet.io import local_path
    from sparknet.io import scheme as uri_scheme

    folder = local_path(rest)
    if uri_scheme(rest) == "" and not folder.is_dir():
        reason = "not a folder" if folder.exists() else "no such folder"
        raise UsageError(f"{what or f'data source {uri!r}: {folder}'}: {reason}")


def test_uri(data: str, test_data: str | None) -> str | None:
    """The URI to test on: ``test_data``, else ``data``'s test split (an LMDB has none)."""
    if test_data:
        return test_data
    return None if data.startswith("lmdb:") else data


def imagenet_data(spark: Any, uri: str, split: str, *, size: tuple[int, int] = (256, 256),
                  color: str = "RGB") -> Any:
    """The ``s3://bucket[/prefix]`` data scheme: ImageNet tar shards in SparkNet's layout.

    The training split is ``<prefix>/ILSVRC2012_train/train.*.tar`` labelled by
    ``<prefix>/train.txt``, the test split ``<prefix>/ILSVRC2012_val/val.*.tar`` by
    ``<prefix>/val.txt``; the endpoint and credentials come from boto3's chain
    (``AWS_ENDPOINT_URL`` for an S3-compatible store).
    """
    from sparknet.data.imagenet import load_imagenet
    from sparknet.io.s3 import parse_s3_uri

    try:
        bucket, prefix = parse_s3_uri(uri)
    except ValueError as e:
        raise UsageError(str(e)) from None
    base = prefix.strip("/") + "/" if prefix.strip("/") else ""
    shards, labels = S3_LAYOUT[split]
    return load_imagenet(spark, bucket, shard_prefix=base + shards, labels_key=base + labels,
                         size=size, color=color)


def load_data(spark: Any, uri: str, split: str, partitions: int | None, *,
              size: tuple[int, int] = (256, 256), color: str = "RGB") -> Any:
    """An RDD of ``(array, label)`` examples for a data URI (see the module's docstring).

    ``size`` (width, height) and ``color`` apply to decoded images (``s3://``).
    """
    from sparknet import data

    check_uri(uri)
    path = uri.partition(":")[2]
    if uri in ("digits", "digits:"):
        return data.digits_rdd(spark, split, num_partitions=partitions)
    if uri.startswith("mnist:"):
        return data.mnist_rdd(spark, path, split, num_partitions=partitions)
    if uri.startswith("cifar10:"):
        return data.cifar10_rdd(spark, path, split, num_partitions=partitions)
    if uri.startswith("lmdb:"):
        return data.lmdb_rdd(spark, path, num_partitions=partitions)
    return imagenet_data(spark, uri, split, size=size, color=color).rdd


# -- nets and solvers -----------------------------------------------------------------------

def _module(spec: str) -> Any:
    """A shipped model, a ``.py`` file or an importable module, by what the user wrote."""
    if spec in MODELS:
        return MODELS[spec]
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"{spec}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as e:
        raise UsageError(f"'{spec}' is neither a shipped model ({', '.join(MODELS)}), "
                         f"a .prototxt, a .py file nor an importable module ({e})") from None


def _call(function: Callable[..., Any], **kwargs: Any) -> Any:
    """``function`` called with those of ``kwargs`` that are not None and that it takes."""
    taken = inspect.signature(function).parameters
    return function(**{k: v for k, v in kwargs.items() if v is not None and k in taken})


def binary(data: bytes) -> bool:
    """Whether ``data`` is not text: a NUL byte, or not UTF-8."""
    if b"\0" in data[:65536]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def check_prototxt(path: str) -> None:
    """A prototxt must exist and be text (a .caffemodel renamed is a common slip)."""
    if not Path(path).is_file():
        raise UsageError(f"{path}: no such file")
    if binary(Path(path).read_bytes()):
        raise UsageError(f"{path}: a binary file, not a text prototxt (weights go to "
                         "--weights as a .caffemodel)")


def reads_own_data(net: Any) -> bool:
    """Whether ``net`` has Caffe data layers (Data, ImageData ...) rather than inputs."""
    from sparknet.proto.loader import DATA_LAYER_TYPES, data_layers

    return any(d.type in DATA_LAYER_TYPES for d in data_layers(net))


def load_net(spec: str, *, batch_size: int | None = None,
             test_batch_size: int | None = None) -> Any:
    """A ``caffe_pb2.NetParameter`` from a net ``.prototxt``, a shipped model or a module.

    A module (or ``.py`` file) has ``net``: a ``NetParam`` or a function returning
    one, called with the batch sizes it takes.
    """
    from sparknet.proto import ProtoLoader, as_message, caffe_pb2

    if spec.endswith(".prototxt"):
        from sparknet.dsl import NetParam

        check_prototxt(spec)
        net = ProtoLoader.load_net_prototxt(spec)
        NetParam.check(net, spec)  # the DSL's message, with the file and line, not Caffe's
        return net
    net = getattr(_module(spec), "net", None)
    if net is None:
        raise UsageError(f"module '{spec}' has no net (a NetParam or a net() function)")
    if not hasattr(net, "to_proto"):
        net = _call(net, batch_size=batch_size, test_batch_size=test_batch_size)
    return as_message(net, caffe_pb2.NetParameter)


def _input_shape(spec: str, data: Any) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the first example of ``data``, for a prototxt's inputs."""
    if data is None:
        raise UsageError(f"{spec} reads its own data; sparknet feeds it instead, but needs "
                         "the data's shape (give --data)")
    shape = tuple(int(d) for d in data.first()[0].shape)
    if len(shape) != 3:
        raise UsageError(f"the data's examples have shape {shape}; {spec} needs "
                         "(channels, height, width) images")
    return shape  # type: ignore[return-value]


def load_solver(spec: str, solver: str | None = None, *, batch_size: int | None = None,
                test_batch_size: int | None = None, data: Any = None) -> Any:
    """A ``caffe_pb2.SolverParameter`` with the net inline, fed by Input layers.

    ``spec`` is a shipped model's name (``lenet``, ``cifar10_quick`` ...), a
    module or ``.py`` file with ``net`` and ``solver()``, or a net
    ``.prototxt``; ``solver`` a solver ``.prototxt`` that replaces the
    module's ``solver()``. A prototxt's data (or Input) layers are replaced by
    inputs of ``batch_size`` (64) and ``test_batch_size`` examples shaped like
    the first example of ``data`` (an RDD of ``(array, label)``, read only
    then); without ``solver`` it gets :data:`DEFAULT_SOLVER`.
    """
    from sparknet.proto import ProtoLoader, as_message, caffe_pb2

    if solver is not None:
        check_prototxt(solver)
    if spec.endswith(".prototxt"):
        net = load_net(spec)
        if data is not None or reads_own_data(net):  # inputs shaped like the data's examples
            c, h, w = _input_shape(spec, data)
            train_batch = batch_size or 64
            net = ProtoLoader.replace_data_layers(net, train_batch,
                                                  test_batch_size or train_batch, c, h, w)
            from sparknet.dsl import NetParam

            NetParam.check(net, spec)  # now that the data's shape is known
        if solver is None:
            return caffe_pb2.SolverParameter(net_param=net, **DEFAULT_SOLVER)
    elif solver is None:
        module = _module(spec)
        if not hasattr(module, "solver"):
            raise UsageError(f"module '{spec}' has no solver() function (or give --solver)")
        return as_message(_call(module.solver, batch_size=batch_size,
                                test_batch_size=test_batch_size), caffe_pb2.SolverParameter)
    else:
        net = load_net(spec, batch_size=batch_size, test_batch_size=test_batch_size)
    return ProtoLoader.load_solver_prototxt_with_net(solver, net)


# -- Spark ----------------------------------------------------------------------------------

def under_spark_submit() -> bool:
    """Whether ``spark-submit`` started this process (it passes a gateway to its JVM)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(app_name: str, master: str | None, workers: int,
                  driver_memory: str | None = None) -> Any:
    """A SparkSession: ``master`` if given, else spark-submit's, else ``local[workers]``.

    When this process starts a local Spark, the Python workers run this
    interpreter (unless ``PYSPARK_PYTHON`` says otherwise), so a virtual
    environment's packages are found without activating it; under
    spark-submit, its ``PYSPARK_PYTHON`` / ``spark.pyspark.python`` decide.
    ``driver_memory`` sizes the driver JVM when this process starts it. The
    workers are checked to import this sparknet before any job reads data.
    """
    from pyspark.sql import SparkSession

    from sparknet.spark import prepare_workers

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
    prepare_workers(spark.sparkContext)
    return spark


# -- reports --------------------------------------------------------------------------------

def last_test(history: Sequence[Any]) -> dict[str, float] | None:
    """The metrics of the last round that was tested, or ``None``."""
    return next((h["test"] for h in reversed(history) if h.get("test")), None)


def format_metrics(metrics: dict[str, Any]) -> str:
    """``{"accuracy": 0.97, "loss": 0.1}`` -> ``"accuracy 0.9700, loss 0.1000"``."""
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())


def print_outputs(paths: dict[str, Any]) -> None:
    """Print where the front end put its files, one per line (``what: path``)."""
    shown = {what: path for what, path in paths.items() if path is not None}
    width = max((len(k) for k in shown), default=0)
    for what, path in shown.items():
        print(f"{what + ':':<{width + 1}} {path}")


def report_training(headline: str, result: Any, files: dict[str, Any]) -> int:
    """What a training front end prints at the end: the headline, the last test, its files."""
    print(headline)
    metrics = last_test(result.history)
    if metrics:
        print("test: " + format_metrics(metrics))
    print_outputs({"training log": getattr(result, "log_path", None),
                   "history (JSON lines)": getattr(result, "history_path", None),
                   "plot": getattr(result, "plot_path", None), **files})
    return 0
